"""Small, fast experiments the notebooks, widgets and the tour run: example masks, what the EMA decay
and K do to the teacher and its targets, and targets that collapse.

They use the real training loop (``train.pretrain``) on a ``ci``-sized model for up to a hundred
updates, so what a learner sees is what full training does, only shorter.
"""
from __future__ import annotations

import dataclasses
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from d2v_lab.evaluate.features import layer_features
from d2v_lab.evaluate.probe import knn_accuracy
from d2v_lab.model.masking import MaskConfig, sample_mask
from d2v_lab.model.targets import normalise
from d2v_lab.train.inputs import PretrainData, image_inputs, pretraining_data
from d2v_lab.train.loop import TrainingStopped, pretrain
from d2v_lab.train.profiles import get_profile
from d2v_lab.train.runs import read_metrics

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


# The loop's lr_at (train/loop.py) warms up, then decays the rate to 0 at train.steps by a cosine.
# A demo that compares decays needs the student to move at the same pace for all of its steps: with
# the cosine every teacher freezes near the end because the student does, and the curves show the
# schedule rather than tau. So a demo run is configured this many steps long, without warm-up, and
# stopped after the demo's steps (pretrain's stop_after): over the first 500 updates the cosine has
# not left train.lr (relative change < 1e-12). A constant-rate option in lr_at would say it directly.
CONSTANT_LR_HORIZON = 10**9
# Decays whose memory 1/(1 - tau) spans the demo window of ~80 updates: the teacher copies the
# student (memory 1), remembers 10 or 50 updates, or never moves (memory infinite).
DEMO_TAUS = (0.0, 0.9, 0.98, 1.0)


def memory(tau: float) -> float:
    """How many recent student states an EMA with decay tau averages, roughly: 1 / (1 - tau)."""
    return math.inf if tau >= 1.0 else 1.0 / (1.0 - tau)


def demo_config(modality: str = "image", tau: float = 0.98, top_k: int = 2, profile: str = "ci", seed: int = 0,
                lr: float | None = None, target_norm: str | None = None, min_target_std: float = 0.0):
    """The ``profile`` config of a demo run: a CONSTANT EMA decay ``tau`` (no ramp), top-``top_k``
    targets, a CONSTANT learning rate ``lr`` (default: the profile's; see ``CONSTANT_LR_HORIZON``) and
    the collapse guard at ``min_target_std`` (0 = off). ``target_norm``: None keeps the profile's
    targets (data2vec 2.0: instance norm of each block); "layer" normalises each block per token
    over its channels and leaves the average alone, which lets the targets collapse (see
    ``collapse_demo``)."""
    cfg = get_profile(modality, profile)
    norms = {} if target_norm is None else {"target_layer_norm": target_norm, "target_final_norm": "none"}
    d2v = dataclasses.replace(cfg.d2v, tau0=tau, tau_end=tau, tau_ramp_steps=0, tau_init_share=0.0,
                              top_k=top_k, **norms)
    train = dataclasses.replace(cfg.train, steps=CONSTANT_LR_HORIZON, warmup_steps=0, lr=lr or cfg.train.lr,
                                eval_every=0, log_every=1, checkpoint_every=CONSTANT_LR_HORIZON,
                                min_target_std=min_target_std, seed=seed)
    return dataclasses.replace(cfg, d2v=d2v, train=train)


@dataclass(frozen=True)
class KnnProbe:
    """A small labelled set for a k-NN probe of features: each ``test`` sample gets the majority label
    of its ``k`` nearest ``memory`` samples (cosine similarity of the mean-pooled last block)."""
    x_memory: torch.Tensor
    y_memory: np.ndarray
    x_test: torch.Tensor
    y_test: np.ndarray
    k: int = 10

    def accuracy(self, backbone) -> float:
        device = next(backbone.parameters()).device
        memory_features = layer_features(backbone, self.x_memory, device=device)["mean"][-1]
        test_features = layer_features(backbone, self.x_test, device=device)["mean"][-1]
        return knn_accuracy(memory_features, self.y_memory, test_features, self.y_test, self.k)


def cifar_probe(root=None, n_memory: int = 2000, n_test: int = 1000, k: int = 10) -> KnnProbe:
    """The last ``n_memory`` CIFAR-10 training images as the memory and the last ``n_test`` test images
    to classify: none of them is one the ci demo pretrains on (the first 512 training images) or whose
    targets it watches (the first 64 test images), as long as the splits are large enough."""
    x_train, y_train = image_inputs("train", root)
    x_test, y_test = image_inputs("test", root)
    return KnnProbe(x_train[-n_memory:], y_train[-n_memory:], x_test[-n_test:], y_test[-n_test:], k)


def _flat(module) -> torch.Tensor:
    return torch.cat([p.detach().float().flatten().cpu() for p in module.parameters()])


def teacher_dynamics(modality: str = "image", tau: float = 0.98, top_k: int = 2, steps: int = 80,
                     profile: str = "ci", seed: int = 0, lr: float | None = None, target_norm: str | None = None,
                     min_target_std: float = 0.0, data: PretrainData | None = None, root=None,
                     probe: KnnProbe | None = None) -> dict:
    """Train ``steps`` updates with a constant tau and a constant learning rate (``demo_config``) and
    record after every update:

    - ``loss``: the training loss, and ``lr`` as the loop logged it;
    - ``target_std``: the targets' std across the batch's masked positions, the number the collapse
      guard watches (``train.min_target_std``);
    - ``target_drift``: how far the targets of a FIXED held-out batch moved in this update (relative
      L2 change; the first update compares with the initial teacher's targets);
    - ``teacher_distance`` / ``student_distance``: how far the weights are from the initial ones
      (relative L2 distance of all parameters; both start as the same weights). A teacher with
      tau = 1 stays exactly at 0; the lower tau, the closer it follows the student.

    With ``probe``, the k-NN accuracy of the final teacher, the final student and the initial weights
    (``knn_teacher``, ``knn_student``, ``knn_initial``, over ``knn_n_test`` test samples). With
    ``min_target_std`` > 0 the guard is on: a run it stops ends early and ``stopped`` holds the
    guard's message (else None)."""
    cfg = demo_config(modality, tau, top_k, profile, seed, lr, target_norm, min_target_std)
    data = data or pretraining_data(cfg, root, progress=False)
    curves = {k: [] for k in ("step", "loss", "target_std", "target_drift", "teacher_distance", "student_distance")}
    last = {}
    with tempfile.TemporaryDirectory() as tmp:
        # the loop's own initial weights: a run stopped after 0 updates builds them and returns
        initial = pretrain(cfg, Path(tmp) / "initial", data=data, progress=False, stop_after=0).model
        fixed = data.heldout[:64].to(next(initial.parameters()).device)
        start = _flat(initial.teacher)          # the student starts as the same weights
        previous = initial.targets(fixed)

        def record(step, model, output):
            nonlocal previous
            y = model.targets(fixed)
            curves["step"].append(step)
            curves["loss"].append(output.loss.item())
            curves["target_std"].append(output.target_std)
            curves["target_drift"].append(float((y - previous).norm() / previous.norm()))
            curves["teacher_distance"].append(float((_flat(model.teacher) - start).norm() / start.norm()))
            curves["student_distance"].append(float((_flat(model.student) - start).norm() / start.norm()))
            previous, last["model"] = y, model

        stopped = None
        try:
            pretrain(cfg, Path(tmp) / "run", data=data, progress=False, stop_after=steps, callback=record)
        except TrainingStopped as stop:
            stopped = str(stop)
        curves["lr"] = [row["lr"] for row in read_metrics(Path(tmp) / "run")]
    result = {"modality": modality, "tau": tau, "memory": memory(tau), "top_k": top_k, "target_norm": target_norm,
              "min_target_std": min_target_std, "stopped": stopped, **curves}
    if probe is not None:
        model = last["model"].eval()
        result.update(knn_teacher=probe.accuracy(model.teacher), knn_student=probe.accuracy(model.student),
                      knn_initial=probe.accuracy(initial.teacher), knn_n_test=len(probe.y_test))
    return result


def collapse_demo(tau: float = 0.0, steps: int = 80, target_norm: str = "layer", lr: float | None = None,
                  min_target_std: float | None = None, data: PretrainData | None = None, root=None,
                  probe: KnnProbe | None = None) -> dict:
    """Targets that collapse, run twice from the same start: once with the collapse guard ON at the
    profile's threshold (``train.min_target_std``, fairseq's 0.1), which stops the run, and once with
    it off, to see what the guard prevented. Returns {"guarded": ..., "unguarded": ...}, two
    ``teacher_dynamics`` results; the guarded one's ``stopped`` is the guard's message.

    Why these targets collapse: per-token layer norm standardises each token over its channels, so a
    target that is the SAME vector at every position is a perfectly normal layer-normed target. With
    tau = 0 the teacher is the student, so the student can lower its loss by making its own outputs
    alike everywhere, and every update does a bit of that; the loss falls towards 0 while the targets'
    spread across positions does too. Instance norm (data2vec 2.0) standardises each channel ACROSS
    the positions of a sample, which rescales a shrinking spread back to 1: those targets cannot
    become constant (the tau demo's target std stays at ~1)."""
    threshold = get_profile("image", "ci").train.min_target_std if min_target_std is None else min_target_std
    data = data or pretraining_data(demo_config("image"), root, progress=False)
    kwargs = dict(tau=tau, steps=steps, lr=lr, target_norm=target_norm, data=data)
    return {"guarded": teacher_dynamics(min_target_std=threshold, **kwargs),
            "unguarded": {**teacher_dynamics(probe=probe, **kwargs), "min_target_std": threshold}}


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
