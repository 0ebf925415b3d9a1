"""Notebook 00's hand-written data2vec 2.0 step is the package's step: its setup cell and its step cell,
taken from the notebook file and run here, give the same loss (to 1e-6), the same gradients and the
same student and teacher after the update as ``train_step`` from the same weights, batch and masks.
And the comparison has teeth: a step that forgets the mask, uses other targets, lets the student see
the masked tokens or skips the EMA update fails it."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from d2v_lab.train.checkpoint import build_model
from d2v_lab.train.loop import make_optimizer, train_step

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "00_data2vec_in_one_step.ipynb"
SETUP = "# setup: one model, one batch, one set of masks"
STEP = "# one data2vec 2.0 training step, written out"


def cell(first_line: str) -> str:
    """The source of the one code cell that starts with ``first_line``."""
    nb = json.loads(NOTEBOOK.read_text())
    found = [src for c in nb["cells"] if c["cell_type"] == "code"
             and (src := "".join(c["source"])).splitlines()[0] == first_line]
    assert len(found) == 1, f"expected one code cell starting with {first_line!r}, found {len(found)}"
    return found[0]


def run_notebook_step(modality: str, step: str | None = None) -> dict:
    """The notebook's setup (for ``modality``, ci profile) and step cells, run in one namespace."""
    setup = cell(SETUP)
    assert setup.count('MODALITY, BATCH, SEED = "image"') == 1
    setup = setup.replace('MODALITY, BATCH, SEED = "image"', f'MODALITY, BATCH, SEED = "{modality}"')
    ns = {"PROFILE": "ci", "print": lambda *a, **k: None}
    exec(compile(setup, "notebook-00-setup", "exec"), ns)
    exec(compile(step if step is not None else cell(STEP), "notebook-00-step", "exec"), ns)
    return ns


def package_step(ns: dict):
    """The package's own step from the notebook's initial weights, raw batch, seed and settings."""
    model = build_model(ns["cfg"]).train()
    model.load_state_dict(ns["initial"])
    optimizer = make_optimizer(model, ns["cfg"].train)
    torch.manual_seed(ns["SEED"])
    out = train_step(model, optimizer, ns["raw"], torch.Generator().manual_seed(ns["SEED"]),
                     lr=ns["LR"], tau=ns["TAU"], clip_grad=ns["CLIP"])
    return model, out


def assert_same_step(ns: dict) -> None:
    model, out = package_step(ns)
    assert torch.equal(out.result.mask, ns["mask"])
    assert abs(out.result.loss.item() - ns["loss"].item()) <= 1e-6
    for (name, p), q in zip(ns["model"].named_parameters(), model.parameters()):
        if q.grad is None:
            assert p.grad is None, name
        else:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-6, atol=1e-8, msg=f"gradient of {name}")
    after, expected = ns["model"].state_dict(), model.state_dict()
    assert after.keys() == expected.keys()
    for name in expected:   # the student after AdamW and the teacher after the EMA update
        torch.testing.assert_close(after[name], expected[name], rtol=1e-6, atol=1e-7, msg=name)


def test_the_step_cell_uses_the_models_parts_not_its_step():
    step = cell(STEP)
    assert len(step.splitlines()) <= 35
    for forbidden in ("train_step", "model(", ".forward", "update_teacher", "ema_update", "F.mse_loss"):
        assert forbidden not in step, forbidden


@pytest.mark.parametrize("modality", ["image", "text", "audio"])
def test_the_written_out_step_is_the_packages_step(modality):
    ns = run_notebook_step(modality)
    assert ns["model"].cfg.version == 2 and ns["model"].cfg.num_masks > 1   # multi-mask is exercised
    assert_same_step(ns)


# each replaces one line of the step with a plausible mistake
MISTAKES = {
    "forgets the mask in the loss": ("loss = ((pred[masked] - y[masked]) ** 2).mean()",
                                     "loss = ((pred - y) ** 2).mean()"),
    "uses the top block only as the target": ("d2v.top_k, d2v.target_layer_norm", "1, d2v.target_layer_norm"),
    "uses layer norm instead of instance norm": ("d2v.top_k, d2v.target_layer_norm", 'd2v.top_k, "layer"'),
    "lets the student see the masked tokens": (
        "h = student.encoder(tokens[~mask].view(len(tokens), n_visible, -1)).x",
        "h = student.encoder(tokens).x[~mask].view(len(tokens), n_visible, -1)"),
    "skips the EMA update": ("t.mul_(TAU).add_(s * (1 - TAU))", "pass"),
}


@pytest.mark.parametrize("mistake", MISTAKES)
def test_a_wrong_step_fails_the_comparison(mistake):
    old, new = MISTAKES[mistake]
    step = cell(STEP)
    assert step.count(old) == 1, f"the step cell no longer contains {old!r}; update MISTAKES"
    ns = run_notebook_step("image", step.replace(old, new))
    with pytest.raises(AssertionError):
        assert_same_step(ns)
