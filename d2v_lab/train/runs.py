"""The run folder: what each file is called, where runs live, and when a saved result is still fresh.

A pretraining run folder holds ``checkpoint.pt``, ``config.json``, ``metrics.jsonl`` (one JSON line per
logged step) and, for text, ``tokenizer.json``; probing adds ``probe.json`` / ``probe.png``. A tour folder
holds one run folder per modality, ``alignment/`` (``align.json`` and the figures), ``figures/``,
``summary.json`` and ``report.md``. Every module that reads or writes these names imports them from here.
"""
from __future__ import annotations

import json
from pathlib import Path

from d2v_lab.data.root import project_root

CHECKPOINT = "checkpoint.pt"
CONFIG = "config.json"
METRICS = "metrics.jsonl"
TOKENIZER = "tokenizer.json"
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


def read_metrics(run_dir) -> list[dict]:
    """Every logged row of a run's metrics.jsonl, in order."""
    path = Path(run_dir) / METRICS
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_run_config(run_dir) -> dict:
    """config.json of a pretraining run (the RunConfig as a dict, plus the data sources)."""
    return json.loads((Path(run_dir) / CONFIG).read_text())
