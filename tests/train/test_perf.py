"""Precision selection: 'auto' follows the hardware, and the autocast factory really changes dtypes."""
from __future__ import annotations

import pytest
import torch

from d2v_lab.train import perf


def test_explicit_precision_is_kept_and_auto_follows_the_cpu(monkeypatch):
    assert perf.resolve_precision("fp32", "cpu") == "fp32" and perf.resolve_precision("bf16", "cpu") == "bf16"
    monkeypatch.setattr(perf, "cpu_has_fast_bf16", lambda: False)
    assert perf.resolve_precision("auto", "cpu") == "fp32"     # emulated bf16 is slower than fp32
    monkeypatch.setattr(perf, "cpu_has_fast_bf16", lambda: True)
    assert perf.resolve_precision("auto", "cpu") == "bf16"


@pytest.mark.parametrize(("precision", "dtype"), [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_autocast_for_sets_the_matmul_dtype(precision, dtype):
    autocast = perf.autocast_for(precision, "cpu")
    a = torch.randn(4, 4)
    for _ in range(2):                      # a factory: every call gives a fresh, usable context
        with autocast():
            assert (a @ a).dtype == dtype
