"""Training throughput per modality, data2vec 1.0 vs 2.0: samples/s, the time spent outside the model,
model FLOP/s and the ratio to this machine's matmul peak, measured in the same run.

    python benchmarks/throughput.py [--profile cpu] [--steps 6] [--precision fp32|bf16|both]
                                  [--modalities ...] [--json FILE]

The step timed is d2v_lab.train.loop.train_step, the one pretraining takes (augmentation, mask sampling,
forward, backward, clipping, AdamW with its decay groups, EMA update). Columns:
  mask ms   host time per step sampling the masks of the B*M masked copies;
  outside   share of the step spent preparing the model's inputs outside it (augmentation, mask
            sampling, copies), summed over the timed steps;
  MFU       model FLOP/s / the peak of a large square matmul timed here (the best this machine's BLAS
            does), where FLOPs are counted by torch.utils.flop_counter on one real training step
            (forward, backward, teacher pass). On the CPU the counter has no formula for SDPA's CPU
            kernel, so attention FLOPs are left out there and the CPU MFU is a lower bound.
"""
from __future__ import annotations

import argparse
import dataclasses
import json

import torch
from torch.utils.flop_counter import FlopCounterMode

from d2v_lab.train.checkpoint import build_model
from d2v_lab.train.config import MODALITIES
from d2v_lab.train.device import autocast_for, matmul_peak, tune_malloc
from d2v_lab.train.inputs import synthetic_batch
from d2v_lab.train.loop import make_optimizer, time_train_steps, train_step
from d2v_lab.train.profiles import get_profile

CPU = torch.device("cpu")


def measure(cfg, steps: int, precision: str) -> dict:
    torch.manual_seed(0)
    model = build_model(cfg).train()
    optimizer = make_optimizer(model, cfg.train)
    x = synthetic_batch(cfg, cfg.train.batch_size)
    g = torch.Generator().manual_seed(0)
    autocast = autocast_for(precision, CPU.type)

    def step():
        return train_step(model, optimizer, x, g, lr=cfg.train.lr, tau=cfg.d2v.tau0,
                          clip_grad=cfg.train.clip_grad, autocast=autocast)

    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    r = time_train_steps(step, steps, CPU)
    return {**r, "samples_per_s": cfg.train.batch_size / r["step_s"], "flops_per_step": flops,
            "flop_per_s": flops / r["step_s"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--precision", choices=("fp32", "bf16", "both"), default="both")
    parser.add_argument("--modalities", nargs="+", default=list(MODALITIES), choices=MODALITIES)
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    tune_malloc()
    precisions = ["fp32", "bf16"] if args.precision == "both" else [args.precision]
    peaks = {p: matmul_peak(CPU, torch.bfloat16 if p == "bf16" else torch.float32) for p in precisions}
    print(f"threads: {torch.get_num_threads()}  matmul peak: "
          + ", ".join(f"{p} {peak / 1e9:.0f} GFLOP/s" for p, peak in peaks.items()) + " (2048^2, best of 5)")
    print(f"{'modality':<9}{'recipe':<9}{'prec':<6}{'batch':>6}{'ms/step':>9}{'mask ms':>9}{'outside':>9}"
          f"{'samples/s':>11}{'views/s':>9}{'GFLOP/step':>12}{'GFLOP/s':>9}{'MFU':>7}")
    print("(views/s = samples/s x M masked copies: 2.0 M=1 vs 1.0 isolates the visible-only student)")
    rows = []
    for modality in args.modalities:
        for version, masks in ((1, 1), (2, 1), (2, None)):
            cfg = get_profile(modality, args.profile, version)
            m = masks or cfg.d2v.num_masks
            cfg = dataclasses.replace(cfg, d2v=dataclasses.replace(cfg.d2v, num_masks=m))
            for prec in precisions:
                r = measure(cfg, args.steps, prec)
                r["mfu"] = r["flop_per_s"] / peaks[prec]
                rows.append({"modality": modality, "version": version, "num_masks": m, "precision": prec,
                             "batch": cfg.train.batch_size, **r})
                recipe = f"{version}.0" + (f" M={m}" if version == 2 else "")
                print(f"{modality:<9}{recipe:<9}{prec:<6}{cfg.train.batch_size:>6}{1000 * r['step_s']:>9.0f}"
                      f"{1000 * r['mask_s']:>9.2f}{r['outside_share']:>9.1%}"
                      f"{r['samples_per_s']:>11.1f}{m * r['samples_per_s']:>9.1f}"
                      f"{r['flops_per_step'] / 1e9:>12.1f}{r['flop_per_s'] / 1e9:>9.1f}"
                      f"{r['mfu']:>7.1%}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"profile": args.profile, "threads": torch.get_num_threads(), "peak_flop_per_s": peaks,
                       "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
