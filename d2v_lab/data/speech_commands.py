"""Google Speech Commands (Warden 2018), v0.01 or v0.02, in the official archive's layout.

``SpeechCommands/speech_commands_v0.0X/<word>/<speaker>_nohash_<n>.wav`` (16 kHz, 16-bit, mono, <= 1 s);
``validation_list.txt`` and ``testing_list.txt`` name the validation and test clips (paths relative
to the version folder); every other clip is training data. ``_background_noise_`` is not a word.
"""
from __future__ import annotations

import posixpath
from pathlib import Path

import numpy as np

from .audio import SAMPLE_RATE, ClipSet
from .download import ensure_dataset
from .root import DataError, data_root, not_found, unreadable

FOLDER = "SpeechCommands"
VERSIONS = ("speech_commands_v0.02", "speech_commands_v0.01")  # newest first
SPLITS = ("training", "validation", "testing")
LISTS = {"validation": "validation_list.txt", "testing": "testing_list.txt"}


def _folder_name(version: str) -> str:
    """'v0.01' or 'speech_commands_v0.01' -> 'speech_commands_v0.01'."""
    name = version if version.startswith("speech_commands_") else f"speech_commands_{version}"
    if name not in VERSIONS:
        raise ValueError(f"Speech Commands version must be one of "
                         f"{[v.removeprefix('speech_commands_') for v in VERSIONS]}, not {version!r}")
    return name


def find_speech_commands(root=None, download: bool = False, version: str | None = None) -> Path:
    """The newest version folder found (v0.02, then v0.01), or the one ``version`` names."""
    base = data_root(root) / FOLDER
    candidates = [_folder_name(version)] if version else VERSIONS
    for v in candidates:
        if (base / v).is_dir():
            return base / v
    if download:
        ensure_dataset("speechcommands", data_root(root))
        return base / "speech_commands_v0.01"
    raise not_found("speechcommands", data_root(root),
                    f"{FOLDER}/{' or '.join(candidates)}/ (word folders + split lists)")


def _normalise_entry(entry: str) -> str:
    """A list entry as people write it -> the form clip names have: ' ./cat\\x.wav' -> 'cat/x.wav'.
    Surrounding whitespace, Windows separators and './' (or 'a/../') would otherwise make an existing
    clip match nothing, and an unmatched test clip silently becomes training data."""
    return posixpath.normpath(entry.strip().replace("\\", "/"))


def _read_list(folder: Path, name: str, clips: set[str]) -> set[str]:
    """The clips a split list names, normalised. Every entry must name one of ``clips``: an entry
    that matches nothing is an error, never ignored, because the clip it meant to hold out would
    then be trained on."""
    path = folder / name
    if not path.exists():
        raise DataError(f"{path}: split list missing (the official archive has {name}); restore it from "
                        f"the archive, or every clip it holds out becomes training data")
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as e:
        raise unreadable(path, "a split list", e) from e
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not valid UTF-8 ({e.reason} at byte {e.start}); "
                        f"restore it from the official archive") from e
    entries = {_normalise_entry(line) for line in text.splitlines() if line.strip()}
    unmatched = entries - clips
    missing = sorted(e for e in unmatched if not (folder / e).is_file())
    if missing:
        raise DataError(f"{path}: names {len(missing)} file(s) that do not exist, e.g. {', '.join(missing[:3])}; "
                        f"restore the clips or remove those lines")
    if unmatched:
        odd = sorted(unmatched)
        raise DataError(f"{path}: names {len(odd)} file(s) that are not word clips, e.g. {', '.join(odd[:3])}; "
                        f"list each clip as <word>/<file>.wav relative to {folder} (e.g. {min(clips)})")
    return entries


def _is_word_folder(p: Path) -> bool:
    """Word folders are the folders whose names start with neither '_' (_background_noise_ is not a
    word) nor '.' (hidden folders such as .ipynb_checkpoints are a tool's, not the dataset's), and
    that are not named like a split list (reading the list reports a folder in its place)."""
    return p.is_dir() and not p.name.startswith(("_", ".")) and p.name not in LISTS.values()


def clip_index(folder: Path) -> tuple[list[str], dict[str, list[str]]]:
    """Word list and, per split, the clips (relative paths like 'cat/0ab3b47d_nohash_0.wav').

    An empty word folder is refused, not skipped and not kept: kept, it would be a class no clip can
    teach (an extra probe output, a wrong word count); skipped, the class list would silently differ
    from the complete dataset's. In the official layout every word has clips, so an empty word folder
    means an incomplete copy, which the user should know about.
    """
    words = sorted(p.name for p in folder.iterdir() if _is_word_folder(p))
    if not words:
        raise DataError(f"{folder}: no word folders found; the official layout is <word>/<speaker>_nohash_<n>.wav "
                        f"(restore it from the official archive)")
    per_word = {w: sorted(p.name for p in (folder / w).glob("*.wav")) for w in words}
    empty = [w for w in words if not per_word[w]]
    if empty:
        others = f" (and {len(empty) - 1} more: {', '.join(empty[1:4])})" if len(empty) > 1 else ""
        raise DataError(f"{folder / empty[0]}: word folder holds no .wav clip{others}; a word without clips "
                        f"cannot be a class: restore its clips from the official archive or remove the folder")
    clips = sorted(f"{w}/{name}" for w in words for name in per_word[w])
    held_out = {split: _read_list(folder, name, set(clips)) for split, name in LISTS.items()}
    both = held_out["validation"] & held_out["testing"]
    if both:
        raise DataError(f"{folder}: {len(both)} clip(s) are in both split lists, e.g. {min(both)}; "
                        f"a clip belongs to one split: remove it from validation_list.txt or testing_list.txt")
    splits = {s: [] for s in SPLITS}
    for c in clips:
        split = next((s for s, names in held_out.items() if c in names), "training")
        splits[split].append(c)
    return words, splits


def load_speech_commands(split: str = "training", root=None, download: bool = False,
                         version: str | None = None) -> ClipSet:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    folder = find_speech_commands(root, download, version)
    words, splits = clip_index(folder)
    rel = splits[split]
    return ClipSet(
        paths=tuple(folder / c for c in rel),
        labels=np.array([words.index(c.split("/")[0]) for c in rel], dtype=np.int64),
        classes=tuple(words),
        speakers=tuple(c.split("/")[1].split("_nohash_")[0] for c in rel),
        sample_rate=SAMPLE_RATE,
    )


def versions_found(root=None) -> list[str]:
    """Every version present under the data root, newest first (e.g. ['v0.02', 'v0.01'])."""
    base = data_root(root) / FOLDER
    return [v.removeprefix("speech_commands_") for v in VERSIONS if (base / v).is_dir()]


def _version_info(folder: Path) -> dict:
    words, splits = clip_index(folder)
    speakers = {s: {c.split("/")[1].split("_nohash_")[0] for c in splits[s]} for s in SPLITS}
    return {"version": folder.name.removeprefix("speech_commands_"),
            **{s: len(splits[s]) for s in SPLITS}, "speakers": len(set().union(*speakers.values())),
            "words": words, "path": str(folder)}


def info(root=None) -> dict:
    """The newest version's counts at the top level (what the loaders read by default) and every
    version found under "versions" (v0.01 stays readable beside v0.02)."""
    newest = _version_info(find_speech_commands(root))
    return {**newest, "versions": {v: _version_info(find_speech_commands(root, version=v))
                                   for v in versions_found(root)}}
