"""The notebook widgets are wired to the tested functions: moving a slider redraws with its value."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # the widgets draw figures; no display in tests

import ipywidgets as W
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


def test_ema_widget_reruns_with_the_chosen_tau_and_k(monkeypatch):
    shown, calls = [], []
    monkeypatch.setattr(widgets, "display", shown.append)

    def run(tau, k):
        calls.append((tau, k))
        steps = list(range(1, 4))
        return {"tau": tau, "top_k": k, "step": steps, "target_drift": [1 - tau + 0.1] * 3,
                "target_std": [1.0] * 3, "loss": [0.5] * 3}
    widgets.ema_widget(run, taus=(0.0, 0.99, 1.0), ks=(1, 2))
    tau = _find(_box(shown), W.SelectionSlider, "EMA decay tau")[0]
    tau.value = 0.0
    assert calls[-2:] == [(0.0, 2), (0.99, 2)]       # the chosen tau, and the 0.99 reference
    k = _find(_box(shown), W.SelectionSlider, "top K")[0]
    k.value = 1
    assert calls[-2] == (0.0, 1)


def test_masked_text_keeps_spacing():
    assert masked_text(["[CLS]", "Ġthe", "Ġdog", "Ġbarked"], np.array([0, 0, 1, 0])) == "[CLS] the [___] barked"


def test_slider_moved_by_a_frontend_redraws_in_a_real_kernel():
    """What JupyterLab does, at the protocol level: a real kernel builds the widget, the 'frontend'
    sends a comm update for the mask-ratio slider, and the kernel answers with a new figure
    (display_data image/png routed to the Output widget) and the new achieved ratio in the note."""
    from jupyter_client.manager import start_new_kernel

    km, kc = start_new_kernel(kernel_name="python3")
    try:
        def run_and_collect(send):
            msg_id = send()
            msgs = []
            while True:
                m = kc.get_iopub_msg(timeout=120)
                msgs.append(m)
                if (m["parent_header"].get("msg_id") == msg_id and m["msg_type"] == "status"
                        and m["content"]["execution_state"] == "idle"):
                    return msgs

        code = ("import matplotlib, numpy as np, torch\n"
                "from d2v_lab.lab import widgets\n"
                "g = torch.Generator().manual_seed(0)\n"
                "ids = torch.randint(5, 50, (40,), generator=g)\n"
                "s = {'image': torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8, generator=g).numpy(),\n"
                "     'audio': torch.randn(64, 100, generator=g), 'text': (ids, ['[CLS]'] + ['w'] * 39)}\n"
                "widgets.masking_widget(s)\n")
        built = run_and_collect(lambda: kc.execute(code))
        errors = [m["content"] for m in built if m["msg_type"] == "error"]
        assert not errors, errors
        opened = {m["content"]["comm_id"]: m["content"]["data"]["state"] for m in built if m["msg_type"] == "comm_open"}
        slider = next(c for c, s in opened.items() if s.get("description") == "mask ratio")
        assert sum(m["msg_type"] == "display_data" and "image/png" in m["content"]["data"] for m in built) == 1

        def move_slider():
            msg = kc.session.msg("comm_msg", {"comm_id": slider, "data": {"method": "update", "state": {"value": 0.3},
                                                                        "buffer_paths": []}})
            kc.shell_channel.send(msg)
            return msg["header"]["msg_id"]
        moved = run_and_collect(move_slider)
        figures = [m for m in moved if m["msg_type"] == "display_data" and "image/png" in m["content"]["data"]]
        notes = [m["content"]["data"]["state"]["value"] for m in moved if m["msg_type"] == "comm_msg"
                 and "asked" in str(m["content"]["data"].get("state", {}).get("value", ""))]
        assert len(figures) == 1, "moving the slider must draw one new figure"
        assert notes and "asked 30%" in notes[-1] and "image 29.7%" in notes[-1]
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
