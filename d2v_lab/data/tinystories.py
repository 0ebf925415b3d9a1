"""TinyStories (Eldan & Li 2023), read from the official ``.txt`` files.

Each file holds stories separated by a line ``<|endoftext|>``. Recognised names (in ``TinyStories/``):
``TinyStories-{train,valid}.txt`` (V1), ``TinyStoriesV2-GPT4-{train,valid}.txt`` (V2) and the same
with ``-lowercase`` before ``.txt``. A split is the union of every recognised file of that split.
"""
from __future__ import annotations

import re
from pathlib import Path

from .download import ensure_dataset
from .root import DataError, data_root, not_found, unreadable

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
    """All stories of one file, stripped, in file order. Raises DataError for non-UTF-8 or empty files.

    The file is read as bytes and decoded line by line, so a bad byte is reported at its own line
    (a text-mode reader decodes 8 KiB blocks ahead of the lines it hands out, and so reported lines
    dozens early). Splitting at the newline byte is safe: in UTF-8 it never occurs inside a character.
    Line endings are normalised as text mode would (CRLF and a lone CR become LF).
    """
    stories, current = [], []
    try:
        with open(path, "rb") as f:
            for line_no, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise DataError(f"{path}: not valid UTF-8 at line {line_no}, byte {e.start + 1} of that "
                                    f"line ({e.reason}: {raw[e.start:e.end]!r}); re-save the file as UTF-8 "
                                    f"(e.g. iconv -f latin1 -t utf-8) or restore it from the official "
                                    f"download") from e
                if "\r" in line:
                    line = line.replace("\r\n", "\n").replace("\r", "\n")
                parts = line.split(SEPARATOR)
                for i, part in enumerate(parts):
                    if i > 0:  # a separator ended the story so far
                        stories.append("".join(current).strip())
                        current = []
                    current.append(part)
    except OSError as e:
        raise unreadable(path, "a TinyStories text file", e) from e
    stories.append("".join(current).strip())
    stories = [s for s in stories if s]
    if not stories:
        raise DataError(f"{path}: holds no story (the file is empty or only separators); "
                        f"restore it from the official download or remove it")
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
        raise DataError(f"{folder}: no TinyStories file for split {split!r} "
                        f"(lowercase_files={lowercase_files}); add TinyStories-{split}.txt from the official download")
    return [s for path in files for s in read_stories(path)]


def info(root=None) -> dict:
    folder = find_tinystories(root)
    files = story_files(folder)
    counts = {split: sum(len(read_stories(p)) for p in paths) for split, paths in files.items()}
    return {**counts, "files": [p.name for split in SPLITS for p in files[split]], "path": str(folder)}
