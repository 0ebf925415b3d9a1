"""Where and in what precision the model runs: device choice, bf16 autocast, the device's matmul peak
(what MFU is measured against), and a measured speed-up for CPU training. Training, probes and the
benchmarks all ask here.

Devices: "auto" means CUDA, else Apple's MPS, else the CPU; a named device this machine lacks is refused
with a clear message, except where a run only needs *a* device (probing a GPU-trained checkpoint on a
laptop: ``usable_device``).

Precision: "auto" is bf16 autocast where bf16 is native (CUDA with bf16 support, CPUs with AVX-512 BF16
or AMX), else fp32: emulated bf16 is slower than fp32.

malloc: glibc's malloc returns large freed blocks to the OS and maps fresh pages for the next activation
of the same size; on a 2-core machine that page-faulting cost 20-45% of a training step (measured here).
Keeping freed memory in the process (no mmap for large blocks, a huge trim threshold) removes most of it.
"""
from __future__ import annotations

import contextlib
import ctypes
import sys
import time

import torch

# --- devices -------------------------------------------------------------------------------------------

def device_available(name: str) -> bool:
    """Whether this machine has the device ``name`` ("auto" always resolves to one)."""
    if name == "auto":
        return True
    device = torch.device(name)
    if device.type == "cuda":
        return torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count()
    if device.type == "mps":
        return torch.backends.mps.is_available()
    return True


def pick_device(name: str) -> torch.device:
    """The device for ``name``: "auto" means CUDA, else Apple's MPS, else the CPU. A named device this
    machine lacks is refused with a clear message (torch's own is an AssertionError deep inside .to())."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if not device_available(name):
        built = "" if torch.backends.cuda.is_built() else f" (this torch, {torch.__version__}, is built without CUDA)"
        raise ValueError(f"train.device={name!r}, but this machine has no such device{built}; "
                         f"use --set train.device=auto (the best one here) or cpu")
    return torch.device(name)


def usable_device(name: str) -> torch.device:
    """The device ``name`` if this machine has it, else the best one it has: a checkpoint trained on a
    GPU can still be probed on a laptop."""
    return pick_device(name if device_available(name) else "auto")


def resident(t: torch.Tensor, device: torch.device, share: float = 0.25) -> torch.Tensor:
    """``t`` moved to ``device`` once, where it takes at most ``share`` of the device's free memory
    (CIFAR-10's training images are 150 MB, text windows tens of MB, the full audio log-mels 1.7 GB):
    each step then indexes its batch there, with no copy of it from the host. Otherwise, and on the
    CPU, ``t`` as it is, and each step copies its batch."""
    if device.type == "cpu" or t.device == device:
        return t
    size = t.numel() * t.element_size()
    if device.type == "cuda":
        fits = size <= share * torch.cuda.mem_get_info(device)[0]
    else:   # MPS shares the machine's memory; keep what it holds small
        fits = size <= 2**30
    return t.to(device) if fits else t


def synchronize(device: torch.device) -> None:
    """Wait until the work queued on ``device`` is done: CUDA kernels run asynchronously, so a clock
    read without this measures only the launches. The CPU computes as it goes."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, dtype: torch.dtype = torch.float32, n: int | None = None,
                repeats: int = 5) -> float:
    """FLOP/s of the fastest of ``repeats`` n x n matmuls (2 n^3 FLOPs each) in ``dtype`` on ``device``:
    what this device's BLAS does at best, measured in the run that reports MFU against it. n defaults
    to 2048 on a CPU and 8192 on a GPU, large enough to keep either busy."""
    n = n or (8192 if device.type == "cuda" else 2048)
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for i in range(repeats + 1):              # the first one warms up (BLAS kernel choice, page faults)
        synchronize(device)
        tic = time.perf_counter()
        a @ b
        synchronize(device)
        if i:
            best = min(best, time.perf_counter() - tic)
    return 2 * n**3 / best


# --- precision -----------------------------------------------------------------------------------------

def cpu_has_fast_bf16() -> bool:
    """True when the CPU multiplies bf16 natively (AVX-512 BF16 or AMX). Elsewhere bf16 autocast is
    emulated and slower than fp32, so "auto" precision stays fp32 there."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def resolve_precision(precision: str, device_type: str) -> str:
    """'auto' -> 'bf16' where it is fast (CUDA with bf16 support, CPUs with native bf16), else 'fp32'."""
    if precision != "auto":
        return precision
    if device_type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device_type == "cpu":
        return "bf16" if cpu_has_fast_bf16() else "fp32"
    return "fp32"


def autocast_for(precision: str, device_type: str):
    """A factory of the autocast context that ``precision`` resolves to on this device: bf16 autocast,
    or a no-op for fp32. Call it per use (``with autocast_for(...)():``); contexts are single-use."""
    if resolve_precision(precision, device_type) == "bf16":
        return lambda: torch.autocast(device_type, dtype=torch.bfloat16)
    return contextlib.nullcontext


# --- CPU memory ----------------------------------------------------------------------------------------

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's mallopt parameter numbers (malloc.h)
_malloc_tuned = False


def tune_malloc() -> bool:
    """Ask glibc to keep freed memory for reuse (see the module docstring). No-op (False) on other
    platforms or C libraries."""
    global _malloc_tuned
    if _malloc_tuned:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, 2**30) == 1
    except (OSError, AttributeError):  # musl or no glibc
        return False
    _malloc_tuned = ok
    return ok
