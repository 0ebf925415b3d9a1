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
from .root import DataError, data_root, not_found

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


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """CIFAR batches only need numpy's array reconstruction; refuse anything else a file asks to
    import, so a tampered file cannot run code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        if name in ("_reconstruct", "scalar"):
            try:  # numpy 2 moved numpy.core to numpy._core; batches name either
                from numpy._core import multiarray
            except ImportError:  # numpy < 1.26
                from numpy.core import multiarray
            return getattr(multiarray, name)
        return getattr(np, name)


def _unpickle(path: Path) -> dict:
    try:
        raw = path.read_bytes()
        obj = _NumpyOnlyUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise DataError(f"{path}: not a readable CIFAR-10 pickle (corrupt or truncated: {e})") from e
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a pickled dict, found {type(obj).__name__}")
    return obj


def _read_batch(path: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    batch = _unpickle(path)
    for key in (b"data", b"labels"):
        if key not in batch:
            raise DataError(f"{path}: CIFAR-10 batch has no {key!r} entry (keys: {sorted(batch)})")
    data, labels = batch[b"data"], np.asarray(batch[b"labels"])
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != int(np.prod(IMAGE_SHAPE)):
        shape = getattr(data, "shape", None)
        dtype = getattr(data, "dtype", type(data).__name__)
        raise DataError(f"{path}: b'data' must be uint8 of shape (N, 3072), found {dtype} {shape}")
    if labels.shape != (len(data),):
        raise DataError(f"{path}: {len(data)} images but {labels.size} labels")
    if labels.size and (labels.dtype.kind not in "iu" or labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"{path}: labels must be integers in [0, {num_classes}), "
                        f"found range [{labels.min()}, {labels.max()}]")
    return data.reshape(-1, *IMAGE_SHAPE), labels.astype(np.int64)


def find_cifar10(root=None, download: bool = False) -> Path:
    folder = data_root(root) / FOLDER
    if not (folder / "batches.meta").is_file():
        if download:
            ensure_dataset("cifar10", data_root(root))
        else:
            raise not_found("cifar10", data_root(root), f"{FOLDER}/ (batches.meta, data_batch_*, test_batch)")
    return folder


def class_names(folder: Path) -> tuple[str, ...]:
    meta = _unpickle(folder / "batches.meta")
    names = meta.get(b"label_names")
    if not names or not all(isinstance(n, bytes) for n in names):
        raise DataError(f"{folder / 'batches.meta'}: b'label_names' missing or not a list of bytes")
    return tuple(n.decode() for n in names)


def batch_files(folder: Path, split: str) -> list[Path]:
    if split == "train":
        files = sorted(folder.glob("data_batch_*"), key=lambda p: int(re.sub(r"\D", "", p.name) or 0))
    elif split == "test":
        files = [folder / "test_batch"] if (folder / "test_batch").is_file() else []
    else:
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    if not files:
        raise DataError(f"{folder}: no {'data_batch_*' if split == 'train' else 'test_batch'} file found")
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
