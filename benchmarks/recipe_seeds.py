"""Is a recipe change real, or one lucky seed? Pretrain one modality's profile with several seeds
(optionally with ``--set`` overrides), probe each run's main task, and print the accuracy per seed
with its mean and spread next to the random-init and raw-input baselines.

    python benchmarks/recipe_seeds.py --modality audio --seeds 0 1 2 --out runs/seeds/audio
    python benchmarks/recipe_seeds.py --modality audio --seeds 0 1 2 --out runs/seeds/audio_plain \\
        --set data.freq_warp=0 --set data.time_stretch=0

Finished runs in ``OUT/seed<N>`` are reused, so a second call only adds the missing seeds; each gets
its ``probe.json`` (``d2v-lab probe --no-supervised``), and ``OUT/seeds.json`` the summary. At 300
cpu-profile steps the unseen-speaker FSDD probe moves by several points from seed to seed: compare
recipes by their means over seeds, not by one run each.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

from d2v_lab.evaluate.probe import run_probe
from d2v_lab.train.loop import ensure_pretrained
from d2v_lab.train.profiles import get_profile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modality", required=True, choices=("image", "text", "audio"))
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    parser.add_argument("--out", required=True, help="one sub-folder per seed is written here")
    args = parser.parse_args()
    base = get_profile(args.modality, args.profile).with_overrides(args.overrides)
    out = Path(args.out)
    rows = []
    for seed in args.seeds:
        cfg = dataclasses.replace(base, train=dataclasses.replace(base.train, seed=seed))
        tic = time.perf_counter()
        run = ensure_pretrained(cfg, out / f"seed{seed}", progress=False)
        train_s = time.perf_counter() - tic
        probe = run_probe(run, supervised=False, progress=False).main  # also writes the seed's probe.json
        rows.append({"seed": seed, "pretrained": probe.linear.pretrained, "random_init": probe.linear.random_init,
                     "layer": probe.selected["pretrained"]["layer"], "pretrain_s": round(train_s)})
        print(json.dumps(rows[-1]), flush=True)
    raw = probe.linear.raw_input  # the same input and labels for every seed
    (out / "seeds.json").write_text(json.dumps({"overrides": args.overrides, "task": probe.task, "rows": rows,
                                                "raw_input": raw}, indent=2))
    print(f"\n{args.modality} {probe.task} (n_test={probe.n_test}), overrides: {args.overrides or 'none'}")
    print(f"{'seed':>6}{'d2v':>8}{'random':>8}{'layer':>7}  pretraining")
    for r in rows:
        print(f"{r['seed']:>6}{r['pretrained']:>8.1%}{r['random_init']:>8.1%}{r['layer']:>7}  "
              f"{r['pretrain_s']} s (reused = ~0 s)")
    for key in ("pretrained", "random_init"):
        values = [r[key] for r in rows]
        spread = f"{statistics.stdev(values):.1%}" if len(values) > 1 else "n/a (one seed)"
        print(f"{key:>12}: mean {statistics.mean(values):.1%}, sd over seeds {spread}")
    print(f"{'raw_input':>12}: {raw:.1%}")


if __name__ == "__main__":
    main()
