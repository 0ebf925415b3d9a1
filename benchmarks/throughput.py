"""Training throughput per modality, data2vec 1.0 vs 2.0: samples/s, model FLOP/s and the ratio to
this machine's matmul peak, measured in the same run.

    python benchmarks/throughput.py [--profile cpu] [--steps 6] [--precision fp32|bf16|both]

FLOPs are counted by torch.utils.flop_counter on one real training step (forward, backward, teacher
pass), so "model FLOP/s" = counted FLOPs / measured step time, and MFU = that / the peak of a large
square matmul timed here (the best this machine's BLAS does).
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from d2v_lab.train.checkpoint import build_model
from d2v_lab.train.config import MODALITIES
from d2v_lab.train.device import tune_malloc
from d2v_lab.train.inputs import synthetic_batch
from d2v_lab.train.profiles import get_profile


def matmul_peak(dtype=torch.float32, n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b  # warm-up
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best


def _timed(fn) -> float:
    tic = time.perf_counter()
    fn()
    return time.perf_counter() - tic


def measure(cfg, steps: int, bf16: bool) -> dict:
    torch.manual_seed(0)
    model = build_model(cfg).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    x = synthetic_batch(cfg, cfg.train.batch_size)
    g = torch.Generator().manual_seed(0)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(model.student.adapter.augment(x, g), g)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        model.update_teacher(0.999)

    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    times = [_timed(step) for _ in range(steps)]
    t = statistics.median(times[1:])
    return {"step_s": t, "samples_per_s": cfg.train.batch_size / t, "flops_per_step": flops, "flop_per_s": flops / t}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--precision", choices=("fp32", "bf16", "both"), default="both")
    args = parser.parse_args()
    tune_malloc()
    peaks = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    print(f"threads: {torch.get_num_threads()}  matmul peak: fp32 {peaks['fp32'] / 1e9:.0f} GFLOP/s, "
          f"bf16 {peaks['bf16'] / 1e9:.0f} GFLOP/s (2048^2, best of 5)")
    print(f"{'modality':<9}{'recipe':<9}{'prec':<6}{'batch':>6}{'ms/step':>9}{'samples/s':>11}{'views/s':>9}"
          f"{'GFLOP/step':>12}{'GFLOP/s':>9}{'MFU':>7}")
    print("(views/s = samples/s x M masked copies: 2.0 M=1 vs 1.0 isolates the visible-only student)")
    precisions = ["fp32", "bf16"] if args.precision == "both" else [args.precision]
    for modality in MODALITIES:
        for version, masks in ((1, 1), (2, 1), (2, None)):
            cfg = get_profile(modality, args.profile, version)
            m = masks or cfg.d2v.num_masks
            cfg = dataclasses.replace(cfg, d2v=dataclasses.replace(cfg.d2v, num_masks=m))
            for prec in precisions:
                r = measure(cfg, args.steps, prec == "bf16")
                recipe = f"{version}.0" + (f" M={m}" if version == 2 else "")
                print(f"{modality:<9}{recipe:<9}{prec:<6}{cfg.train.batch_size:>6}{1000 * r['step_s']:>9.0f}"
                      f"{r['samples_per_s']:>11.1f}{m * r['samples_per_s']:>9.1f}"
                      f"{r['flops_per_step'] / 1e9:>12.1f}{r['flop_per_s'] / 1e9:>9.1f}"
                      f"{r['flop_per_s'] / peaks[prec]:>7.1%}", flush=True)


if __name__ == "__main__":
    main()
