"""The teacher: an exponential moving average (EMA) of the student's weights.

data2vec (Baevski et al. 2022, Sec. 3.2, "Teacher parameterization"):  Delta <- tau * Delta + (1 - tau) * theta,
with tau rising linearly from tau0 to tau_e over the first n updates and constant afterwards
(paper: 0.999 -> 0.9999; data2vec 2.0 images 0.9998 -> 0.99999). Those values assume 100k+ updates; a
run of a few hundred updates needs a smaller tau, or its final teacher is still largely the random
network it started as: ``init_share`` measures that, and ``derive_schedule`` picks the schedule of a
run of S updates that leaves a chosen share of it.

The teacher is kept in fp32, never receives gradients and always runs in eval mode.
"""
from __future__ import annotations

import copy
import functools

import numpy as np
import torch
import torch.nn as nn


def tau_at(step: int, tau0: float, tau_end: float, ramp_steps: int) -> float:
    """tau at update ``step``: linear from tau0 (step 0) to tau_end (step ramp_steps), then constant."""
    if not (0.0 <= tau0 <= 1.0 and 0.0 <= tau_end <= 1.0):
        raise ValueError(f"EMA decays must lie in [0, 1], got tau0={tau0}, tau_end={tau_end}")
    if ramp_steps <= 0 or step >= ramp_steps:
        return tau_end
    return tau0 + (tau_end - tau0) * step / ramp_steps


def tau_schedule(tau0: float, tau_end: float, ramp_steps: int, steps: int) -> np.ndarray:
    """tau_at for every update 0 .. steps-1, as a float64 array, equal to tau_at element for element (the
    same operations in the same order)."""
    tau_at(0, tau0, tau_end, ramp_steps)  # the same range check
    s = np.arange(steps)
    if ramp_steps <= 0:
        return np.full(steps, float(tau_end))
    return np.where(s >= ramp_steps, tau_end, tau0 + (tau_end - tau0) * s / ramp_steps)


def init_share(taus) -> float:
    """The weight the teacher's initial parameters still carry after updates with decays ``taus``:
    prod_t tau_t (1.0 for no updates).

    Exact in real arithmetic, not an estimate (the fp32 teacher adds only rounding): unrolling
    Delta_{t+1} = tau_t Delta_t + (1 - tau_t) theta_t (Sec. 3.2 of data2vec) from Delta_0 = theta_0 gives

        Delta_T = (prod_{t<T} tau_t) theta_0 + sum_{t<T} (1 - tau_t) (prod_{t<u<T} tau_u) theta_t,

    a weighted average of the student's states (the weights sum to 1) in which the random initial
    weights theta_0 keep the coefficient prod_{t<T} tau_t, computed here in float64.
    """
    return float(np.prod(np.asarray(taus, dtype=np.float64)))


def init_shares(taus) -> np.ndarray:
    """init_share after each update: element t is prod_{u<=t} tau_u (the running product, in float64)."""
    return np.cumprod(np.asarray(taus, dtype=np.float64))


@functools.lru_cache(maxsize=256)   # pure, and asked for every time a profile is built
def derive_schedule(steps: int, share: float = 0.01, memory_ratio: float = 3.0) -> tuple[float, float, int]:
    """(tau0, tau_end, ramp_steps) for a run of ``steps`` updates whose final teacher keeps ``share`` of
    its initial weights: init_share(tau_schedule(tau0, tau_end, ramp_steps, steps)) <= share, equal up
    to the bisection's float64 resolution.

    The form is the paper's linear ramp (Sec. 3.2), over the whole run (ramp_steps = steps), so the
    teacher's memory 1/(1 - tau) grows all run long, as in the paper, here by a fixed ``memory_ratio``
    (1 - tau0) / (1 - tau_end). One number, 1 - tau0, is left; it is found by bisection (the share
    falls monotonically as it grows). A fixed ratio makes the schedule a function of t / steps: the
    memory at start and end are fixed fractions of the run, whatever its length. The share pins the
    sum of (1 - tau_t) near ln(1 / share) (4.6 for 1%), so the end memory is about
    steps * (1 + ratio) / (2 ln(1 / share)): ratio 3 keeps it under half the run (~0.44 of it, start
    ~0.15), so the final teacher averages the second half of training, not all of it; the paper's
    ratio of 10 would give a final memory longer than the run itself.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not 0.0 < share < 1.0:
        raise ValueError(f"the initial weights' share must lie in (0, 1), got {share}")
    if memory_ratio < 1.0:
        raise ValueError(f"memory_ratio must be >= 1 (the memory grows), got {memory_ratio}")

    def schedule(a: float) -> tuple[float, float, int]:   # a = 1 - tau0
        return 1.0 - a, 1.0 - a / memory_ratio, steps

    lo, hi = 0.0, 1.0   # share(lo) = 1 > share >= share(hi) = 0 (tau0 = 0 zeroes the product)
    for _ in range(100):   # the interval halves to below float64 resolution long before
        mid = 0.5 * (lo + hi)
        if mid in (lo, hi):
            break
        if init_share(tau_schedule(*schedule(mid), steps)) > share:
            lo = mid
        else:
            hi = mid
    return schedule(hi)   # hi: the side whose share is <= the target


def make_teacher(student: nn.Module) -> nn.Module:
    """A frozen fp32 copy of the student, in eval mode (no dropout), that autograd never touches."""
    teacher = copy.deepcopy(student).float().eval()
    teacher.requires_grad_(False)
    return teacher


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, tau: float) -> None:
    """teacher <- tau * teacher + (1 - tau) * student for every parameter; buffers are copied.

    Written as two multiplies and an add (not lerp or a fused add-with-alpha, which round
    differently) so the result equals the formula bit for bit, which the tests check. The ``_foreach``
    ops do each of them for all parameters at once: the same arithmetic in a few kernels instead of a
    loop over every parameter tensor.
    """
    t_params, s_params = list(teacher.parameters()), list(student.parameters())
    if len(t_params) != len(s_params):
        raise ValueError("teacher and student have different parameter lists")
    torch._foreach_mul_(t_params, tau)
    torch._foreach_add_(t_params, torch._foreach_mul([s.detach().float() for s in s_params], 1.0 - tau))
    for tb, sb in zip(teacher.buffers(), student.buffers()):
        tb.copy_(sb)
