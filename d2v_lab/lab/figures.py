"""The figures a run folder keeps, drawn from saved results: ``probe.png`` beside probe.json, and the
joint UMAPs (``umap_raw.png``, ``umap_associated.png``) beside align.json."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt

from d2v_lab.crossmodal.views import load_views
from d2v_lab.evaluate.results import ProbeResult
from d2v_lab.train.runs import PROBE_PNG, UMAP_TAGS, UMAP_VIEWS, umap_png

from .plots import UMAP_CAPTION, plot_joint_view, plot_probe

UMAP_TITLES = {"raw": "data2vec's own spaces (each PCA-reduced on its own), held-out points",
               "associated": "after association heads fitted on the other half of the pairs"}


def save_probe_figure(result: ProbeResult, run_dir, *copies) -> Path:
    """The main task's per-layer probe figure as run_dir/probe.png (and at each of ``copies``)."""
    fig = plot_probe(result.main)
    path = Path(run_dir) / PROBE_PNG
    for p in (path, *copies):
        fig.savefig(p, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def save_alignment_figures(align_dir, *copy_dirs) -> list[Path]:
    """umap_<tag>.png for every saved view of an alignment run (and a copy in each of ``copy_dirs``)."""
    views = load_views(Path(align_dir) / UMAP_VIEWS)
    paths = []
    for tag in UMAP_TAGS:
        fig = plot_joint_view(views[tag], UMAP_TITLES[tag])
        fig.text(0.01, -0.04, UMAP_CAPTION, fontsize=7, wrap=True)
        for folder in (Path(align_dir), *map(Path, copy_dirs)):
            fig.savefig(folder / umap_png(tag), dpi=120, bbox_inches="tight")
        plt.close(fig)
        paths.append(Path(align_dir) / umap_png(tag))
    return paths
