"""Check and time the GPU paths of each modality's model: bf16 autocast, SDPA's flash-attention kernel
and torch.compile (what the gpu profile turns on), on one synthetic batch of the profile's size.

    python benchmarks/gpu_check.py [--profile gpu] [--steps 20] [--no-compile] [--json FILE]

Per modality it prints
  bf16 vs fp32  the loss and the targets under bf16 autocast against fp32, same weights, batch and masks
                (relative differences: bf16 keeps ~3 significant digits, so ~1e-2 is expected);
  flash         whether one training step runs with SDPA restricted to the flash kernel (if our shapes
                or dtypes did not allow it, SDPA would silently fall back to a slower kernel);
  eager / compiled  median step time, samples/s and MFU (the compile time of the first steps apart;
                each modality compiles afresh, as it would in its own pretraining process);
  mask / prep / outside  host time per step sampling the B*M masks, preparing the inputs
                outside the model (augmentation, copies to the device, mask sampling), and the share of
                the whole step that preparation takes: work the GPU waits for;
  ema           the time of one teacher (EMA) update, part of every step.
The step is d2v_lab.train.loop.train_step, the one pretraining takes. MFU = FLOPs of one step (counted by
torch.utils.flop_counter: forward, backward, teacher pass) / median step time / the matmul peak of this
device at the run's precision, measured at the start of the run (bf16 on a recent GPU).
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
from torch.utils.flop_counter import FlopCounterMode

from d2v_lab.train.checkpoint import build_model
from d2v_lab.train.config import MODALITIES
from d2v_lab.train.device import autocast_for, matmul_peak, pick_device, resolve_precision, synchronize
from d2v_lab.train.inputs import synthetic_batch
from d2v_lab.train.loop import TrainingStopped, make_optimizer, time_train_steps, train_step
from d2v_lab.train.profiles import get_profile


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


def make_step(model, optimizer, x, cfg, precision: str, device):
    """The training step pretraining takes (train_step), with this batch and fixed settings bound."""
    autocast = autocast_for(precision, device.type)
    g = torch.Generator().manual_seed(1)
    return lambda: train_step(model, optimizer, x, g, lr=cfg.train.lr, tau=cfg.d2v.tau0,
                              clip_grad=cfg.train.clip_grad, autocast=autocast)


def timed(fn, device) -> float:
    synchronize(device)
    tic = time.perf_counter()
    fn()
    synchronize(device)
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
                   precision: str, peak: float) -> dict:
    cfg = get_profile(modality, profile)
    torch.manual_seed(0)
    model = build_model(cfg).to(device).train()
    x = synthetic_batch(cfg, cfg.train.batch_size)     # on the CPU, as the data is: the step copies it over
    B = cfg.train.batch_size
    row = {"modality": modality, "profile": profile, "batch": B, "num_masks": cfg.d2v.num_masks,
           "params_M": sum(p.numel() for p in model.student.parameters()) / 1e6}
    row.update(bf16_vs_fp32(model, x.to(device), device))
    optimizer = make_optimizer(model, cfg.train)
    step = make_step(model, optimizer, x, cfg, precision, device)
    row["flash"] = flash_step(step, device)
    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    eager = time_train_steps(step, steps, device)      # its first (untimed) step warms the kernels up
    ema = [timed(lambda: model.update_teacher(0.999), device) for _ in range(steps)]
    row.update(GFLOP_per_step=flops / 1e9, eager_ms=1e3 * eager["step_s"], ema_ms=1e3 * statistics.median(ema),
               mask_ms=1e3 * eager["mask_s"], prep_ms=1e3 * eager["prep_s"], outside_share=eager["outside_share"])
    row["eager_samples_per_s"] = B / eager["step_s"]
    row["eager_mfu"] = flops / eager["step_s"] / peak
    if compile:
        model.student.encoder.compile()   # exactly what pretrain() compiles
        model.teacher.encoder.compile()
        first = [timed(step, device) for _ in range(3)]             # compiles (train and teacher graphs)
        compiled = time_train_steps(step, steps, device)
        row.update(compile_s=sum(first), compiled_ms=1e3 * compiled["step_s"],
                   compiled_outside_share=compiled["outside_share"])
        row["compiled_samples_per_s"] = B / compiled["step_s"]
        row["compiled_mfu"] = flops / compiled["step_s"] / peak
    try:
        row["loss_finite"] = bool(torch.isfinite(step().result.loss.detach()))
    except TrainingStopped:   # the step refuses a non-finite loss or gradient
        row["loss_finite"] = False
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
    # MFU is against the peak of the precision the steps run in ("auto": bf16 on a recent GPU)
    peak_precision = resolve_precision(args.precision, device.type)
    peak = matmul_peak(device, torch.bfloat16 if peak_precision == "bf16" else torch.float32)
    print(f"torch {torch.__version__} on {name}; precision {args.precision}; "
          f"matmul peak {peak / 1e12:.2f} TFLOP/s ({peak_precision}, best of 5)")
    rows = []
    for modality in args.modalities:
        torch._dynamo.reset()  # each modality compiles from scratch, as in its own pretraining process
        row = check_modality(modality, args.profile, device, args.steps, args.compile, args.precision, peak)
        rows.append(row)
        print(json.dumps({k: round(v, 5) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": name, "torch": torch.__version__, "peak_precision": peak_precision,
                       "peak_flop_per_s": peak, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
