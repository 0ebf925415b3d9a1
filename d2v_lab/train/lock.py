"""One run at a time in a run folder: ``claim_run_folder(out)`` creates ``out`` if needed and holds an
exclusive lock on ``out/.pretrain.lock`` for as long as the run lasts.

Without it, two ``pretrain`` runs into the same --out both ran, interleaved their metrics.jsonl lines
and overwrote each other's checkpoints. The lock is ``fcntl.flock``: the operating system releases it
when the process ends, however it ends (an exception, Ctrl-C, kill -9, a power cut), so a lock file
left behind by a killed run never blocks the next one; only a live process holds the lock. The file
holds its holder's pid and start time, for the message the second run gets.

A run that is refused or fails before it wrote anything (another run holds the folder, a checkpoint
that does not fit, missing data) leaves nothing behind: the lock file goes, and so does the folder,
with any parents, if this run created it and it is still empty.
"""
from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows has no flock: runs there are not protected from each other
    fcntl = None

from .runs import LOCK, RunFolderError, write_failure


@contextlib.contextmanager
def claim_run_folder(out: str | os.PathLike):
    """Create (if needed) and lock the run folder ``out`` for the ``with`` block; a RunFolderError of
    one line when another run holds it or it cannot be written. Yields the folder as a Path."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"{out}: is a file, not a folder; choose another --out")
    created = _make_folders(out)
    try:
        fd = _lock(out)
    except BaseException:
        _remove_empty(created)
        raise
    try:
        yield out
    finally:
        _unlock(out / LOCK, fd)
        _remove_empty(created)


def _make_folders(out: Path) -> list[Path]:
    """Create ``out`` and its missing parents; returns those this call created, outermost first."""
    missing = []
    p = out
    while not p.exists():
        missing.append(p)
        p = p.parent
    created = []
    for folder in reversed(missing):
        try:
            folder.mkdir()
        except FileExistsError:   # made by someone else just now: not ours to remove
            continue
        except OSError as e:       # a read-only parent, a full disk
            _remove_empty(created)
            raise RunFolderError(write_failure(folder.parent, f"the run folder {folder.name}/", e)) from None
        created.append(folder)
    return created


def _remove_empty(created: list[Path]) -> None:
    for folder in reversed(created):
        try:
            folder.rmdir()         # only if empty: files of this or another run are never removed
        except OSError:
            return


def _lock(out: Path) -> int:
    path = out / LOCK
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:       # a read-only --out
            raise RunFolderError(write_failure(out, "the lock file " + LOCK, e)) from None
        if fcntl is None:
            return fd
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise RunFolderError(f"{out} is in use by another d2v-lab run ({holder}); wait for it or "
                                 f"choose another --out") from None
        except OSError:   # a file system without flock (some network mounts): run unprotected, as before
            return fd
        # The run before us removes its lock file on the way out: if it did so between our open and our
        # flock, we hold a lock on a file nobody else will open. Then start again on the file there now.
        try:
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}).encode())
    except OSError:   # a full disk: the lock still works, only the holder's name is missing
        pass
    return fd


def _holder(fd: int) -> str:
    """'pid N, started T' of the run that holds the lock, from what it wrote into the file."""
    try:
        info = json.loads(os.pread(fd, 4096, 0))
        return f"pid {info['pid']}, started {info['started']}"
    except (OSError, ValueError, KeyError, TypeError):   # it is still writing them
        return "pid unknown"


def _unlock(path: Path, fd: int) -> None:
    """Remove the lock file while still holding the lock, then release it (closing releases it)."""
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass
    os.close(fd)
