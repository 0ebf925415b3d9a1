"""TinyStories (Eldan & Li 2023), read from the official ``.txt`` files.

Each file holds stories separated by a line ``<|endoftext|>``. Recognised names (in ``TinyStories/``):
``TinyStories-{train,valid}.txt`` (V1), ``TinyStoriesV2-GPT4-{train,valid}.txt`` (V2) and the same
with ``-lowercase`` before ``.txt``. A split is the union of every recognised file of that split.
"""
from __future__ import annotations

import re
from pathlib import Path

from .download import ensure_dataset
from .root import DataError, data_root, not_found

FOLDER = "TinyStories"
SEPARATOR = "<|endoftext|>"
FILE_PATTERN = re.compile(r"^TinyStories(?P<v2>V2-GPT4)?-(?P<split>train|valid)(?P<lower>-lowercase)?\.txt$")
SPLITS = ("train", "valid")


def find_tinystories(root=None, download: bool = False) -> Path:
    folder = data_root(root) / FOLDER
    if not any(FILE_PATTERN.match(p.name) for p in folder.glob("*.txt")):
        if download:
            ensure_dataset("tinystories", data_root(root))
        else:
            raise not_found("tinystories", data_root(root), f"{FOLDER}/TinyStories-train.txt (or V2 files)")
    return folder


def story_files(folder: Path) -> dict[str, list[Path]]:
    """The recognised story files per split, sorted by name."""
    files: dict[str, list[Path]] = {s: [] for s in SPLITS}
    for path in sorted(folder.glob("*.txt")):
        m = FILE_PATTERN.match(path.name)
        if m:
            files[m["split"]].append(path)
    return files


def read_stories(path: Path) -> list[str]:
    """All stories of one file, stripped, in file order. Raises DataError for non-UTF-8 or empty files."""
    stories, current, line_no = [], [], 0
    try:
        with open(path, encoding="utf-8", errors="strict") as f:
            for line_no, line in enumerate(f, 1):
                parts = line.split(SEPARATOR)
                for i, part in enumerate(parts):
                    if i > 0:  # a separator ended the story so far
                        stories.append("".join(current).strip())
                        current = []
                    current.append(part)
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not valid UTF-8 (after line {line_no}: {e.reason})") from e
    stories.append("".join(current).strip())
    stories = [s for s in stories if s]
    if not stories:
        raise DataError(f"{path}: holds no story (the file is empty or only separators)")
    return stories


def load_stories(split: str = "train", root=None, download: bool = False,
                 lowercase_files: bool | None = None) -> list[str]:
    """Stories of a split: every recognised file of that split, concatenated in name order.

    ``lowercase_files``: None = all files, True = only ``*-lowercase.txt``, False = only cased ones.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    folder = find_tinystories(root, download)
    files = [p for p in story_files(folder)[split]
             if lowercase_files is None or ("-lowercase" in p.name) == lowercase_files]
    if not files:
        raise DataError(f"{folder}: no TinyStories file for split {split!r}")
    return [s for path in files for s in read_stories(path)]


def info(root=None) -> dict:
    folder = find_tinystories(root)
    files = story_files(folder)
    counts = {split: sum(len(read_stories(p)) for p in paths) for split, paths in files.items()}
    return {**counts, "files": [p.name for split in SPLITS for p in files[split]], "path": str(folder)}
