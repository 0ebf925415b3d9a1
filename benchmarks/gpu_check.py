"""Check and time the GPU paths of each modality's model: bf16 autocast, SDPA's flash-attention kernel
and torch.compile (what the gpu profile turns on), on one synthetic batch of the profile's size.

    python benchmarks/gpu_check.py [--profile gpu] [--steps 20] [--no-compile] [--json FILE]

Per modality it prints
  bf16 vs fp32  the loss and the targets under bf16 autocast against fp32, same weights, batch and masks
                (relative differences: bf16 keeps ~3 significant digits, so ~1e-2 is expected);
  flash         whether one training step runs with SDPA restricted to the flash kernel (if our shapes
                or dtypes did not allow it, SDPA would silently fall back to a slower kernel);
  eager / compiled  median step time and samples/s (the compile time of the first steps apart;
                each modality compiles afresh, as it would in its own pretraining process);
  ema           the time of one teacher (EMA) update, part of every step.
It runs on a CPU too (``--device cpu``), which is how the tests keep it working; its numbers mean
something on the GPU it is meant for.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from d2v_lab.train.checkpoint import build_model
from d2v_lab.train.config import MODALITIES
from d2v_lab.train.device import autocast_for, pick_device
from d2v_lab.train.inputs import synthetic_batch
from d2v_lab.train.loop import make_optimizer
from d2v_lab.train.profiles import get_profile


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def _loss_and_targets(model, x, precision: str, device) -> tuple[float, torch.Tensor]:
    """The loss of one fixed (seeded) masking of x, and the teacher's targets, at ``precision``."""
    torch.manual_seed(0)  # the decoder's noise
    with autocast_for(precision, device.type)():
        out = model(x, torch.Generator().manual_seed(0))
        targets = model.targets(x)
    return float(out.loss), targets.float()


def bf16_vs_fp32(model, x, device) -> dict:
    loss32, t32 = _loss_and_targets(model, x, "fp32", device)
    loss16, t16 = _loss_and_targets(model, x, "bf16", device)
    return {"loss_fp32": loss32, "loss_bf16": loss16, "loss_rel_diff": abs(loss16 - loss32) / abs(loss32),
            "targets_rel_err": float((t16 - t32).norm() / t32.norm())}


def make_step(model, optimizer, x, precision: str, device):
    """One training step as ``train.py`` takes it (forward, backward, clip, AdamW, EMA update)."""
    autocast = autocast_for(precision, device.type)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    g = torch.Generator().manual_seed(1)

    def step() -> torch.Tensor:  # the step's loss
        with autocast():
            out = model(x, g)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        model.update_teacher(0.999)
        return out.loss
    return step


def timed(fn, device) -> float:
    _sync(device)
    tic = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - tic


def flash_step(step, device) -> str:
    """'ok' when a full step runs with SDPA limited to the flash kernel, else the reason it cannot."""
    try:
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            timed(step, device)
        return "ok"
    except RuntimeError as e:  # "No available kernel" when flash cannot take these inputs
        return f"unavailable: {str(e).splitlines()[0][:160]}"


def check_modality(modality: str, profile: str, device: torch.device, steps: int, compile: bool,
                   precision: str) -> dict:
    cfg = get_profile(modality, profile)
    torch.manual_seed(0)
    model = build_model(cfg).to(device).train()
    x = synthetic_batch(cfg, cfg.train.batch_size).to(device)
    row = {"modality": modality, "profile": profile, "batch": cfg.train.batch_size, "num_masks": cfg.d2v.num_masks,
           "params_M": sum(p.numel() for p in model.student.parameters()) / 1e6}
    row.update(bf16_vs_fp32(model, x, device))
    optimizer = make_optimizer(model, cfg.train)
    step = make_step(model, optimizer, x, precision, device)
    row["flash"] = flash_step(step, device)
    eager = [timed(step, device) for _ in range(steps + 1)][1:]   # the first step warms the kernels up
    ema = [timed(lambda: model.update_teacher(0.999), device) for _ in range(steps)]
    row.update(eager_ms=1e3 * statistics.median(eager), ema_ms=1e3 * statistics.median(ema))
    row["eager_samples_per_s"] = cfg.train.batch_size / (row["eager_ms"] / 1e3)
    if compile:
        model.student.encoder.compile()   # exactly what pretrain() compiles
        model.teacher.encoder.compile()
        first = [timed(step, device) for _ in range(3)]             # compiles (train and teacher graphs)
        compiled = [timed(step, device) for _ in range(steps)]
        row.update(compile_s=sum(first), compiled_ms=1e3 * statistics.median(compiled))
        row["compiled_samples_per_s"] = cfg.train.batch_size / (row["compiled_ms"] / 1e3)
    row["loss_finite"] = bool(torch.isfinite(step().detach()))
    if device.type == "cuda":
        row["max_memory_GiB"] = torch.cuda.max_memory_allocated(device) / 2**30
        torch.cuda.reset_peak_memory_stats(device)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="gpu")
    parser.add_argument("--modalities", nargs="+", default=list(MODALITIES), choices=MODALITIES)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--no-compile", dest="compile", action="store_false")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    device = pick_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"torch {torch.__version__} on {name}; precision {args.precision}")
    rows = []
    for modality in args.modalities:
        torch._dynamo.reset()  # each modality compiles from scratch, as in its own pretraining process
        row = check_modality(modality, args.profile, device, args.steps, args.compile, args.precision)
        rows.append(row)
        print(json.dumps({k: round(v, 5) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": name, "torch": torch.__version__, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
