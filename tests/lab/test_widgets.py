"""The notebook widgets are wired to the tested functions: moving a slider redraws with its value."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # the widgets draw figures; no display in tests

import ipywidgets as W
import matplotlib.figure
import numpy as np
import pytest
import torch

from d2v_lab.lab import widgets
from d2v_lab.lab.plots import masked_text


@pytest.fixture
def samples():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 50, (40,), generator=g)
    tokens = ["[CLS]"] + [f"Ġw{int(i)}" for i in ids[1:]]
    return {"image": torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8, generator=g).numpy(),
            "audio": torch.randn(64, 100, generator=g), "text": (ids, tokens)}


def _box(shown):
    """The widget tree the function displayed (figures are displayed too, inside its Output)."""
    return next(s for s in shown if isinstance(s, W.Box))


def _find(box, cls, description=None):
    """All widgets of a class (optionally by description) inside a widget tree."""
    found, stack = [], [box]
    while stack:
        w = stack.pop()
        if isinstance(w, cls) and (description is None or w.description == description):
            found.append(w)
        stack.extend(getattr(w, "children", ()))
    return found


def test_masking_widget_redraws_with_the_slider_value(samples, monkeypatch):
    shown, drawn = [], []
    monkeypatch.setattr(widgets, "display", shown.append)
    real = widgets.draw_masks
    monkeypatch.setattr(widgets, "draw_masks", lambda *a, **k: drawn.append((a, k)) or real(*a, **k))
    widgets.masking_widget(samples)
    box = _box(shown)
    ratio = _find(box, W.FloatSlider, "mask ratio")[0]
    note = _find(box, W.HTML)[0]
    assert drawn[-1][0][2] == 0.6 and "asked 60%" in note.value
    ratio.value = 0.3                                  # what moving the slider does
    assert drawn[-1][0][2] == 0.3
    assert "asked 30%" in note.value and "image 29.7%" in note.value     # round(0.3 * 64) = 19 tokens
    kind = _find(box, W.Dropdown, "image mask")[0]
    kind.value = "inverse_block"
    assert drawn[-1][0][1] == "inverse_block"


def test_draw_masks_achieves_the_asked_ratios(samples):
    fig, masks = widgets.draw_masks(samples, "block", ratio=0.5, block=2, span=5, text_ratio=0.25)
    assert int(masks["image"].sum()) == 32 and int(masks["audio"].sum()) == 25
    assert not masks["text"][0] and int(masks["text"].sum()) == round(0.25 * 39)
    assert len(fig.axes) == 3


def fake_run(tau, k, calls=None):
    """A stand-in for a cached ``demos.teacher_dynamics``: the same keys, made-up curves."""
    if calls is not None:
        calls.append((tau, k))
    steps = [1, 2, 3]
    moved = [(1 - tau) * s / 10 for s in steps]
    return {"tau": tau, "top_k": k, "target_norm": None, "step": steps, "loss": [0.5, 0.4, 0.3],
            "target_drift": [1 - tau] * 3, "teacher_distance": moved, "student_distance": [s / 10 for s in steps],
            "knn_teacher": 0.2 + 0.05 * (1 - tau)}


class Handle:
    """What IPython's display(..., display_id=True) returns: update() redraws that output in place."""
    def __init__(self):
        self.updates = []

    def update(self, obj):
        self.updates.append(obj)


def test_ema_widget_draws_its_default_then_redraws_in_place(monkeypatch):
    shown, handle, calls = [], Handle(), []

    def display(obj, display_id=None):
        shown.append(obj)
        return handle if display_id else None
    monkeypatch.setattr(widgets, "display", display)
    widgets.ema_widget(lambda tau, k: fake_run(tau, k, calls), taus=(0.0, 0.5, 0.98, 1.0), ks=(1, 2))
    figures = [s for s in shown if isinstance(s, matplotlib.figure.Figure)]
    assert len(figures) == 1 and not handle.updates                  # the default, as an ordinary output
    assert set(calls) == {(0.98, 2), (0.0, 2), (1.0, 2)}             # the default next to the references
    legend = [t.get_text() for t in figures[0].axes[0].get_legend().get_texts()]
    assert legend == ["tau=0 (teacher = student)", "tau=0.98 (memory 50 updates)", "tau=1 (frozen: never moves)"]
    tau = _find(_box(shown), W.SelectionSlider, "EMA decay tau")[0]
    note = _find(_box(shown), W.HTML)[0]
    assert "tau=0.98, K=2" in note.value and "k-NN of the teacher's features 20.1%" in note.value
    tau.value = 0.5
    assert (0.5, 2) in calls and len(handle.updates) == 1            # the same output, redrawn
    assert isinstance(handle.updates[0], matplotlib.figure.Figure) and "tau=0.5, K=2" in note.value
    k = _find(_box(shown), W.SelectionSlider, "top K")[0]
    k.value = 1
    assert (0.5, 1) in calls and (0.0, 1) in calls and len(handle.updates) == 2
    assert len([s for s in shown if isinstance(s, matplotlib.figure.Figure)]) == 1   # never a second figure


def test_masked_text_keeps_spacing():
    assert masked_text(["[CLS]", "Ġthe", "Ġdog", "Ġbarked"], np.array([0, 0, 1, 0])) == "[CLS] the [___] barked"


def _collect(kc, send) -> list[dict]:
    """Every iopub message caused by one request, up to its 'idle' status."""
    msg_id = send()
    msgs = []
    while True:
        m = kc.get_iopub_msg(timeout=120)
        msgs.append(m)
        if (m["parent_header"].get("msg_id") == msg_id and m["msg_type"] == "status"
                and m["content"]["execution_state"] == "idle"):
            return msgs


def _move(kc, comm_id, state):
    """What a frontend sends when the user moves a slider: a comm update of its state (a FloatSlider
    syncs its ``value``, a SelectionSlider the ``index`` of its option)."""
    def send():
        msg = kc.session.msg("comm_msg", {"comm_id": comm_id, "data": {"method": "update", "state": state,
                                                                     "buffer_paths": []}})
        kc.shell_channel.send(msg)
        return msg["header"]["msg_id"]
    return _collect(kc, send)


@pytest.fixture
def kernel():
    from jupyter_client.manager import start_new_kernel

    km, kc = start_new_kernel(kernel_name="python3")
    try:
        yield kc
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def _opened(msgs, description):
    opened = {m["content"]["comm_id"]: m["content"]["data"]["state"] for m in msgs if m["msg_type"] == "comm_open"}
    return next(c for c, s in opened.items() if s.get("description") == description)


def _pngs(msgs, kind="display_data"):
    return [m for m in msgs if m["msg_type"] == kind and "image/png" in m["content"]["data"]]


def test_slider_moved_by_a_frontend_redraws_in_a_real_kernel(kernel):
    """What JupyterLab does, at the protocol level: a real kernel builds the widget, the 'frontend'
    sends a comm update for the mask-ratio slider, and the kernel answers with a new figure
    (display_data image/png routed to the Output widget) and the new achieved ratio in the note."""
    code = ("import matplotlib, numpy as np, torch\n"
            "from d2v_lab.lab import widgets\n"
            "g = torch.Generator().manual_seed(0)\n"
            "ids = torch.randint(5, 50, (40,), generator=g)\n"
            "s = {'image': torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8, generator=g).numpy(),\n"
            "     'audio': torch.randn(64, 100, generator=g), 'text': (ids, ['[CLS]'] + ['w'] * 39)}\n"
            "widgets.masking_widget(s)\n")
    built = _collect(kernel, lambda: kernel.execute(code))
    errors = [m["content"] for m in built if m["msg_type"] == "error"]
    assert not errors, errors
    assert len(_pngs(built)) == 1
    moved = _move(kernel, _opened(built, "mask ratio"), {"value": 0.3})
    notes = [m["content"]["data"]["state"]["value"] for m in moved if m["msg_type"] == "comm_msg"
             and "asked" in str(m["content"]["data"].get("state", {}).get("value", ""))]
    assert len(_pngs(moved)) == 1, "moving the slider must draw one new figure"
    assert notes and "asked 30%" in notes[-1] and "image 29.7%" in notes[-1]


def test_ema_slider_redraws_its_figure_in_place_in_a_real_kernel(kernel):
    """The EMA widget in a real kernel: building it outputs one ordinary figure (display_data, so a
    saved notebook keeps it) with a display id; moving the tau slider sends that id's update."""
    code = ("from d2v_lab.lab import widgets\n"
            "def run(tau, k):\n"
            "    return {'tau': tau, 'top_k': k, 'step': [1, 2], 'loss': [0.5, 0.4], 'target_drift': [1 - tau] * 2,\n"
            "            'teacher_distance': [0.0, 1 - tau], 'student_distance': [0.1, 0.2]}\n"
            "widgets.ema_widget(run, taus=(0.0, 0.5, 0.98, 1.0))\n")
    built = _collect(kernel, lambda: kernel.execute(code))
    errors = [m["content"] for m in built if m["msg_type"] == "error"]
    assert not errors, errors
    (figure,) = _pngs(built)
    display_id = figure["content"]["transient"]["display_id"]
    moved = _move(kernel, _opened(built, "EMA decay tau"), {"index": 1})   # tau = 0.5
    updates = _pngs(moved, "update_display_data")
    assert len(updates) == 1 and updates[0]["content"]["transient"]["display_id"] == display_id
    assert not _pngs(moved), "a slider move redraws the figure; it never adds one"
