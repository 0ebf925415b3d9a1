"""The run folder: what each file is called, where runs live, and when a saved result is still fresh.

A pretraining run folder holds ``checkpoint.pt``, ``config.json``, ``metrics.jsonl`` (one JSON line per
logged step) and, for text, ``tokenizer.json``; probing adds ``probe.json`` / ``probe.png``. A tour folder
holds one run folder per modality, ``alignment/`` (``align.json`` and the figures), ``figures/``,
``summary.json`` and ``report.md``. Every module that reads or writes these names imports them from here.
A running ``pretrain`` also holds a hidden lock file, ``.pretrain.lock`` (``d2v_lab.train.lock``).
"""
from __future__ import annotations

import errno
import json
import shutil
import warnings
from pathlib import Path

from d2v_lab.data.root import project_root

CHECKPOINT = "checkpoint.pt"
CONFIG = "config.json"
METRICS = "metrics.jsonl"
TOKENIZER = "tokenizer.json"
LOCK = ".pretrain.lock"         # held by the run that is writing into the folder (train/lock.py)
PROBE_JSON = "probe.json"
PROBE_PNG = "probe.png"
ALIGNMENT = "alignment"          # the alignment's sub-folder of a tour folder
ALIGN_JSON = "align.json"
FIGURES = "figures"
SUMMARY = "summary.json"
REPORT = "report.md"
UMAP_VIEWS = "views.npz"        # the 2-D points the UMAP figures draw
UMAP_TAGS = ("raw", "associated")


def umap_png(tag: str) -> str:
    return f"umap_{tag}.png"


def default_runs_dir(profile: str) -> Path:
    """Where the tour and the notebooks keep the runs of ``profile``: ``<project>/runs/<profile>``."""
    return project_root() / "runs" / profile


def is_fresh(result: Path, inputs: list[Path]) -> bool:
    """A saved result is reused only when it exists and is at least as new as every input it was
    computed from (a retrained checkpoint makes its probe and alignment stale)."""
    result = Path(result)
    return result.is_file() and all(result.stat().st_mtime >= Path(p).stat().st_mtime for p in inputs)


class RunFolderError(Exception):
    """A run folder cannot be used: another run holds it, it cannot be written, or a file in it is
    damaged. The message is one line: the folder or file, the cause and the fix."""


class TornLineWarning(UserWarning):
    """The last line of metrics.jsonl was cut off (a crash or power loss while it was written)."""


def read_metrics(run_dir) -> list[dict]:
    """Every logged row of a run's metrics.jsonl, in order.

    A line is appended at every log, so a crash or a power loss can cut the LAST one short: it is
    dropped with a TornLineWarning (a resumed run rewrites the file anyway, from the checkpoint's
    step on). A damaged line anywhere else is not the trace of a crash: a RunFolderError names it."""
    path = Path(run_dir) / METRICS
    lines = [(n, line) for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1) if line.strip()]
    rows = []
    for i, (n, line) in enumerate(lines):
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or not isinstance(row.get("step"), int):
                raise ValueError("not a JSON object with an integer 'step'")
        except ValueError as e:   # json.JSONDecodeError is a ValueError
            if i == len(lines) - 1:
                warnings.warn(f"{path}: dropped its last line {n}, which is incomplete (cut off by a crash "
                              f"or power loss?): {line[:40]!r}", TornLineWarning, stacklevel=2)
                break
            raise RunFolderError(f"{path}, line {n}: not a metrics row ({e}); delete that line, or move the "
                                 f"file away (the checkpoint does not need it; the logged history goes with it)")
        rows.append(row)
    return rows


def write_failure(folder: Path, what: str, error: BaseException) -> str:
    """One line for a write into ``folder`` that failed: which folder, what was being written, why,
    and what to do. A full disk often surfaces from torch.save as ``RuntimeError: [enforce fail at
    inline_container.cc] ... unexpected pos``, not as ENOSPC, so the free space is looked up here."""
    text = str(error).strip()
    cause = (getattr(error, "strerror", None) or (text.splitlines()[0] if text else type(error).__name__))[:160]
    code = getattr(error, "errno", None)
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        return (f"{folder}: cannot write {what} there ({cause}): the folder is not writable; make it "
                f"writable or choose another --out")
    try:
        free = f"{shutil.disk_usage(folder).free / 2**20:,.0f} MiB free there"
    except OSError:
        free = "free space unknown"
    return (f"{folder}: cannot write {what} there ({cause}); the disk may be full ({free}): free some "
            f"space or choose another --out")


def read_run_config(run_dir) -> dict:
    """config.json of a pretraining run (the RunConfig as a dict, plus the data sources)."""
    return json.loads((Path(run_dir) / CONFIG).read_text())
