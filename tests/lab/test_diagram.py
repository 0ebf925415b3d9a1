"""The method picture (d2v_lab/lab/diagram.py): every step of data2vec is a labelled box, the arrows
connect the right boxes (masked input -> student, the same input unmasked -> teacher, EMA from student
to teacher, predictions and targets -> loss), every label fits inside its box, and 1.0 and 2.0 differ
where the code differs (decoder vs regression head, visible-only student, one teacher pass for M copies)."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # no display in tests

import matplotlib.pyplot as plt
import pytest
from matplotlib.patches import FancyBboxPatch
from matplotlib.text import Annotation, Text

from d2v_lab.lab.diagram import COL_X, ROW_Y, boxes, draw_data2vec, draw_versions

TITLES = {"input x", "masking", "student", "predictions", "EMA teacher", "top-K blocks", "norm per block",
          "average", "loss"}
# (from, to) for every arrow: the two paths, where they meet, and the EMA
ARROWS = {("input", "masking"), ("masking", "student"), ("student", "decoder"), ("decoder", "predictions"),
          ("input", "teacher"), ("teacher", "top_k"), ("top_k", "norm"), ("norm", "average"),
          ("predictions", "loss"), ("average", "loss"), ("student", "teacher")}


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def texts(fig) -> list[str]:
    return [t.get_text() for t in fig.findobj(Text) if t.get_text() and not isinstance(t, Annotation)]


def box_at(version: int, point) -> str:
    """The box whose edge the point lies on."""
    x, y = point
    for b in boxes(version):
        cx, cy = COL_X[b.col], ROW_Y[b.row]
        if abs(x - cx) <= b.w / 2 + 1e-9 and abs(y - cy) <= b.h / 2 + 1e-9:
            return b.key
    raise AssertionError(f"no box at {point}")


@pytest.mark.parametrize("version", [1, 2])
def test_every_step_is_a_labelled_box(version):
    fig = draw_data2vec(version)
    labels = texts(fig)
    assert TITLES <= set(labels), TITLES - set(labels)
    assert len(fig.findobj(FancyBboxPatch)) == len(boxes(version)) == 10
    assert "same x, unmasked" in labels
    assert any(t.startswith("EMA:") and r"\tau" in t for t in labels)
    assert any("masked" in t and "positions only" in t for t in labels)   # the loss
    assert f"data2vec {version}.0: one training step" in labels


@pytest.mark.parametrize("version", [1, 2])
def test_the_arrows_connect_the_right_boxes(version):
    fig = draw_data2vec(version)
    arrows = [a for a in fig.axes[0].texts if isinstance(a, Annotation)]
    connected = {(box_at(version, a.xyann), box_at(version, a.xy)) for a in arrows}
    assert connected == ARROWS and len(arrows) == len(ARROWS)
    ema = next(a for a in arrows if (box_at(version, a.xyann), box_at(version, a.xy)) == ("student", "teacher"))
    assert ema.arrow_patch.get_linestyle() == "--"   # no gradient: drawn dashed


@pytest.mark.parametrize("version", [1, 2])
def test_labels_fit_inside_their_boxes(version):
    fig = draw_data2vec(version)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    patches = fig.findobj(FancyBboxPatch)
    inside = 0
    for t in fig.axes[0].texts:
        if isinstance(t, Annotation) or not t.get_text():
            continue
        bb = t.get_window_extent(renderer)
        holder = [p for p in patches if p.get_window_extent(renderer).contains((bb.x0 + bb.x1) / 2, (bb.y0 + bb.y1) / 2)]
        if holder:
            box = holder[0].get_window_extent(renderer)
            assert box.x0 <= bb.x0 and bb.x1 <= box.x1 and box.y0 <= bb.y0 and bb.y1 <= box.y1, t.get_text()
            inside += 1
    assert inside == 2 * len(patches)   # a title and a detail in every box


def test_the_versions_differ_where_the_code_does():
    v1, v2 = set(texts(draw_data2vec(1))), set(texts(draw_data2vec(2)))
    assert "conv decoder" in v2 and "regression head" not in v2
    assert "regression head" in v1 and "conv decoder" not in v1
    assert any("visible" in t and "only" in t for t in v2) and not any("visible" in t for t in v1)
    assert any("[MASK]" in t for t in v1) and not any("[MASK]" in t for t in v2)
    assert "one pass for\nall M copies" in v2
    # the details come from the recipes in train/profiles.py
    assert any("image 80% inverse blocks" in t for t in v2) and any("image 60% blocks" in t for t in v1)
    assert "instance norm" in v2 and "layer: image, text\ninstance: audio" in v1
    assert any(t.startswith("L2\n") for t in v2) and any(t.startswith("smooth L1: image, text") for t in v1)


def test_draw_versions_shows_both_and_outlines_what_changed():
    fig = draw_versions()
    labels = texts(fig)
    assert "data2vec 1.0: one training step" in labels and "data2vec 2.0: one training step" in labels
    assert len(fig.axes) == 2
    heavy = {box_at(2, (p.get_x() + p.get_width() / 2, p.get_y() + p.get_height() / 2))
             for p in fig.axes[1].findobj(FancyBboxPatch) if p.get_linewidth() > 2}
    assert heavy == {"masking", "student", "decoder", "teacher", "norm", "loss"}


def test_draws_into_a_given_axes_and_refuses_other_versions():
    fig, ax = plt.subplots()
    assert draw_data2vec(2, ax=ax) is fig
    with pytest.raises(ValueError, match="version"):
        draw_data2vec(3)
