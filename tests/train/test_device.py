"""Device and precision choice: a device this machine lacks is refused clearly (probes fall back to
one it has), 'auto' precision follows the hardware, and the autocast factory really changes dtypes."""
from __future__ import annotations

import pytest
import torch

from d2v_lab.train import device


def test_a_device_this_machine_lacks_is_refused_clearly_and_probes_fall_back(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert not device.device_available("cuda") and not device.device_available("cuda:1")
    assert device.device_available("cpu")
    with pytest.raises(ValueError, match=r"train.device='cuda'.*no such device.*train.device=auto"):
        device.pick_device("cuda")
    with pytest.raises(ValueError, match="no such device"):
        device.pick_device("mps")
    assert device.pick_device("auto") == torch.device("cpu") == device.pick_device("cpu")
    assert device.usable_device("cuda") == torch.device("cpu")      # a GPU-trained checkpoint probed here


def test_explicit_precision_is_kept_and_auto_follows_the_cpu(monkeypatch):
    assert device.resolve_precision("fp32", "cpu") == "fp32" and device.resolve_precision("bf16", "cpu") == "bf16"
    monkeypatch.setattr(device, "cpu_has_fast_bf16", lambda: False)
    assert device.resolve_precision("auto", "cpu") == "fp32"     # emulated bf16 is slower than fp32
    monkeypatch.setattr(device, "cpu_has_fast_bf16", lambda: True)
    assert device.resolve_precision("auto", "cpu") == "bf16"


@pytest.mark.parametrize(("precision", "dtype"), [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_autocast_for_sets_the_matmul_dtype(precision, dtype):
    autocast = device.autocast_for(precision, "cpu")
    a = torch.randn(4, 4)
    for _ in range(2):                      # a factory: every call gives a fresh, usable context
        with autocast():
            assert (a @ a).dtype == dtype
