"""The EMA teacher (schedule, update formula to the bit, frozen fp32 eval copy) and data2vec's targets
(top-K FFN outputs before the residual, normalised, averaged) against straightforward references."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from d2v_lab.model.data2vec import Backbone, Data2Vec, Data2VecConfig
from d2v_lab.model.ema import (
    derive_schedule,
    ema_update,
    init_share,
    init_shares,
    make_teacher,
    tau_at,
    tau_schedule,
)
from d2v_lab.model.masking import MaskConfig
from d2v_lab.model.modalities import ImageAdapter
from d2v_lab.model.targets import build_targets, normalise
from d2v_lab.model.transformer import Encoder, EncoderConfig


def tiny_backbone(seed=0, dim=32, depth=2) -> Backbone:
    torch.manual_seed(seed)
    return Backbone(ImageAdapter(dim, MaskConfig("inverse_block", 0.8)), Encoder(EncoderConfig(dim, depth, 2)))


def randomise(module: torch.nn.Module, seed: int) -> None:
    """Replace every parameter with random values (init leaves biases at 0 and norms at 1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def tiny_model(version=2, seed=0, **kw) -> Data2Vec:
    torch.manual_seed(seed)
    adapter = ImageAdapter(32, MaskConfig("inverse_block", 0.8) if version == 2 else MaskConfig("block", 0.6))
    return Data2Vec(adapter, Encoder(EncoderConfig(32, 2, 2)),
                    Data2VecConfig(version=version, top_k=2, decoder_dim=32, **kw))


def images(n=4, seed=0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


# --- tau schedule --------------------------------------------------------------------------------------

def test_tau_schedule_linear_ramp_then_constant():
    assert tau_at(0, 0.9, 0.99, 10) == 0.9
    assert tau_at(3, 0.9, 0.99, 10) == pytest.approx(0.9 + 0.09 * 0.3, abs=1e-15)
    assert tau_at(5, 0.99, 0.999, 10) == pytest.approx(0.9945, abs=1e-15)
    assert tau_at(9, 0.9, 0.99, 10) < 0.99
    assert tau_at(10, 0.9, 0.99, 10) == 0.99
    assert tau_at(10_000, 0.9, 0.99, 10) == 0.99
    assert tau_at(0, 0.9, 0.99, 0) == 0.99  # no ramp: tau_end from the first step
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        tau_at(0, 1.1, 0.99, 10)


@pytest.mark.parametrize("tau0,tau_end,ramp", [(0.9, 0.99, 10), (0.99, 0.9, 7), (0.5, 0.5, 0), (0.3, 0.999, 40)])
def test_tau_schedule_is_tau_at_to_the_bit(tau0, tau_end, ramp):
    assert tau_schedule(tau0, tau_end, ramp, 30).tolist() == [tau_at(s, tau0, tau_end, ramp) for s in range(30)]
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        tau_schedule(1.5, tau_end, ramp, 30)


def test_init_share_is_the_product_of_the_decays():
    taus = tau_schedule(0.95, 0.995, 200, 300)
    assert init_share(taus) == pytest.approx(math.prod(tau_at(s, 0.95, 0.995, 200) for s in range(300)), rel=1e-12)
    running = init_shares(taus)
    assert len(running) == 300 and running[-1] == pytest.approx(init_share(taus), rel=1e-12)
    assert all(running[t] == pytest.approx(math.prod(taus[:t + 1]), rel=1e-12) for t in (0, 1, 57, 299))
    assert np.all(np.diff(running) < 0)                                # every update with tau < 1 forgets
    assert init_share([]) == 1.0 and init_share([1.0] * 10) == 1.0 and init_share([0.9, 0.0, 0.9]) == 0.0


@pytest.mark.parametrize("dtype,steps", [(torch.float64, 300), (torch.float32, 300), (torch.float32, 20)])
def test_init_share_is_what_ema_update_leaves_of_the_initial_teacher(dtype, steps):
    """Sec. 3.2 unrolled: the teacher after the updates is init_share * theta_0 plus the student terms,
    whose weights sum to 1 - init_share. A teacher at 1.0 and a student at 0 leave exactly the product;
    a student at c adds c * (1 - product)."""
    tau0, tau_end, ramp = derive_schedule(steps)
    taus = tau_schedule(tau0, tau_end, ramp, steps)
    share = init_share(taus)
    for c in (0.0, 3.0):
        student = torch.nn.Linear(4, 3).to(dtype)
        teacher = torch.nn.Linear(4, 3).to(dtype).requires_grad_(False)
        with torch.no_grad():
            [p.fill_(c) for p in student.parameters()]
            [p.fill_(1.0) for p in teacher.parameters()]
        for tau in taus:
            ema_update(teacher, student, float(tau))
        # float32 (the teacher, or the student term, which ema_update computes in fp32): one rounding of
        # the decay and one of the product per update, at most 2^-24 each
        tol = 1e-12 if dtype == torch.float64 and c == 0 else 2 * steps * 2.0 ** -24 * (1 + c)
        for p in teacher.parameters():
            assert p.dtype == dtype
            assert torch.allclose(p.double(), torch.full_like(p, share + c * (1 - share), dtype=torch.float64),
                                  rtol=tol, atol=0), (p.flatten()[0].item(), share)


@pytest.mark.parametrize("steps", [1, 6, 20, 150, 300, 500, 20_000])
@pytest.mark.parametrize("share", [0.01, 0.1])
def test_derived_schedule_leaves_the_asked_share_and_grows_the_memory(steps, share):
    tau0, tau_end, ramp = derive_schedule(steps, share)
    left = init_share(tau_schedule(tau0, tau_end, ramp, steps))
    assert share * (1 - 1e-9) <= left <= share                        # never more than asked
    assert ramp == steps and 0 <= tau0 < tau_end < 1                   # the linear ramp over the whole run
    memory0, memory_end = 1 / (1 - tau0), 1 / (1 - tau_end)
    assert memory_end / memory0 == pytest.approx(3.0)                  # the memory grows 3x
    if steps >= 150 and share == 0.01:
        assert 0.1 * steps < memory0 < memory_end < 0.5 * steps       # and stays a fraction of the run


def test_derived_schedule_scales_with_the_run_and_refuses_nonsense():
    short, long = derive_schedule(150), derive_schedule(1500)
    assert long[0] > short[0] and long[1] > short[1]                   # a longer run affords longer memory
    assert (1 - long[0]) * 1500 == pytest.approx((1 - short[0]) * 150, rel=0.02)   # ~ a function of t / steps
    assert derive_schedule(300, 0.001)[1] < derive_schedule(300, 0.01)[1]          # less left: faster teacher
    for bad in (dict(steps=0), dict(steps=10, share=0.0), dict(steps=10, share=1.0),
                dict(steps=10, memory_ratio=0.5)):
        with pytest.raises(ValueError):
            derive_schedule(**bad)


# --- ema_update ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("tau", [0.9, 0.999, 0.3])
def test_ema_update_equals_formula_to_the_bit(tau):
    student = tiny_backbone()
    randomise(student, 1)
    teacher = make_teacher(student)
    randomise(teacher, 2)
    old = {k: v.clone() for k, v in teacher.named_parameters()}
    ema_update(teacher, student, tau)
    s = dict(student.named_parameters())
    for name, t in teacher.named_parameters():
        expected = tau * old[name] + (1 - tau) * s[name].detach()
        assert torch.equal(t, expected), name
        assert not torch.equal(t, old[name]) and not torch.equal(t, s[name])  # it really mixed


def test_ema_update_tau_one_keeps_teacher_tau_zero_copies_student():
    student = tiny_backbone()
    randomise(student, 1)
    teacher = make_teacher(student)
    randomise(teacher, 2)
    old = {k: v.clone() for k, v in teacher.named_parameters()}
    ema_update(teacher, student, 1.0)
    assert all(torch.equal(t, old[k]) for k, t in teacher.named_parameters())
    ema_update(teacher, student, 0.0)
    assert all(torch.equal(t, s) for t, s in zip(teacher.parameters(), student.parameters()))


def test_ema_update_from_bf16_student_keeps_fp32_teacher():
    student = tiny_backbone()
    randomise(student, 1)
    teacher = make_teacher(student)
    randomise(teacher, 2)
    student = student.to(torch.bfloat16)
    old = [t.clone() for t in teacher.parameters()]
    ema_update(teacher, student, 0.9)
    for t, o, s in zip(teacher.parameters(), old, student.parameters()):
        assert t.dtype == torch.float32
        assert torch.equal(t, 0.9 * o + (1 - 0.9) * s.float())


def test_ema_update_refuses_mismatched_modules():
    with pytest.raises(ValueError, match="different parameter lists"):
        ema_update(tiny_backbone(), Encoder(EncoderConfig(32, 2, 2)), 0.9)


# --- make_teacher / the teacher inside Data2Vec -------------------------------------------------------

def test_make_teacher_is_frozen_fp32_eval_copy_and_leaves_student_alone():
    student = tiny_backbone().to(torch.bfloat16).train()
    teacher = make_teacher(student)
    assert all(p.dtype == torch.float32 and not p.requires_grad for p in teacher.parameters())
    assert all(b.dtype == torch.float32 for b in teacher.buffers())
    assert not any(m.training for m in teacher.modules())
    # a copy: the student keeps its dtype, its gradients and its mode, and shares no storage
    assert all(p.dtype == torch.bfloat16 and p.requires_grad for p in student.parameters())
    assert all(m.training for m in student.modules())
    sp = {p.data_ptr() for p in student.parameters()}
    assert not any(p.data_ptr() in sp for p in teacher.parameters())


def _reachable_leaves(loss: torch.Tensor) -> set[int]:
    """ids of the leaf tensors the autograd graph of ``loss`` accumulates gradients into."""
    seen, stack, leaves = set(), [loss.grad_fn], set()
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        if hasattr(fn, "variable"):
            leaves.add(id(fn.variable))
        stack.extend(f for f, _ in fn.next_functions)
    return leaves


@pytest.mark.parametrize("version", [1, 2])
def test_no_gradient_reaches_the_teacher(version):
    model = tiny_model(version).train()
    out = model(images(), torch.Generator().manual_seed(0))
    leaves = _reachable_leaves(out.loss)
    assert not out.target.requires_grad
    assert not any(id(p) in leaves for p in model.teacher.parameters())
    assert all(id(p) in leaves for p in model.student.encoder.parameters())  # the walk is real
    out.loss.backward()
    assert all(p.grad is None for p in model.teacher.parameters())
    assert all(p.grad is not None for p in model.student.encoder.parameters())


def test_train_mode_never_reaches_the_teacher():
    model = tiny_model()
    model.train()
    assert all(m.training for m in model.student.modules())
    assert not any(m.training for m in model.teacher.modules())
    model.eval()
    assert not any(m.training for m in model.modules())
    model.train(True)
    assert not any(m.training for m in model.teacher.modules())


def test_update_teacher_moves_the_teacher_towards_the_student():
    model = tiny_model()
    randomise(model.student, 5)
    before = [t.clone() for t in model.teacher.parameters()]
    model.update_teacher(0.75)
    for t, o, s in zip(model.teacher.parameters(), before, model.student.parameters()):
        assert torch.equal(t, 0.75 * o + (1 - 0.75) * s.detach())


# --- targets -----------------------------------------------------------------------------------------

def ref_norm(a: torch.Tensor, how: str) -> torch.Tensor:
    """Explicit formulas, biased variance, eps 1e-5. a: (B, T, D)."""
    if how == "none":
        return a
    dim = 1 if how == "instance" else 2     # instance: per sample and channel over time; layer: per token
    mu = a.mean(dim=dim, keepdim=True)
    var = ((a - mu) ** 2).mean(dim=dim, keepdim=True)
    return (a - mu) / torch.sqrt(var + 1e-5)


def ref_targets(ffn: list[torch.Tensor], k: int, layer: str, final: str) -> torch.Tensor:
    total = torch.zeros_like(ffn[0], dtype=torch.float64)
    for l in range(len(ffn) - k, len(ffn)):
        total = total + ref_norm(ffn[l].double(), layer)
    return ref_norm(total / k, final)


def fake_ffn(depth=4, B=3, T=7, D=6, seed=0) -> list[torch.Tensor]:
    """Per-layer outputs with very different scales and offsets per layer, channel and sample."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for l in range(depth):
        scale = torch.rand(B, 1, D, generator=g) * 5 * (l + 1)
        shift = torch.randn(B, 1, D, generator=g) * 3
        out.append(torch.randn(B, T, D, generator=g) * scale + shift)
    return out


@pytest.mark.parametrize("layer", ["instance", "layer", "none"])
@pytest.mark.parametrize("final", ["layer", "none", "instance"])
@pytest.mark.parametrize("k", [1, 2, 4])
def test_build_targets_matches_reference(layer, final, k):
    ffn = fake_ffn()
    got = build_targets(ffn, k, layer, final)
    assert got.dtype == torch.float32 and got.shape == ffn[0].shape
    torch.testing.assert_close(got.double(), ref_targets(ffn, k, layer, final), rtol=1e-5, atol=1e-5)


def test_normalise_axes_are_the_documented_ones():
    x = fake_ffn(depth=1)[0]
    inst, lay = normalise(x, "instance"), normalise(x, "layer")
    assert inst.mean(dim=1).abs().max() < 1e-5 and (inst.var(dim=1, unbiased=False) - 1).abs().max() < 1e-2
    assert lay.mean(dim=2).abs().max() < 1e-5 and (lay.var(dim=2, unbiased=False) - 1).abs().max() < 1e-2
    assert inst.mean(dim=2).abs().max() > 0.1  # instance norm does not normalise tokens
    with pytest.raises(ValueError, match="unknown normalisation"):
        normalise(x, "batch")


def test_build_targets_in_fp32_from_bf16():
    ffn = [a.to(torch.bfloat16) for a in fake_ffn()]
    got = build_targets(ffn, 2, "instance", "none")
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), ref_targets([a.float() for a in ffn], 2, "instance", "none"),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("k", [0, 5, -1])
def test_top_k_out_of_range_raises(k):
    with pytest.raises(ValueError, match="top_k"):
        build_targets(fake_ffn(), k)


def test_data2vec_refuses_top_k_beyond_depth():
    with pytest.raises(ValueError, match="top_k"):
        Data2Vec(ImageAdapter(32, MaskConfig()), Encoder(EncoderConfig(32, 2, 2)), Data2VecConfig(top_k=3))


# --- the encoder hands back the FFN outputs before the residual ------------------------------------------

def manual_attention(block, x: torch.Tensor) -> torch.Tensor:
    B, T, D = x.shape
    H = block.attn.heads
    h = F.layer_norm(x, (D,), block.norm1.weight, block.norm1.bias, 1e-5)
    qkv = h @ block.attn.qkv.weight.T + block.attn.qkv.bias
    q, k, v = qkv.view(B, T, 3, H, D // H).permute(2, 0, 3, 1, 4)
    w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(D // H), dim=-1)
    o = (w @ v).transpose(1, 2).reshape(B, T, D)
    return o @ block.attn.proj.weight.T + block.attn.proj.bias


def manual_ffn(block, x: torch.Tensor) -> torch.Tensor:
    h = F.layer_norm(x, x.shape[-1:], block.norm2.weight, block.norm2.bias, 1e-5)
    fc1, fc2 = block.mlp[0], block.mlp[2]
    h = h @ fc1.weight.T + fc1.bias
    h = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))   # exact GELU
    return h @ fc2.weight.T + fc2.bias


def test_encoder_ffn_outputs_are_the_mlp_before_the_residual():
    torch.manual_seed(0)
    enc = Encoder(EncoderConfig(32, 3, 4)).eval()
    randomise(enc, 3)
    x = torch.randn(2, 9, 32)
    out = enc(x, return_layers=True)
    assert len(out.ffn) == len(out.hidden) == 3
    stream = x
    for i, block in enumerate(enc.blocks):
        after_attn = stream + manual_attention(block, stream)
        ffn = manual_ffn(block, after_attn)
        torch.testing.assert_close(out.ffn[i], ffn, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(out.hidden[i], after_attn + ffn, rtol=1e-4, atol=1e-4)
        # the FFN output is NOT the block output: the residual stream differs from it
        assert (out.hidden[i] - out.ffn[i]).abs().max() > 0.1
        stream = out.hidden[i]
    final = F.layer_norm(out.hidden[-1], (32,), enc.norm.weight, enc.norm.bias, 1e-5)
    torch.testing.assert_close(out.x, final, rtol=1e-5, atol=1e-5)
    assert enc(x).ffn is None and torch.equal(enc(x).x, out.x)


def test_targets_come_from_the_teacher_weights_not_the_student():
    model = tiny_model()
    x = images()
    y = model.targets(x)
    ffn = model.teacher(x, return_layers=True).ffn
    torch.testing.assert_close(y.double(), ref_targets(ffn, 2, "instance", "none"), rtol=1e-5, atol=1e-5)
    randomise(model.student, 7)
    assert torch.equal(model.targets(x), y)
    randomise(model.teacher, 8)
    assert not torch.allclose(model.targets(x), y)


def test_variance_shares_on_constructed_targets():
    from d2v_lab.model.targets import normalise, variance_shares
    g = torch.Generator().manual_seed(0)
    pattern = torch.randn(1, 50, 8, generator=g)
    assert variance_shares(pattern.expand(30, -1, -1))["position"] == pytest.approx(1.0)  # one sequence
    noise = torch.randn(4000, 50, 8, generator=g)
    shares = variance_shares(noise)
    assert shares["position"] == pytest.approx(0.0, abs=0.01) and shares["sample"] == pytest.approx(0.02, abs=0.01)
    half = (pattern / pattern.std() + noise) / 2 ** 0.5                      # equal variance in each part
    assert variance_shares(half)["position"] == pytest.approx(0.5, abs=0.03)
    offsets = torch.randn(4000, 1, 8, generator=g)                           # one constant per sample
    assert variance_shares(offsets + noise)["sample"] == pytest.approx(0.5, abs=0.03)
    assert variance_shares(noise + 5.0) == pytest.approx(shares)             # a shared offset is not variance
    assert variance_shares(normalise(offsets + noise, "instance"))["sample"] == pytest.approx(0.0, abs=1e-6)
