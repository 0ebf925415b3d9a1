"""Google Speech Commands (Warden 2018), v0.01 or v0.02, in the official archive's layout.

``SpeechCommands/speech_commands_v0.0X/<word>/<speaker>_nohash_<n>.wav`` (16 kHz, 16-bit, mono, <= 1 s);
``validation_list.txt`` and ``testing_list.txt`` name the validation and test clips (paths relative
to the version folder); every other clip is training data. ``_background_noise_`` is not a word.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .audio import SAMPLE_RATE, ClipSet
from .download import ensure_dataset
from .root import DataError, data_root, not_found

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


def _read_list(folder: Path, name: str) -> set[str]:
    path = folder / name
    if not path.is_file():
        raise DataError(f"{path}: split list missing (the official archive has {name})")
    entries = {line.strip() for line in path.read_text().splitlines() if line.strip()}
    missing = sorted(e for e in entries if not (folder / e).is_file())
    if missing:
        raise DataError(f"{path}: names {len(missing)} file(s) that do not exist, "
                        f"e.g. {', '.join(missing[:3])}")
    return entries


def clip_index(folder: Path) -> tuple[list[str], dict[str, list[str]]]:
    """Word list and, per split, the clips (relative paths like 'cat/0ab3b47d_nohash_0.wav')."""
    words = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("_"))
    if not words:
        raise DataError(f"{folder}: no word folders found")
    clips = sorted(f"{w}/{p.name}" for w in words for p in (folder / w).glob("*.wav"))
    held_out = {split: _read_list(folder, name) for split, name in LISTS.items()}
    both = held_out["validation"] & held_out["testing"]
    if both:
        raise DataError(f"{folder}: {len(both)} clip(s) are in both split lists, e.g. {min(both)}")
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
