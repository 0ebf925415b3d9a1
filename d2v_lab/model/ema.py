"""The teacher: an exponential moving average (EMA) of the student's weights.

data2vec (Baevski et al. 2022, Sec. 3.2, "Teacher parameterization"):  Delta <- tau * Delta + (1 - tau) * theta,
with tau rising linearly from tau0 to tau_e over the first n updates and constant afterwards
(paper: 0.999 -> 0.9999; data2vec 2.0 images 0.9998 -> 0.99999). Those values assume 100k+ updates; a
run of a few thousand updates needs a smaller tau (a teacher with memory of ~1/(1 - tau) steps must
still move within the run), so each profile sets its own and the notebook shows what tau does.

The teacher is kept in fp32, never receives gradients and always runs in eval mode.
"""
from __future__ import annotations

import copy

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
    """tau_at for every update 0 .. steps-1, as an array (for plotting a run's schedule)."""
    return np.array([tau_at(s, tau0, tau_end, ramp_steps) for s in range(steps)])


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
