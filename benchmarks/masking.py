"""Mask sampling time per call: the per-row host loops that d2v_lab used to run (tests/model/reference_masking.py)
against the batched samplers of d2v_lab.model.masking, at the masking of each paper (train/profiles.py
``paper_masking``) and our token counts, on the CPU and, where there is one, on the GPU.

    python benchmarks/masking.py [--rows 2048] [--repeats 7] [--threads 1]

Each time is the best of ``--repeats`` calls after one warm-up call: the best is the cost of the code,
the others add whatever else the machine was doing (the rationale of Python's timeit). The CPU runs one
thread unless told otherwise: masks are small tensors, and with several threads every operation waits
for its slowest thread, so on a shared machine the times measure the neighbours rather than the code.
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import torch

from d2v_lab.model.masking import sample_mask
from d2v_lab.train.profiles import paper_masking

REFERENCE = Path(__file__).resolve().parents[1] / "tests" / "model" / "reference_masking.py"

# (case, modality, paper version, tokens, grid of the maskable tokens, never-masked prefix): the tokens
# of our adapters (8x8 image patches, 50 audio frames, 64 text tokens with [CLS] first)
CASES = [
    ("image block (1.0)", "image", 1, 64, (8, 8), 0),
    ("image inverse_block (2.0)", "image", 2, 64, (8, 8), 0),
    ("audio span (1.0)", "audio", 1, 50, None, 0),
    ("audio span (2.0)", "audio", 2, 50, None, 0),
    ("text random (1.0)", "text", 1, 64, None, 1),
    ("text random (2.0)", "text", 2, 64, None, 1),
]


def load_reference():
    """tests/model/reference_masking.py as a module, by file path (tests/ is no package). It is registered in
    sys.modules before it runs because its dataclass looks its own module up there."""
    spec = importlib.util.spec_from_file_location("reference_masking", REFERENCE)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)
    spec.loader.exec_module(module)
    return module


def best_time(fn, repeats: int, sync=lambda: None) -> float:
    """Seconds per call: the best of ``repeats`` after a warm-up call."""
    fn()
    sync()
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - tic)
    return min(times)


def measure(rows: int, repeats: int) -> list[dict]:
    reference = load_reference()
    cuda = torch.cuda.is_available()
    out = []
    for case, modality, version, tokens, grid, prefix in CASES:
        cfg = paper_masking(modality, version)
        kind_of = f"{cfg.kind} ratio {cfg.ratio}" + {"block": f" min_block {cfg.min_block}",
                                                     "inverse_block": f" block {cfg.block}",
                                                     "span": f" span {cfg.span}"}.get(cfg.kind, "")
        g = torch.Generator().manual_seed(0)
        r = {"case": case, "mask": kind_of, "tokens": tokens - prefix,
             "reference_ms": 1e3 * best_time(lambda: reference.sample_mask(cfg, rows, tokens, grid, prefix, g),
                                             repeats),
             "cpu_ms": 1e3 * best_time(lambda: sample_mask(cfg, rows, tokens, grid, prefix, g), repeats)}
        r["cpu_speedup"] = r["reference_ms"] / r["cpu_ms"]
        if cuda:
            gc = torch.Generator("cuda").manual_seed(0)
            r["cuda_ms"] = 1e3 * best_time(lambda: sample_mask(cfg, rows, tokens, grid, prefix, gc), repeats,
                                           torch.cuda.synchronize)
            r["cuda_speedup"] = r["reference_ms"] / r["cuda_ms"]
        out.append(r)
    return out


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2048, help="masks per call (batch x masks per sample)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = measure(args.rows, args.repeats)
    cuda = "cuda_ms" in rows[0]
    print(f"{args.rows} rows per call, best of {args.repeats}; CPU: {torch.get_num_threads()} threads"
          + (f"; GPU: {torch.cuda.get_device_name()}" if cuda else "; no GPU"))
    head = f"{'case':<27}{'mask':<30}{'reference':>11}{'cpu':>9}{'speedup':>9}"
    print(head + (f"{'cuda':>9}{'speedup':>9}" if cuda else ""))
    for r in rows:
        line = (f"{r['case']:<27}{r['mask']:<30}{r['reference_ms']:>9.2f}ms{r['cpu_ms']:>7.2f}ms"
                f"{r['cpu_speedup']:>8.1f}x")
        if cuda:
            line += f"{r['cuda_ms']:>7.2f}ms{r['cuda_speedup']:>8.1f}x"
        print(line)
    return rows


if __name__ == "__main__":
    main()
