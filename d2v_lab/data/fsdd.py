"""Free Spoken Digit Dataset (Jackson et al.), ``FSDD/recordings/{digit}_{speaker}_{take}.wav``.

8 kHz, 16-bit mono recordings of the digits 0-9, trimmed to the word. d2v_lab resamples them to
16 kHz and pads/trims to 1 s so they share the Speech Commands front end. Splits are by SPEAKER: the
test speakers' voices are never seen in training, which is what "generalises to a new speaker" means.
(FSDD's own convention, takes 0-4 = test, puts every speaker in both splits.)
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from .audio import ClipSet
from .concepts import DIGIT_WORDS
from .download import ensure_dataset
from .root import DataError, data_root, not_found

FOLDER = "FSDD/recordings"
NATIVE_RATE = 8000
FILE_PATTERN = re.compile(r"^(?P<digit>\d)_(?P<speaker>[A-Za-z0-9-]+)_(?P<take>\d+)\.wav$")


def find_fsdd(root=None, download: bool = False) -> Path:
    folder = data_root(root) / FOLDER
    if not folder.is_dir():
        if download:
            ensure_dataset("fsdd", data_root(root))
        else:
            raise not_found("fsdd", data_root(root), f"{FOLDER}/<digit>_<speaker>_<take>.wav")
    return folder


def _parse(folder: Path) -> list[tuple[Path, int, str, int]]:
    """(path, digit, speaker, take) for every recording. Refuses files it cannot label and a digit
    without recordings: FSDD's classes are the ten digits whatever the folder holds, so a missing
    digit would be a class no clip can teach (the official set has every digit from every speaker,
    so a missing digit means an incomplete copy)."""
    rows, odd = [], []
    for p in sorted(folder.glob("*.wav")):
        m = FILE_PATTERN.match(p.name)
        if m:
            rows.append((p, int(m["digit"]), m["speaker"], int(m["take"])))
        else:
            odd.append(p.name)
    if odd:  # refuse rather than silently drop clips we cannot label
        raise DataError(f"{folder}: {len(odd)} wav file(s) not named <digit>_<speaker>_<take>.wav, "
                        f"e.g. {odd[0]}; rename them in that pattern or move them out of the folder")
    if not rows:
        raise DataError(f"{folder}: no FSDD recordings found; restore recordings/ from the official archive")
    absent = sorted(set(range(len(DIGIT_WORDS))) - {r[1] for r in rows})
    if absent:
        raise DataError(f"{folder}: no recording of digit(s) {', '.join(map(str, absent))} "
                        f"(files {absent[0]}_<speaker>_<take>.wav); a digit without clips cannot be a class: "
                        f"restore the recordings from the official archive")
    return rows


def speakers(root=None) -> list[str]:
    return sorted({r[2] for r in _parse(find_fsdd(root))})


def load_fsdd(split: str = "all", root=None, download: bool = False,
              test_speakers: tuple[str, ...] | None = None) -> ClipSet:
    """Clips of ``split`` in {'all', 'train', 'test'}; the test split is ``test_speakers``
    (default: the alphabetically last speaker, so any folder in this layout has a held-out voice)."""
    if split not in ("all", "train", "test"):
        raise ValueError(f"split must be 'all', 'train' or 'test', not {split!r}")
    rows = _parse(find_fsdd(root, download))
    names = sorted({r[2] for r in rows})
    held_out = set(test_speakers) if test_speakers is not None else {names[-1]}
    unknown = held_out - set(names)
    if unknown:
        raise ValueError(f"unknown FSDD speaker(s) {sorted(unknown)}; speakers here: {names}")
    if split == "train" and held_out >= set(names):
        raise ValueError("every speaker is held out: nothing is left to train on")
    keep = {"all": lambda s: True, "train": lambda s: s not in held_out, "test": lambda s: s in held_out}[split]
    rows = [r for r in rows if keep(r[2])]
    return ClipSet(paths=tuple(r[0] for r in rows), labels=np.array([r[1] for r in rows], dtype=np.int64),
                   classes=DIGIT_WORDS, speakers=tuple(r[2] for r in rows), sample_rate=NATIVE_RATE)


def info(root=None) -> dict:
    folder = find_fsdd(root)
    rows = _parse(folder)
    return {"clips": len(rows), "speakers": sorted({r[2] for r in rows}), "path": str(folder)}
