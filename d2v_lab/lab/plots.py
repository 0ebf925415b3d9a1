"""The figures the notebooks and the tour share. Every function only draws: it takes arrays or result
objects (whatever it shows is computed before), draws into a matplotlib Axes (or a new figure) with
labelled axes and units, and returns the Figure; ``path`` saves it as well."""
from __future__ import annotations

import textwrap

import matplotlib.pyplot as plt
import numpy as np

from d2v_lab.evaluate.results import TaskResult

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


def plot_probe(result: TaskResult, path=None, ax=None):
    """Linear-probe test accuracy per layer, pretrained vs random init, with raw-input, supervised and
    chance as horizontal references."""
    fig, ax = _new_axes(ax)
    layers = [r["layer"] for r in result.per_layer]
    ax.plot(layers, [100 * r["pretrained"] for r in result.per_layer], "o-", label="data2vec (pretrained)")
    ax.plot(layers, [100 * r["random_init"] for r in result.per_layer], "s--", label="same model, random init")
    refs = [("raw input", 100 * result.linear.raw_input, "tab:gray"), ("chance", 100 * result.chance, "black")]
    if result.supervised_accuracy is not None:
        refs.insert(1, ("supervised (same model)", 100 * result.supervised_accuracy, "tab:red"))
    for label, y, colour in refs:
        ax.axhline(y, color=colour, ls=":", lw=1.5, label=f"{label}: {y:.1f}%")
    ax.set_xlabel("layer (0 = embedded input)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{result.modality} / {result.task}: linear probe per layer\n"   # two lines: fits side by side
                 f"(n_train={result.n_train}, n_test={result.n_test})", fontsize=9)
    ax.set_xticks(layers)
    ax.legend(fontsize=8)
    return _save(fig, path)


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


UMAP_CAPTION = ("A UMAP picture alone proves nothing: it distorts distances and invents clusters. "
                "Read it beside the numbers (retrieval vs its null band, the controls) in align.json.")


MODALITY_MARKERS = {"image": "o", "text": "s", "audio": "^"}


def plot_joint_view(view: dict[str, np.ndarray], title: str, ax=None, path=None):
    """One 2-D view of the joint space (``crossmodal.views``): colour = concept, marker = modality. If the
    modalities shared a space, each colour would form one cluster whatever its markers."""
    fig, ax = _new_axes(ax, figsize=(8, 6.5))
    concepts = sorted(set(view["concept"].tolist()))
    cmap = plt.get_cmap("tab20" if len(concepts) > 10 else "tab10")
    colour = {c: cmap(i % cmap.N) for i, c in enumerate(concepts)}
    modalities = list(dict.fromkeys(view["modality"].tolist()))
    for m in modalities:
        marker = MODALITY_MARKERS.get(m.split("_")[0], "x")
        for c in concepts:
            sel = (view["modality"] == m) & (view["concept"] == c)
            if sel.any():
                ax.scatter(view["xy"][sel, 0], view["xy"][sel, 1], s=22, color=colour[c], marker=marker,
                           alpha=0.75, edgecolors="none")
    handles = [plt.Line2D([], [], ls="", marker="o", color=colour[c], label=c) for c in concepts]
    handles += [plt.Line2D([], [], ls="", marker=MODALITY_MARKERS.get(m.split("_")[0], "x"), color="black",
                           label=m.replace("_", " ")) for m in modalities]
    ax.legend(handles=handles, fontsize=8, ncol=1, loc="center left", bbox_to_anchor=(1.0, 0.5),
              title="colour = concept\nmarker = modality", title_fontsize=8)
    ax.set_xlabel("UMAP 1 (arbitrary units)")
    ax.set_ylabel("UMAP 2 (arbitrary units)")
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def plot_similarity_matrix(rows: list[str], cols: list[str], sim: np.ndarray, title: str, ax=None, path=None,
                           row_label: str = "", col_label: str = ""):
    """A concept x concept cosine-similarity matrix (``crossmodal.views.cross_similarity``); the diagonal
    (same concept in both modalities) is outlined."""
    fig, ax = _new_axes(ax, figsize=(5, 4.5))
    im = ax.imshow(sim, cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_xticks(range(len(cols)), labels=cols, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), labels=rows, fontsize=8)
    for i, c in enumerate(rows):
        if c in cols:
            ax.add_patch(plt.Rectangle((cols.index(c) - 0.5, i - 0.5), 1, 1, fill=False, lw=1.5, ec="black"))
    ax.set_xlabel(col_label)
    ax.set_ylabel(row_label)
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="cosine of concept means")
    return _save(fig, path)


def plot_null(null: np.ndarray, observed: float, interval: tuple[float, float] | None = None, chance=None,
              title: str = "", xlabel: str = "retrieval accuracy", ax=None, path=None):
    """A null distribution as a histogram, its 95th percentile, the observed value (with its 95%
    interval) and chance."""
    fig, ax = _new_axes(ax, figsize=(5, 3.2))
    null = np.asarray(null, dtype=float)
    ax.hist(100 * null, bins=20, color="lightgray", edgecolor="gray", label=f"null ({len(null)} draws)")
    ax.axvline(100 * np.percentile(null, 95), color="gray", ls="--", label="null 95th percentile")
    ax.axvline(100 * observed, color="tab:red", lw=2, label=f"observed: {100 * observed:.1f}%")
    if interval is not None:
        ax.axvspan(100 * interval[0], 100 * interval[1], color="tab:red", alpha=0.15, label="95% interval")
    if chance is not None:
        ax.axvline(100 * chance, color="black", ls=":", label=f"chance: {100 * chance:.1f}%")
    ax.set_xlabel(f"{xlabel} (%)")
    ax.set_ylabel("draws")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    return _save(fig, path)


# --- masks ----------------------------------------------------------------------------------------

def _ratio_title(what: str, mask, asked: float | None) -> str:
    achieved = float(np.asarray(mask, dtype=float).mean())
    return f"{what}: masked {100 * achieved:.1f}%" + (f" (asked {100 * asked:.1f}%)" if asked is not None else "")


def show_image_mask(image, mask, grid: tuple[int, int], asked: float | None = None, ax=None, path=None):
    """The image with its masked patches greyed out. image: (3, H, W) uint8; mask: (h*w,) bool."""
    fig, ax = _new_axes(ax, figsize=(3.2, 3.4))
    img = np.asarray(image).transpose(1, 2, 0).astype(float) / 255.0
    h, w = grid
    ph, pw = img.shape[0] // h, img.shape[1] // w
    cover = np.kron(np.asarray(mask, dtype=float).reshape(h, w), np.ones((ph, pw)))[..., None]
    ax.imshow(img * (1 - cover) + 0.5 * cover, interpolation="nearest")
    ax.set_xticks(np.arange(0, img.shape[1] + 1, pw) - 0.5, labels=[])
    ax.set_yticks(np.arange(0, img.shape[0] + 1, ph) - 0.5, labels=[])
    ax.grid(color="white", lw=0.3)
    ax.set_xlabel(f"{w} x {h} patches of {pw} x {ph} pixels")
    ax.set_title(_ratio_title("image", mask, asked), fontsize=9)
    return _save(fig, path)


def show_spectrogram_mask(logmel, mask, patch: int, hop_ms: float = 10.0, asked: float | None = None,
                          ax=None, path=None):
    """A log-mel spectrogram (n_mels, frames) with the masked time spans shaded."""
    fig, ax = _new_axes(ax, figsize=(6, 2.6))
    logmel = np.asarray(logmel)
    seconds = logmel.shape[1] * hop_ms / 1000
    ax.imshow(logmel, origin="lower", aspect="auto", cmap="magma", extent=(0, seconds, 0, logmel.shape[0]))
    token_s = patch * hop_ms / 1000
    for i in np.flatnonzero(np.asarray(mask)):
        ax.axvspan(i * token_s, (i + 1) * token_s, color="white", alpha=0.55, lw=0)
    ax.set_xlabel(f"time (s); one token = {patch} frames = {patch * hop_ms:.0f} ms")
    ax.set_ylabel("mel band")
    ax.set_title(_ratio_title("audio", mask, asked), fontsize=9)
    return _save(fig, path)


def masked_text(tokens: list[str], mask, width: int = 90) -> str:
    """Byte-level BPE tokens joined back into text, masked tokens shown as [___]."""
    pieces = [((" " if t.startswith("Ġ") else "") + "[___]" if m else t) for t, m in zip(tokens, np.asarray(mask))]
    text = "".join(p.replace("Ġ", " ").replace("Ċ", "\n") for p in pieces)
    return "\n".join(textwrap.fill(line, width) for line in text.split("\n"))


def show_text_mask(tokens: list[str], mask, asked: float | None = None, ax=None, path=None, max_tokens: int = 80):
    fig, ax = _new_axes(ax, figsize=(7, 2.4))
    ax.axis("off")
    ax.text(0, 1, masked_text(tokens[:max_tokens], np.asarray(mask)[:max_tokens], width=80), va="top",
            family="monospace", fontsize=8, transform=ax.transAxes)
    ax.set_title(_ratio_title("text", np.asarray(mask)[1:], asked) + " ([CLS] never masked)", fontsize=9)
    return _save(fig, path)


# one colour per decay in every EMA figure (the demo's four, and the widget's other choices); runs with
# collapsing targets are red
TAU_COLOURS = {0.0: "C0", 0.5: "C4", 0.8: "C8", 0.9: "C1", 0.95: "C6", 0.98: "C2", 0.99: "C9", 1.0: "C7"}


def _run_colour(run: dict) -> str:
    return "C3" if run.get("target_norm") else TAU_COLOURS.get(run["tau"], "C5")


def tau_label(run: dict) -> str:
    """How a ``demos.teacher_dynamics`` run is named in legends: its tau and what that tau means."""
    tau = run["tau"]
    if tau == 0:
        what = "teacher = student"
    elif tau >= 1:
        what = "frozen: never moves"
    else:
        what = f"memory {1 / (1 - tau):.0f} updates"
    norm = f", {run['target_norm']}-norm targets" if run.get("target_norm") else ""
    return f"tau={tau:g} ({what}{norm})"


def _final(values, last: int = 10) -> float:
    return float(np.mean(values[-last:]))


def plot_teacher_dynamics(runs: list[dict], axes=None, path=None):
    """Three readouts of ``demos.teacher_dynamics`` runs against the update step: how far the targets
    of a fixed batch moved in each update (symlog, so the frozen teacher's exact 0 is drawn too), how
    far the teacher's weights (solid; the student's dashed) are from the initial weights, and the
    training loss."""
    if axes is None:
        fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    fig = axes[0].figure
    for r in runs:
        colour = _run_colour(r)
        axes[0].plot(r["step"], r["target_drift"], color=colour, label=tau_label(r))
        axes[1].plot(r["step"], r["teacher_distance"], color=colour, label=f"teacher, tau={r['tau']:g}")
        axes[1].plot(r["step"], r["student_distance"], color=colour, ls="--", lw=1, alpha=0.7)
        axes[2].plot(r["step"], r["loss"], color=colour, lw=1, label=f"tau={r['tau']:g}: last 10 updates "
                     f"{_final(r['loss']):.3f}")
    axes[0].set_yscale("symlog", linthresh=1e-3)
    axes[0].set_ylim(bottom=-3e-4)       # a frozen teacher's drift is exactly 0: keep that line off the axis
    axes[0].set_ylabel("relative change of the targets\nin one update (symlog)")
    axes[0].set_title("targets of a fixed held-out batch", fontsize=9)
    axes[1].plot([], [], color="gray", ls="--", lw=1, label="students (dashed)")
    axes[1].set_ylabel("relative L2 distance of the weights\nfrom the initial weights")
    axes[1].set_ylim(bottom=-0.01)
    axes[1].set_title("teacher (solid) and student (dashed)", fontsize=9)
    axes[2].set_ylabel("training loss (masked positions)")
    axes[2].set_title("each tau against its own targets", fontsize=9)
    for ax in axes:
        ax.set_xlabel("update step (constant learning rate)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def plot_loss_vs_features(runs: list[dict], ax=None, path=None):
    """Final training loss (mean of the last 10 updates, log axis) against the k-NN accuracy of the
    final teacher's features, one point per ``demos.teacher_dynamics`` run that has a probe, with the
    accuracy's binomial standard error; the random-init weights' k-NN accuracy as a reference line."""
    fig, ax = _new_axes(ax, figsize=(6.5, 4))
    for r in runs:
        loss, p = _final(r["loss"]), r["knn_teacher"]
        se = 100 * np.sqrt(p * (1 - p) / r["knn_n_test"])
        ax.errorbar(loss, 100 * p, yerr=se, color=_run_colour(r), fmt="X" if r.get("target_norm") else "o", ms=8,
                    capsize=3, zorder=3, label=f"{tau_label(r)}: loss {loss:.3f}, k-NN {100 * p:.1f} ± {se:.1f}%")
    initial = 100 * runs[0]["knn_initial"]
    ax.axhline(initial, color="black", ls=":", lw=1.5, label=f"random init (= the tau=1 teacher): {initial:.1f}%")
    ax.set_xscale("log")
    ax.set_xlabel("final training loss (mean of the last 10 updates, log scale)")
    ax.set_ylabel(f"k-NN accuracy of the teacher's features (%)\n({runs[0]['knn_n_test']} test images, "
                  f"error bars: 1 standard error)")
    ax.set_title("lower loss is not better features", fontsize=9)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return _save(fig, path)


def plot_collapse(collapse: dict, healthy: dict | None = None, axes=None, path=None):
    """``demos.collapse_demo``: the target std the guard watches against the update step, with the
    guard's threshold and the step where the guarded run stopped, and the training loss (log axis);
    ``healthy`` (a ``teacher_dynamics`` run with the same tau and the default targets) for comparison."""
    if axes is None:
        fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
    fig = axes[0].figure
    guarded, free = collapse["guarded"], collapse["unguarded"]
    runs = ([(healthy, _run_colour(healthy), tau_label(healthy) + ", default targets")] if healthy else []) + \
        [(free, _run_colour(free), tau_label(free) + ", guard off")]
    for r, colour, label in runs:
        axes[0].plot(r["step"], r["target_std"], color=colour, label=label)
        axes[1].plot(r["step"], r["loss"], color=colour, lw=1, label=f"{label}: last 10 updates {_final(r['loss']):.3f}")
    threshold = guarded["min_target_std"]
    axes[0].axhline(threshold, color="black", ls=":", label=f"guard threshold train.min_target_std = {threshold:g}")
    if guarded["stopped"]:
        step, std = guarded["step"][-1], guarded["target_std"][-1]
        axes[0].scatter([step], [std], marker="X", s=80, color="black", zorder=3,
                        label=f"guard on: TrainingStopped at step {step} (std {std:.3f})")
    axes[0].set_ylabel("target std across masked positions\n(what the guard checks)")
    axes[0].set_ylim(bottom=0)
    axes[1].set_yscale("log")
    axes[1].set_ylabel("training loss (log scale)")
    for ax in axes:
        ax.set_xlabel("update step (constant learning rate)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def plot_tau_schedule(taus, title: str = "", ax=None, path=None):
    """The EMA decay per update (``ema.tau_schedule``) and the teacher's memory 1/(1 - tau)."""
    fig, ax = _new_axes(ax, figsize=(5, 3))
    taus = np.asarray(taus, dtype=float)
    xs = np.arange(len(taus))
    ax.plot(xs, taus, label="tau")
    ax.set_xlabel("update step")
    ax.set_ylabel("EMA decay tau")
    twin = ax.twinx()
    twin.plot(xs, 1.0 / (1.0 - np.minimum(taus, 1 - 1e-9)), color="tab:orange", ls="--",
              label="teacher memory 1/(1-tau)")
    twin.set_ylabel("teacher memory (updates)")
    ax.set_title(title, fontsize=9)
    fig.legend(fontsize=7, loc="lower right")
    return _save(fig, path)


def plot_masks(samples: dict, masks: dict, ratio: float, text_ratio: float):
    """The three modalities with their masks. ``samples``: {"image": (3,32,32) uint8, "audio": (64, 100)
    log-mel, "text": (ids (T,), tokens list)}; ``masks``: {"image": (64,), "audio": (50,), "text": (T,)}."""
    fig = plt.figure(figsize=(13, 5.2))
    grid = fig.add_gridspec(2, 3, width_ratios=[1, 1.6, 1.6], height_ratios=[1, 0.8])
    show_image_mask(samples["image"], masks["image"], (8, 8), asked=ratio, ax=fig.add_subplot(grid[0, 0]))
    show_spectrogram_mask(samples["audio"], masks["audio"], patch=2, asked=ratio, ax=fig.add_subplot(grid[0, 1:]))
    show_text_mask(samples["text"][1], masks["text"], asked=text_ratio, ax=fig.add_subplot(grid[1, :]))
    fig.tight_layout()
    return fig
