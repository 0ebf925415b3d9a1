"""The probe targets of the cpu profile, measured: pretrain each modality (or reuse a finished run),
probe it against its baselines, and print time and margins.

    python benchmarks/probe_targets.py [--profile cpu] [--out runs/cpu]

Targets (issue "Linear probes"): after cpu-profile pretraining (<= 10 min per modality),
  CIFAR-10 linear probe >= 10 points above BOTH random-init and raw-pixel baselines;
  FSDD digits (unseen speaker) >= 10 points above both baselines;
  TinyStories concept probe clearly above chance and above random init.
"""
from __future__ import annotations

import argparse
import time

from d2v_lab.evaluate.probe import cached_probe
from d2v_lab.train.config import MODALITIES
from d2v_lab.train.loop import ensure_pretrained
from d2v_lab.train.profiles import get_profile
from d2v_lab.train.runs import default_runs_dir

MARGIN = {"image": 0.10, "audio": 0.10, "text": 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    out = default_runs_dir(args.profile) if args.out is None else args.out
    rows = []
    for modality in MODALITIES:
        cfg = get_profile(modality, args.profile)
        tic = time.perf_counter()
        run = ensure_pretrained(cfg, f"{out}/{modality}")
        train_s = time.perf_counter() - tic
        tic = time.perf_counter()
        r = cached_probe(run).main
        rows.append((modality, r, train_s, time.perf_counter() - tic))
    print(f"\n{'modality':<8}{'task':<22}{'chance':>8}{'d2v':>8}{'random':>8}{'raw':>8}{'superv.':>8}"
          f"{'margin':>8}{'target':>8}  time (pretrain reused = ~0 s)")
    for modality, r, train_s, probe_s in rows:
        lin = r.linear
        margin = lin.pretrained - max(lin.random_init, lin.raw_input if modality != "text" else 0)
        ok = margin >= MARGIN[modality] and (modality != "text" or lin.pretrained > 1.5 * r.chance)
        sup = r.supervised_accuracy
        print(f"{modality:<8}{r.task:<22}{r.chance:>8.1%}{lin.pretrained:>8.1%}{lin.random_init:>8.1%}"
              f"{lin.raw_input:>8.1%}{'n/a' if sup is None else f'{sup:.1%}':>8}{100 * margin:>+7.1f}p"
              f"{'met' if ok else 'MISSED':>8}  pretrain {train_s:.0f} s, probe {probe_s:.0f} s")


if __name__ == "__main__":
    main()
