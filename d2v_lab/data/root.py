"""Where the datasets live, and the errors every loader raises.

The data root is ``$D2V_LAB_DATA`` when set, else ``data/`` in the project (the folder holding
``pyproject.toml``; outside a source checkout, ``./data``). Every dataset sits there in its own
canonical layout, exactly as the official download unpacks::

    <root>/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}
    <root>/TinyStories/TinyStories-{train,valid}.txt            (+ V2 / -lowercase variants)
    <root>/SpeechCommands/speech_commands_v0.0{1,2}/<word>/<speaker>_nohash_<n>.wav
    <root>/FSDD/recordings/<digit>_<speaker>_<take>.wav
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

ENV_VAR = "D2V_LAB_DATA"


class DataError(Exception):
    """A data file is unreadable or not in the expected format. The message names the file and why."""


class DatasetNotFound(DataError):
    """A dataset is not under the data root (and was not, or could not be, downloaded)."""


def project_root() -> Path:
    """The source checkout this package lives in, or the working directory for an installed copy."""
    here = Path(__file__).resolve().parents[2]
    return here if (here / "pyproject.toml").is_file() else Path.cwd()


def data_root(root: str | os.PathLike | None = None) -> Path:
    """Resolve the data root: an explicit argument, else ``$D2V_LAB_DATA``, else ``<project>/data``."""
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get(ENV_VAR)
    return Path(env).expanduser() if env else project_root() / "data"


def not_found(dataset: str, searched: Path, expected: str) -> DatasetNotFound:
    """The one error message for a missing dataset: where we looked and the two ways to fix it.
    One line, like every DataError, so the CLI can print it as one."""
    return DatasetNotFound(
        f"{dataset} not found: looked for {expected} in {searched}; fix: point {ENV_VAR} at a folder "
        f"that holds it (export {ENV_VAR}=/path/to/data), or download the official archive into "
        f"{searched} with `d2v-lab data download {dataset}` (needs internet)"
    )


def unreadable(path: Path, what: str, error: Exception) -> DataError:
    """The error for a data file the OS will not open: most often a folder sitting where the file
    belongs (an unpacking accident), else a permission problem. Either way the user, not the code,
    has to act, so say which and where instead of letting the OSError's traceback through."""
    if path.is_dir():
        return DataError(f"{path}: is a folder, but {what} belongs here; "
                         f"move the folder away and restore the file from the official archive")
    return DataError(f"{path}: cannot read {what} ({getattr(error, 'strerror', None) or error}); "
                     f"check that it is a readable file")


CACHE_ENV_VAR = "D2V_LAB_CACHE"


def cache_root() -> Path:
    """The user cache for derived files: ``$D2V_LAB_CACHE``, else ``$XDG_CACHE_HOME/d2v_lab``, else
    ``~/.cache/d2v_lab``. Never the data folder: a dataset folder holds the dataset, not a tool's
    leftovers (and it may be shared, read-only, or under version control)."""
    env = os.environ.get(CACHE_ENV_VAR)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "d2v_lab"


def cache_dir_for(root: Path) -> Path:
    """The cache subfolder for files derived from the data root ``root``. It is named after the root
    and a hash of its absolute path, so two data roots (say a subset and the full download) never
    share a cache entry, and a person browsing the cache can still tell which is which. Not created
    here: reading a cache needs no write access; see ``writable_cache_dir`` for writing."""
    resolved = Path(root).expanduser().resolve()
    digest = hashlib.sha256(str(resolved).encode()).hexdigest()[:12]
    return cache_root() / f"{resolved.name or 'root'}-{digest}"


def writable_cache_dir(root: Path) -> Path:
    """``cache_dir_for(root)``, created; a DataError naming the folder and the variable to set when
    it cannot be written (a read-only home, a full disk), instead of an OSError traceback."""
    folder = cache_dir_for(root)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        writable = os.access(folder, os.W_OK)
        reason = "no write permission"
    except OSError as e:
        writable, reason = False, e.strerror or str(e)
    if not writable:
        raise cache_not_writable(folder, reason)
    return folder


def cache_not_writable(folder: Path, reason: str) -> DataError:
    """The one message for a cache that cannot be written: the folder and the variable that moves it."""
    return DataError(f"{folder}: cannot write the d2v_lab cache here ({reason}); set {CACHE_ENV_VAR} "
                     f"to a writable folder (export {CACHE_ENV_VAR}=/tmp/d2v_lab_cache)")
