"""Small, fast experiments the notebooks, widgets and the tour run: example masks, and what the EMA decay
and K do to the targets.

They use the real training loop (``train.pretrain``) on a ``ci``-sized model for a few dozen steps,
so what a learner sees is what full training does, only shorter.
"""
from __future__ import annotations

import dataclasses
import tempfile

import torch

from d2v_lab.model.masking import MaskConfig, sample_mask
from d2v_lab.model.targets import normalise
from d2v_lab.train.inputs import PretrainData, pretraining_data
from d2v_lab.train.loop import pretrain
from d2v_lab.train.profiles import get_profile

from .plots import plot_masks


def example_masks(text_len: int, image_kind: str = "block", ratio: float = 0.6, block: int = 3, span: int = 10,
                  text_ratio: float = 0.15, seed: int = 0) -> dict[str, torch.Tensor]:
    """One mask per modality at the tokenisation the models use: an 8x8 image grid, 50 audio tokens
    and ``text_len`` text tokens whose first ([CLS]) is never masked."""
    g = torch.Generator().manual_seed(seed)
    image_cfg = MaskConfig(image_kind, ratio, min_block=block, block=block)
    return {"image": sample_mask(image_cfg, 1, 64, (8, 8), generator=g)[0],
            "audio": sample_mask(MaskConfig("span", ratio, span=span), 1, 50, generator=g)[0],
            "text": sample_mask(MaskConfig("random", text_ratio), 1, text_len, prefix=1, generator=g)[0]}


def draw_masks(samples: dict, image_kind: str = "block", ratio: float = 0.6, block: int = 3,
               span: int = 10, text_ratio: float = 0.15, seed: int = 0):
    """``example_masks`` for ``samples`` (see ``plots.plot_masks``) and their figure: (figure, masks)."""
    masks = example_masks(len(samples["text"][0]), image_kind, ratio, block, span, text_ratio, seed)
    return plot_masks(samples, masks, ratio, text_ratio), masks


def demo_config(modality: str = "image", tau: float = 0.99, top_k: int = 2, steps: int = 30,
                profile: str = "ci", seed: int = 0):
    """The ``profile`` config with a CONSTANT EMA decay ``tau``, top-``top_k`` targets, ``steps`` updates,
    and the collapse guard off (the demos want to show collapse, not stop at it)."""
    cfg = get_profile(modality, profile)
    d2v = dataclasses.replace(cfg.d2v, tau0=tau, tau_end=tau, tau_ramp_steps=0, tau_init_share=0.0, top_k=top_k)
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
