"""The figures the notebooks and the tour share. Every function draws into a matplotlib Axes (or a new
figure) with labelled axes and units, and returns the Figure; ``path`` saves it as well."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

MODALITY_COLOURS = {"image": "tab:blue", "text": "tab:orange", "audio": "tab:green"}


def _save(fig, path):
    if path is not None:
        fig.savefig(path, dpi=120, bbox_inches="tight")
    return fig


def _new_axes(ax, figsize=(6, 4)):
    if ax is not None:
        return ax.figure, ax
    fig, ax = plt.subplots(figsize=figsize)
    return fig, ax


def plot_probe(result: dict, path=None, ax=None):
    """Linear-probe test accuracy per layer, pretrained vs random init, with raw-input, supervised and
    chance as horizontal references."""
    fig, ax = _new_axes(ax)
    layers = [r["layer"] for r in result["per_layer"]]
    ax.plot(layers, [100 * r["pretrained"] for r in result["per_layer"]], "o-", label="data2vec (pretrained)")
    ax.plot(layers, [100 * r["random_init"] for r in result["per_layer"]], "s--", label="same model, random init")
    refs = [("raw input", 100 * result["linear"]["raw_input"], "tab:gray"),
            ("chance", 100 * result["chance"], "black")]
    if result.get("supervised"):
        refs.insert(1, ("supervised (same model)", 100 * result["supervised"]["accuracy"], "tab:red"))
    for label, y, colour in refs:
        ax.axhline(y, color=colour, ls=":", lw=1.5, label=f"{label}: {y:.1f}%")
    ax.set_xlabel("layer (0 = embedded input)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{result['modality']} / {result['task']}: linear probe per layer "
                 f"(n_train={result['n_train']}, n_test={result['n_test']})", fontsize=9)
    ax.set_xticks(layers)
    ax.legend(fontsize=8)
    return _save(fig, path)


def read_metrics(run_dir) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_training(metrics: list[dict], title: str = "", path=None, axes=None):
    """Training loss and held-out loss (left), target and prediction std (right), against steps."""
    if axes is None:
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    fig = axes[0].figure
    steps = [m["step"] for m in metrics]
    axes[0].plot(steps, [m["loss"] for m in metrics], label="training loss (masked positions)")
    held = [(m["step"], m["heldout_loss"]) for m in metrics if "heldout_loss" in m]
    if held:
        axes[0].plot(*zip(*held), "o-", label="held-out loss (fixed masks)")
    axes[0].set_xlabel("update step")
    axes[0].set_ylabel("regression loss (target units)")
    axes[0].set_yscale("log")
    axes[0].legend(fontsize=8)
    axes[1].plot(steps, [m["target_std"] for m in metrics], label="target std (teacher)")
    axes[1].plot(steps, [m["pred_std"] for m in metrics], label="prediction std (student)")
    axes[1].set_xlabel("update step")
    axes[1].set_ylabel("std across masked positions")
    axes[1].set_ylim(bottom=0)
    axes[1].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)
