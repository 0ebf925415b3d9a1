"""The method picture: one data2vec training step as boxes and arrows, drawn with matplotlib.

``draw_data2vec(version)`` draws data2vec 1.0 or 2.0 (Baevski et al. 2022, Sec. 3 of both papers):
the input, masked, goes through the student and its decoder (2.0) or regression head (1.0) to
predictions at the masked positions; the same input, unmasked, goes through the EMA teacher, whose
top-K blocks' FFN outputs are normalised per block and averaged into the targets; the loss compares
the two at the masked positions only; and the teacher follows the student by an exponential moving
average. ``draw_versions()`` draws both, one above the other, with what 2.0 changed outlined.

The picture is drawn from the package, not pasted: the masks, per-block norms and losses written in
it come from ``d2v_lab.train.profiles`` (``paper_masking``, ``paper_targets``, ``paper_loss``), the
recipes the models are built with. Like every figure function here, these only draw.
"""
from __future__ import annotations

from dataclasses import dataclass

import matplotlib.pyplot as plt
from matplotlib.patches import FancyBboxPatch

from d2v_lab.train.config import MODALITIES
from d2v_lab.train.profiles import paper_loss, paper_masking, paper_targets

# role -> (fill, edge): the input, the student's path, the teacher's path, the loss
COLOURS = {"data": ("#eeeeee", "#555555"), "student": ("#dbe9f6", "#1f77b4"),
           "teacher": ("#fde7cf", "#d9730d"), "loss": ("#f8d7d7", "#c0392b")}
COL_X = [0.85 + 1.9 * i for i in range(7)]   # box centres, in axes data units
ROW_Y = {"top": 4.3, "middle": 2.85, "bottom": 1.4}
BOX_W, BOX_H = 1.6, 1.15
TITLE_SIZE, DETAIL_SIZE = 10.5, 9.5
FIGSIZE = (12, 4.4)
MASK_NAMES = {"block": "blocks", "inverse_block": "inverse blocks", "span": "spans", "random": "random tokens"}
LOSS_NAMES = {"l2": "L2", "smooth_l1": "smooth L1"}


@dataclass(frozen=True)
class Box:
    key: str
    title: str      # bold, one line
    detail: str     # smaller, one to three lines
    role: str       # a key of COLOURS
    col: int
    row: str        # a key of ROW_Y
    w: float = BOX_W
    h: float = BOX_H


def _by_setting(setting: dict) -> str:
    """'layer: image, text / instance: audio', or the one value when every modality agrees."""
    groups: dict[str, list[str]] = {}
    for modality, value in setting.items():
        groups.setdefault(value, []).append(modality)
    if len(groups) == 1:
        return next(iter(groups))
    return "\n".join(f"{value}: {', '.join(ms)}" for value, ms in groups.items())


def boxes(version: int = 2) -> list[Box]:
    """The boxes of ``draw_data2vec(version)``: what each step of the method is called and does."""
    if version not in (1, 2):
        raise ValueError(f"version must be 1 or 2, got {version}")
    v2 = version == 2
    norms = _by_setting({m: paper_targets(m, version)["target_layer_norm"] for m in MODALITIES})
    final = [m for m in MODALITIES if paper_targets(m, version)["target_final_norm"] != "none"]
    loss = _by_setting({m: LOSS_NAMES[paper_loss(m, version)["loss"]] for m in MODALITIES})
    return [
        Box("input", "input x", "a batch of images,\ntext or audio", "data", 0, "middle"),
        Box("masking", "masking", "M masked copies\nper sample" if v2 else "one masked copy\nper sample",
            "student", 1, "top"),
        Box("student", "student", "encodes visible\ntokens only" if v2 else
            "encodes all tokens,\nmasked ones as a\nlearned [MASK]", "student", 2, "top"),
        Box("decoder", "conv decoder", "masked slots\nenter as noise", "student", 3, "top") if v2 else
        Box("decoder", "regression head", "linear\n(text: 2 layers)", "student", 3, "top"),
        Box("predictions", "predictions", "at the masked\npositions", "student", 5, "top"),
        Box("teacher", "EMA teacher", "one pass for\nall M copies" if v2 else "one pass per\nmasked copy",
            "teacher", 2, "bottom"),
        Box("top_k", "top-K blocks", "FFN outputs $a^l_t$\n(pre-residual)", "teacher", 3, "bottom"),
        Box("norm", "norm per block", norms + (" norm" if "\n" not in norms else ""), "teacher", 4, "bottom"),
        Box("average", "average", "targets $y_t$" + (f"\n{', '.join(final)}: + final\nlayer norm" if final else ""),
            "teacher", 5, "bottom"),
        Box("loss", "loss", f"{loss}\n\nat masked\npositions only", "loss", 6, "middle", w=1.95, h=1.75),
    ]


def _edge(box: Box, side: str) -> tuple[float, float]:
    x, y = COL_X[box.col], ROW_Y[box.row]
    return {"left": (x - box.w / 2, y), "right": (x + box.w / 2, y), "top": (x, y + box.h / 2),
            "bottom": (x, y - box.h / 2)}[side]


def _arrow(ax, start, end, colour, ls="-", elbow=False):
    """An arrow from ``start`` to ``end``; ``elbow``: leave vertically, arrive horizontally."""
    ax.annotate("", xy=end, xytext=start,
                arrowprops=dict(arrowstyle="-|>", color=colour, lw=1.6, ls=ls, shrinkA=1, shrinkB=1,
                                mutation_scale=14,
                                connectionstyle="angle,angleA=90,angleB=0,rad=0" if elbow else "arc3"))


def _masking_note(version: int) -> str:
    parts = []
    for m in MODALITIES:
        mask = paper_masking(m, version)
        spans = f" of {mask.span}" if mask.kind == "span" else ""
        parts.append(f"{m} {mask.ratio:.0%} {MASK_NAMES[mask.kind]}{spans}")
    return "masking in d2v_lab: " + " · ".join(parts)


def draw_data2vec(version: int = 2, ax=None, highlight=()):
    """One data2vec ``version`` (1 or 2) training step as boxes and arrows; returns the Figure.
    ``highlight``: keys of boxes (see ``boxes``) to outline heavily, e.g. what changed between versions."""
    if ax is None:
        fig = plt.figure(figsize=FIGSIZE)
        ax = fig.add_axes((0, 0, 1, 1))
    fig = ax.figure
    ax.set_xlim(0, 13.3)
    ax.set_ylim(0.3, 5.3)
    ax.axis("off")
    by_key = {b.key: b for b in boxes(version)}
    for b in by_key.values():
        fill, edge = COLOURS[b.role]
        x, y = COL_X[b.col], ROW_Y[b.row]
        heavy = b.key in highlight
        ax.add_patch(FancyBboxPatch((x - b.w / 2, y - b.h / 2), b.w, b.h,
                                    boxstyle="round,pad=0,rounding_size=0.12", facecolor=fill,
                                    edgecolor="black" if heavy else edge, lw=3.0 if heavy else 1.4))
        ax.text(x, y + b.h / 2 - 0.1, b.title, ha="center", va="top", fontsize=TITLE_SIZE, weight="bold")
        ax.text(x, y - 0.12, b.detail, ha="center", va="center", fontsize=DETAIL_SIZE, linespacing=1.2)

    blue, orange, red = COLOURS["student"][1], COLOURS["teacher"][1], COLOURS["loss"][1]
    # the student's path: masked input -> student -> decoder / head -> predictions
    _arrow(ax, _edge(by_key["input"], "top"), _edge(by_key["masking"], "left"), blue, elbow=True)
    for a, b in [("masking", "student"), ("student", "decoder"), ("decoder", "predictions")]:
        _arrow(ax, _edge(by_key[a], "right"), _edge(by_key[b], "left"), blue)
    # the teacher's path: the SAME input, unmasked -> teacher -> top-K FFN -> norm -> average = targets
    _arrow(ax, _edge(by_key["input"], "bottom"), _edge(by_key["teacher"], "left"), orange, elbow=True)
    ax.text(COL_X[1] + 0.1, ROW_Y["bottom"] + 0.08, "same x, unmasked", ha="center", va="bottom",
            fontsize=DETAIL_SIZE, style="italic", color=orange)
    for a, b in [("teacher", "top_k"), ("top_k", "norm"), ("norm", "average")]:
        _arrow(ax, _edge(by_key[a], "right"), _edge(by_key[b], "left"), orange)
    # both meet in the loss; the teacher follows the student by EMA (no gradient flows into it)
    _arrow(ax, _edge(by_key["predictions"], "right"), _edge(by_key["loss"], "top"), red)
    _arrow(ax, _edge(by_key["average"], "right"), _edge(by_key["loss"], "bottom"), red)
    _arrow(ax, _edge(by_key["student"], "bottom"), _edge(by_key["teacher"], "top"), "#444444", ls="--")
    ax.text(COL_X[2] + 0.12, ROW_Y["middle"], r"EMA:  $\Delta \leftarrow \tau\Delta + (1-\tau)\,\theta$"
            "\n(teacher $\\Delta$, student $\\theta$; no gradient\nflows into the teacher)",
            ha="left", va="center", fontsize=DETAIL_SIZE, color="#444444")
    ax.text(0.1, 0.35, _masking_note(version), ha="left", va="bottom", fontsize=DETAIL_SIZE, color="#555555")
    ax.text(0.1, 5.25, f"data2vec {version}.0: one training step", ha="left", va="top", fontsize=12.5,
            weight="bold")
    return fig


def draw_versions():
    """data2vec 1.0 above 2.0, with the boxes whose content changed outlined in black; returns the
    Figure. (One above the other rather than side by side, so the labels stay readable.)"""
    changed = {a.key for a, b in zip(boxes(1), boxes(2)) if (a.title, a.detail) != (b.title, b.detail)}
    fig = plt.figure(figsize=(FIGSIZE[0], 2 * FIGSIZE[1] + 0.4))
    h = FIGSIZE[1] / fig.get_figheight()
    for version, bottom in ((1, 1 - h), (2, 0)):
        draw_data2vec(version, ax=fig.add_axes((0, bottom, 1, h)), highlight=changed)
    fig.text(0.5, 0.5, "boxes outlined in black: what changed from 1.0 to 2.0", ha="center", va="center",
             fontsize=TITLE_SIZE, style="italic")
    return fig
