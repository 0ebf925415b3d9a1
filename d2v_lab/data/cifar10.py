"""CIFAR-10, read from the official python-pickle layout ``cifar-10-batches-py/``.

Krizhevsky, "Learning Multiple Layers of Features from Tiny Images", 2009.
Train = every ``data_batch_*`` present (the official download has 5 of 10,000 images; smaller
subsets in the same layout work unchanged), test = ``test_batch``. Each batch is a pickled dict with
``b'data'`` (N, 3072) uint8, rows = 1024 red, 1024 green, 1024 blue values, and ``b'labels'``.
"""
from __future__ import annotations

import io
import pickle
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .download import ensure_dataset
from .root import DataError, data_root, not_found, unreadable

FOLDER = "cifar-10-batches-py"
IMAGE_SHAPE = (3, 32, 32)


@dataclass(frozen=True)
class ImageSplit:
    images: np.ndarray        # (N, 3, 32, 32) uint8, channels first
    labels: np.ndarray        # (N,) int64 in [0, len(classes))
    classes: tuple[str, ...]  # label names, index = label
    files: tuple[Path, ...]   # the batch files it was read from

    def __len__(self) -> int:
        return len(self.labels)


# What a CIFAR-10 file may name: numpy's array and dtype reconstruction, and the latin-1 helper that
# pickle protocols 0-2 use for bytes. Each is listed under its numpy 2 (numpy._core) and numpy 1
# (numpy.core) module; a file names whichever the numpy that wrote it had.
#   protocols 0-4: ndarray via multiarray._reconstruct + ndarray + dtype (and multiarray.scalar for
#                  a numpy scalar, e.g. an np.int64 label)
#   protocol 5   : ndarray via numeric._frombuffer (the data travels as a PickleBuffer)
#   protocols 0-2: bytes via _codecs.encode(str, 'latin1') (these protocols predate the bytes type)
_ALLOWED_GLOBALS = {
    ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"), ("numpy.core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"), ("numpy.core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("_codecs", "encode"),
}


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """Stand-in for ``_codecs.encode`` that only does what pickle protocols 0-2 use it for (turning a
    latin-1 str back into bytes), not every codec a tampered file might name."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"refusing to load _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """CIFAR batches only need numpy arrays, lists and bytes (under any standard pickle protocol);
    refuse anything else a file asks to import, so a tampered file cannot run code."""

    def find_class(self, module, name):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        if module == "_codecs":
            return _latin1_encode
        try:  # numpy 2 moved numpy.core to numpy._core; a file names either, we use what is installed
            from numpy._core import multiarray, numeric
        except ImportError:  # numpy < 1.26
            from numpy.core import multiarray, numeric
        owner = {"multiarray": multiarray, "numeric": numeric}.get(module.rsplit(".", 1)[-1], np)
        return getattr(owner, name)


FIX = "restore the file from the official archive (d2v-lab data download cifar10)"


def _unpickle(path: Path) -> dict:
    """A CIFAR file's dict, keys as bytes (a file re-saved after loading with encoding='latin1', the
    torchvision style, has str keys: they are turned back into bytes, nothing else changes)."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise unreadable(path, "a CIFAR-10 pickle", e) from e
    try:
        obj = _NumpyOnlyUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except pickle.UnpicklingError as e:
        if str(e).startswith("refusing to load"):
            raise DataError(f"{path}: {e}, which a CIFAR-10 file never needs (it may have been tampered "
                            f"with); delete it and {FIX}") from e
        raise DataError(f"{path}: not a readable CIFAR-10 pickle (corrupt or truncated: {e}); {FIX}") from e
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, MemoryError) as e:
        raise DataError(f"{path}: not a readable CIFAR-10 pickle (corrupt or truncated: "
                        f"{type(e).__name__}: {e}); {FIX}") from e
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a pickled dict, found {type(obj).__name__}; {FIX}")
    return {k.encode("latin1") if isinstance(k, str) else k: v for k, v in obj.items()}


def _read_batch(path: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    batch = _unpickle(path)
    for key in (b"data", b"labels"):
        if key not in batch:
            keys = ", ".join(sorted(repr(k) for k in batch))
            raise DataError(f"{path}: CIFAR-10 batch has no {key!r} entry (keys: {keys}); {FIX}")
    data = batch[b"data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != int(np.prod(IMAGE_SHAPE)):
        shape = getattr(data, "shape", None)
        dtype = getattr(data, "dtype", type(data).__name__)
        raise DataError(f"{path}: b'data' must be uint8 of shape (N, 3072), found {dtype} {shape}; {FIX}")
    labels = _labels(path, batch[b"labels"], len(data), num_classes)
    return data.reshape(-1, *IMAGE_SHAPE), labels


def _labels(path: Path, raw, n_images: int, num_classes: int) -> np.ndarray:
    """b'labels' as int64, checked: a flat sequence of ``n_images`` integers in [0, num_classes).
    Each check names what was found, because "labels wrong" alone sends the user hunting."""
    want = f"a flat list of {n_images} integers in [0, {num_classes})"
    try:
        labels = np.asarray(raw)
    except ValueError as e:  # ragged nested lists
        raise DataError(f"{path}: b'labels' must be {want}, found a ragged nested list ({e}); {FIX}") from e
    if labels.ndim != 1:
        raise DataError(f"{path}: b'labels' must be {want}, found shape {labels.shape}; {FIX}")
    if len(labels) != n_images:
        raise DataError(f"{path}: {n_images} images but {len(labels)} labels; {FIX}")
    if labels.size and labels.dtype.kind not in "iu":
        # numbers stored as strings ('3') or floats (3.0) would index the class list wrongly or not at all
        kind = {"U": "strings", "S": "byte strings", "f": "floats", "b": "booleans"}.get(labels.dtype.kind,
                                                                                      f"{labels.dtype} values")
        first = labels[0].item() if isinstance(labels[0], np.generic) else labels[0]
        raise DataError(f"{path}: b'labels' must be {want}, found {kind} (e.g. {first!r}); {FIX}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"{path}: labels must be integers in [0, {num_classes}), "
                        f"found range [{labels.min()}, {labels.max()}]; {FIX}")
    return labels.astype(np.int64)


def find_cifar10(root=None, download: bool = False) -> Path:
    folder = data_root(root) / FOLDER
    if not (folder / "batches.meta").exists():  # a folder in its place is reported when it is read
        if download:
            ensure_dataset("cifar10", data_root(root))
        else:
            raise not_found("cifar10", data_root(root), f"{FOLDER}/ (batches.meta, data_batch_*, test_batch)")
    return folder


def class_names(folder: Path) -> tuple[str, ...]:
    meta = _unpickle(folder / "batches.meta")
    names = meta.get(b"label_names")
    if not isinstance(names, (list, tuple)) or not names or not all(isinstance(n, (bytes, str)) for n in names):
        raise DataError(f"{folder / 'batches.meta'}: b'label_names' missing or not a list of names; {FIX}")
    return tuple(n.decode() if isinstance(n, bytes) else n for n in names)


def batch_files(folder: Path, split: str) -> list[Path]:
    if split == "train":
        files = sorted(folder.glob("data_batch_*"), key=lambda p: int(re.sub(r"\D", "", p.name) or 0))
    elif split == "test":
        files = [folder / "test_batch"] if (folder / "test_batch").exists() else []
    else:
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    if not files:
        raise DataError(f"{folder}: no {'data_batch_*' if split == 'train' else 'test_batch'} file found; {FIX}")
    return files


def load_cifar10(split: str = "train", root=None, download: bool = False) -> ImageSplit:
    """Load a CIFAR-10 split as uint8 images (N, 3, 32, 32) and int64 labels."""
    folder = find_cifar10(root, download)
    classes = class_names(folder)
    files = batch_files(folder, split)
    parts = [_read_batch(f, len(classes)) for f in files]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return ImageSplit(images, labels, classes, tuple(files))


def info(root=None) -> dict:
    train, test = load_cifar10("train", root), load_cifar10("test", root)
    return {"train": len(train), "test": len(test), "classes": list(train.classes),
            "path": str(train.files[0].parent)}
