"""Small, fast experiments the notebooks and widgets run: what the EMA decay and K do to the targets.

They use the real training loop (``train.pretrain``) on a ``ci``-sized model for a few dozen steps,
so what a learner sees is what full training does, only shorter.
"""
from __future__ import annotations

import dataclasses
import tempfile

import torch

from d2v_lab.model.targets import normalise
from d2v_lab.train.inputs import PretrainData, pretraining_data
from d2v_lab.train.loop import pretrain
from d2v_lab.train.profiles import get_profile


def demo_config(modality: str = "image", tau: float = 0.99, top_k: int = 2, steps: int = 30,
                profile: str = "ci", seed: int = 0):
    """The ``profile`` config with a CONSTANT EMA decay ``tau``, top-``top_k`` targets, ``steps`` updates,
    and the collapse guard off (the demos want to show collapse, not stop at it)."""
    cfg = get_profile(modality, profile)
    d2v = dataclasses.replace(cfg.d2v, tau0=tau, tau_end=tau, tau_ramp_steps=0, top_k=top_k)
    train = dataclasses.replace(cfg.train, steps=steps, warmup_steps=min(cfg.train.warmup_steps, steps),
                                eval_every=0, log_every=1, checkpoint_every=steps, min_target_std=0.0, seed=seed)
    return dataclasses.replace(cfg, d2v=d2v, train=train)


def teacher_dynamics(modality: str = "image", tau: float = 0.99, top_k: int = 2, steps: int = 30,
                     profile: str = "ci", seed: int = 0, data: PretrainData | None = None, root=None) -> dict:
    """Train briefly with a constant tau and record, per update: the training loss, the targets' std
    across positions on a FIXED held-out batch, and how far those targets moved since the previous
    update (relative L2 change). tau = 0 makes the teacher a copy of the student (targets jump);
    tau -> 1 freezes it (targets never move, the student chases a random network's features)."""
    cfg = demo_config(modality, tau, top_k, steps, profile, seed)
    data = data or pretraining_data(cfg, root, progress=False)
    fixed = data.heldout[:64]
    curves = {"step": [], "loss": [], "target_std": [], "target_drift": []}
    previous = {}

    def record(step, model, output):
        y = model.targets(fixed)
        drift = float((y - previous["y"]).norm() / previous["y"].norm()) if "y" in previous else float("nan")
        previous["y"] = y
        curves["step"].append(step)
        curves["loss"].append(output.loss.item())
        curves["target_std"].append(float(y.flatten(0, 1).std(0).mean()))
        curves["target_drift"].append(drift)

    with tempfile.TemporaryDirectory() as tmp:
        pretrain(cfg, tmp, data=data, progress=False, callback=record)
    return {"tau": tau, "top_k": top_k, "modality": modality, **curves}


@torch.no_grad()
def layer_target_stats(model, x: torch.Tensor, how: str = "instance") -> list[dict]:
    """Why targets normalise each block before averaging: per block, the scale of its raw FFN output
    and of its normalised version. Raw scales differ by layer, so a plain average would be dominated by
    the loudest blocks; parameter-free normalisation gives each of the top K an equal vote."""
    out = model.teacher(x, return_layers=True)
    stats = []
    for i, a in enumerate(out.ffn, start=1):
        n = normalise(a.float(), how)
        stats.append({"block": i, "raw_std": float(a.float().std()), "raw_rms": float(a.float().pow(2).mean().sqrt()),
                      "normalised_std": float(n.std())})
    return stats
