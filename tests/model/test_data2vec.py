"""The data2vec objective: loss only at masked positions, a teacher that sees the unmasked input,
identical targets in 1.0 and 2.0, a 2.0 student that encodes only visible tokens, multi-mask with one
teacher pass. Tiny models (dim 32, depth 2) on random inputs of each modality."""
from __future__ import annotations

import pytest
import torch

from d2v_lab.data.tokenizer import CLS_ID, PAD_ID
from d2v_lab.model.data2vec import Data2Vec, Data2VecConfig, EncoderOutput
from d2v_lab.model.masking import MaskConfig
from d2v_lab.model.modalities import AudioAdapter, ImageAdapter, TextAdapter
from d2v_lab.model.transformer import Encoder, EncoderConfig

B = 4


def make(modality: str, version: int, num_masks: int = 1, seed: int = 0, **kw) -> Data2Vec:
    torch.manual_seed(seed)
    cls = kw.get("cls_loss", 0) > 0
    if modality == "image":
        adapter = ImageAdapter(32, MaskConfig("block", 0.6) if version == 1 else MaskConfig("inverse_block", 0.8),
                               cls_token=cls)
    elif modality == "text":
        adapter = TextAdapter(32, MaskConfig("random", 0.15 if version == 1 else 0.48), vocab_size=50, seq_len=16)
    else:
        adapter = AudioAdapter(32, MaskConfig("span", 0.5, span=5), cls_token=cls)
    cfg = Data2VecConfig(version=version, top_k=2, num_masks=num_masks, decoder_dim=32,
                         head_layers=2 if modality == "text" else 1, **kw)
    model = Data2Vec(adapter, Encoder(EncoderConfig(32, 2, 2)), cfg)
    # an EMA teacher that has moved away from the student, as after some training
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for p in model.teacher.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def inputs(modality: str, n: int = B, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if modality == "image":
        return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    if modality == "text":
        x = torch.randint(5, 50, (n, 16), generator=g)
        x[:, 0] = CLS_ID
        return x
    return torch.randn(n, 64, 100, generator=g) * 3 - 5


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def run(model, x, mask, seed=0):
    """Forward with an explicit mask and fixed randomness (BERT corruption, decoder noise)."""
    torch.manual_seed(seed)
    return model(x, gen(seed), mask=mask)


def scatter(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(n_masked, D) rows back onto the (N, T, D) grid, NaN elsewhere."""
    full = torch.full((*mask.shape, values.shape[-1]), float("nan"))
    full[mask] = values.detach().float()
    return full


ALL = [(m, v) for m in ("image", "text", "audio") for v in (1, 2)]


# --- the loss looks at masked positions only ---------------------------------------------------------

def _spoil_unmasked(model, mask, value):
    """Hook that overwrites the student's per-position predictions at UNMASKED positions."""
    def spoil(full):
        m = mask[:, mask.shape[1] - full.shape[1]:]   # the decoder sees the tokens after the [CLS] prefix
        return torch.where(m[..., None], full, torch.full_like(full, value))
    if model.cfg.version == 2:
        return model.decoder.register_forward_hook(lambda m, i, o: spoil(o))
    # 1.0: the head maps each position on its own, so spoil the encoder output it reads
    return model.student.encoder.register_forward_hook(lambda m, i, o: EncoderOutput(spoil(o.x), o.hidden, o.ffn))


@pytest.mark.parametrize("modality,version", ALL)
def test_unmasked_predictions_do_not_change_the_loss(modality, version):
    model, x = make(modality, version), inputs(modality)
    mask = model.student.adapter.sample_mask(B, gen(1))
    ref = run(model, x, mask)
    handle = _spoil_unmasked(model, mask, 1e6)
    spoiled = run(model, x, mask)
    handle.remove()
    assert torch.equal(spoiled.loss, ref.loss)
    # positive control: spoiling a MASKED position changes the loss
    one = torch.zeros_like(mask)
    one[0, mask[0].nonzero()[0, 0]] = True
    handle = _spoil_unmasked(model, ~one, 1e6)
    assert run(model, x, mask).loss > ref.loss * 10
    handle.remove()


@pytest.mark.parametrize("modality,version", ALL)
def test_loss_is_the_mean_over_masked_positions_of_full_grid_error(modality, version):
    """Recompute the loss from the student's FULL per-position predictions and the teacher's FULL
    targets, using only the mask: pred/target rows are those at masked positions, in order."""
    model, x = make(modality, version), inputs(modality)
    mask = model.student.adapter.sample_mask(B, gen(1))
    P = model.student.adapter.prefix                      # [CLS] is never masked and has no target
    seen = {}
    if version == 2:
        h = model.decoder.register_forward_hook(lambda m, i, o: seen.update(full=o.detach()))
    else:
        h = model.student.encoder.register_forward_hook(
            lambda m, i, o: seen.update(full=model.head(o.x[:, P:]).detach()))
    out = run(model, x, mask)
    h.remove()
    mask = mask[:, P:]
    full, y = seen["full"], model.targets(x)
    assert full.shape == y.shape == (*mask.shape, 32)
    torch.testing.assert_close(out.pred, full[mask])
    assert torch.equal(out.target, y[mask])
    sq = ((full - y) ** 2).sum(dim=-1)                      # (B, T)
    manual = (sq * mask).sum() / (mask.sum() * y.shape[-1])
    torch.testing.assert_close(out.loss, manual, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("beta", [0.5, 2.0, 4.0])
def test_smooth_l1_loss_with_beta(beta):
    model, x = make("image", 1, loss="smooth_l1", loss_beta=beta), inputs("image")
    with torch.no_grad():                 # widen predictions so both branches of smooth L1 occur
        model.head.weight.mul_(40)
    out = model(x, gen(0))
    d = (out.pred - out.target).abs()
    assert (d < beta).any() and (d >= beta).any()
    manual = torch.where(d < beta, 0.5 * d ** 2 / beta, d - 0.5 * beta).mean()
    torch.testing.assert_close(out.loss, manual, rtol=1e-5, atol=1e-7)
    assert not torch.allclose(out.loss, ((out.pred - out.target) ** 2).mean())


@pytest.mark.parametrize("version", [1, 2])
def test_l2_loss_is_mean_squared_error(version):
    model, x = make("audio", version, loss="l2"), inputs("audio")
    out = model(x, gen(0))
    torch.testing.assert_close(out.loss, ((out.pred - out.target) ** 2).mean(), rtol=1e-6, atol=0)


# --- targets: the same in 1.0 and 2.0, and independent of the mask -------------------------------------

@pytest.mark.parametrize("modality", ["image", "text", "audio"])
def test_versions_1_and_2_build_identical_targets(modality):
    m1, m2 = make(modality, 1, seed=0), make(modality, 2, seed=1)
    x = inputs(modality)
    assert not torch.equal(m1.targets(x), m2.targets(x))        # different teachers: different targets
    m2.teacher.load_state_dict(m1.teacher.state_dict())
    assert torch.equal(m1.targets(x), m2.targets(x))
    mask = m2.student.adapter.sample_mask(B, gen(3))            # a mask valid for both
    assert torch.equal(run(m1, x, mask).target, run(m2, x, mask).target)


@pytest.mark.parametrize("modality,version", ALL)
def test_teacher_sees_unmasked_input_and_student_sees_the_mask(modality, version):
    model, x = make(modality, version), inputs(modality)
    ad = model.student.adapter
    m1 = ad.sample_mask(B, gen(1))
    m2 = m1.clone()           # per row: unmask one masked token, mask one visible one (same count)
    for r in range(B):
        m2[r, m1[r].nonzero()[0, 0]] = False
        m2[r, (~m1[r, ad.prefix:]).nonzero()[0, 0] + ad.prefix] = True
    both = m1 & m2
    assert both.sum() >= B and not torch.equal(m1, m2)
    o1, o2 = run(model, x, m1), run(model, x, m2)
    y = model.targets(x)                                          # the teacher on the unmasked input
    P = ad.prefix
    assert torch.equal(o1.target, y[m1[:, P:]]) and torch.equal(o2.target, y[m2[:, P:]])
    assert torch.equal(scatter(o1.target, m1)[both], scatter(o2.target, m2)[both])
    # the student's prediction at a position masked in both runs depends on what else was hidden
    p1, p2 = scatter(o1.pred, m1)[both], scatter(o2.pred, m2)[both]
    assert (p1 - p2).abs().max() > 1e-4


def test_text_teacher_sees_the_original_ids_not_the_bert_corruption():
    model, x = make("text", 1), inputs("text", n=32)
    seen = []
    model.teacher.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    student_in = []
    model.student.adapter.register_forward_hook(lambda m, args, out: student_in.append(out))
    out = model(x, gen(0))
    assert len(seen) == 1 and torch.equal(seen[0], x)
    assert out.mask.sum() > 0
    # the student embedding differs from the clean one at masked positions only (corrupted there)
    clean = model.student.adapter(x)
    changed = (student_in[0] - clean).abs().amax(-1) > 0
    assert not (changed & ~out.mask).any() and (changed & out.mask).sum() >= 0.7 * out.mask.sum()


# --- what the student encodes --------------------------------------------------------------------------

def _record_encoder_inputs(model):
    seen = []
    model.student.encoder.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach()))
    return seen


@pytest.mark.parametrize("modality", ["image", "text", "audio"])
def test_version_2_student_encodes_only_the_visible_tokens(modality):
    model, x = make(modality, 2), inputs(modality)
    seen = _record_encoder_inputs(model)
    dec_in = []
    model.decoder.register_forward_pre_hook(lambda m, args: dec_in.append(args[0].detach()))
    mask = model.student.adapter.sample_mask(B, gen(1))
    T, k = mask.shape[1], int(mask[0].sum())
    run(model, x, mask)
    assert len(seen) == 1 and seen[0].shape == (B, T - k, 32)
    tokens = model.student.adapter(x)
    assert torch.equal(seen[0], tokens[~mask].view(B, T - k, 32))      # the visible ones, in order
    # the decoder gets the encoded visible tokens in place (after the [CLS] prefix) and small noise
    # in the masked slots
    P = model.student.adapter.prefix
    enc = model.student.encoder(seen[0]).x[:, P:]
    assert torch.equal(dec_in[0][~mask[:, P:]], enc.reshape(-1, 32))
    noise = dec_in[0][mask[:, P:]]
    assert noise.std().item() == pytest.approx(0.01, rel=0.15) and noise.mean().abs() < 0.002


@pytest.mark.parametrize("modality", ["image", "text", "audio"])
def test_version_1_student_encodes_all_tokens_masked_ones_replaced(modality):
    model, x = make(modality, 1), inputs(modality)
    seen = _record_encoder_inputs(model)
    mask = model.student.adapter.sample_mask(B, gen(1))
    run(model, x, mask)
    T = mask.shape[1]
    assert seen[0].shape == (B, T, 32)
    clean = model.student.adapter(x)
    assert torch.equal(seen[0][~mask], clean[~mask])
    if modality != "text":   # image/audio: the learned mask embedding (+ position) at masked slots
        pos = model.student.adapter.positions()
        expected = (model.student.adapter.mask_embedding + pos).expand(B, T, 32)[mask]
        torch.testing.assert_close(seen[0][mask], expected)


def test_version_2_refuses_rows_with_different_mask_counts():
    model, x = make("image", 2), inputs("image")
    mask = model.student.adapter.sample_mask(B, gen(1))
    mask[1, (~mask[1]).nonzero()[0, 0]] = True
    with pytest.raises(ValueError, match="same number of masked tokens"):
        run(model, x, mask)


def test_padding_in_a_pretraining_batch_is_refused():
    model, x = make("text", 2), inputs("text")
    x[0, -3:] = PAD_ID
    with pytest.raises(ValueError, match="padding"):
        model(x, gen(0))


# --- multi-mask ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("modality,version", [("image", 2), ("text", 2), ("audio", 2), ("image", 1)])
def test_multi_mask_one_teacher_pass_targets_repeated_per_copy(modality, version):
    M = 3
    model, x = make(modality, version, num_masks=M), inputs(modality)
    teacher_in = []
    model.teacher.register_forward_pre_hook(lambda m, args: teacher_in.append(args[0].shape[0]))
    student_in = _record_encoder_inputs(model)
    torch.manual_seed(0)
    out = model(x, gen(0))
    T = model.student.adapter.num_tokens
    assert out.mask.shape == (B * M, T)
    assert teacher_in == [B]                                   # ONE teacher pass over the B samples
    assert len(student_in) == 1 and student_in[0].shape[0] == B * M
    y = model.targets(x)
    rows = torch.arange(B * M)
    sample = rows // M                                         # row r is a masked copy of sample r // M
    assert torch.equal(out.target, y[sample][out.mask[:, model.student.adapter.prefix:]])
    for b in range(B):                                         # the copies of one sample differ
        copies = out.mask[b * M:(b + 1) * M]
        assert not torch.equal(copies[0], copies[1]) and not torch.equal(copies[1], copies[2])
    if version == 2:                                           # the student row r sees sample r // M
        tokens = model.student.adapter(x)[sample]
        n_vis = T - int(out.mask[0].sum())
        assert torch.equal(student_in[0], tokens[~out.mask].view(B * M, n_vis, 32))


# --- config and metrics --------------------------------------------------------------------------------

@pytest.mark.parametrize("kw,msg", [({"version": 3}, "version"), ({"loss": "l1"}, "loss"),
                                    ({"num_masks": 0}, "num_masks")])
def test_config_refuses_bad_values(kw, msg):
    with pytest.raises(ValueError, match=msg):
        Data2VecConfig(**kw)


def test_target_std_is_per_channel_std_over_masked_positions():
    model, x = make("audio", 2), inputs("audio")
    out = model(x, gen(0))
    t = out.target
    manual = ((t - t.mean(0)) ** 2).sum(0).div(len(t) - 1).sqrt().mean()
    assert out.target_std == pytest.approx(float(manual), rel=1e-5)
    out.target = torch.ones_like(t) * 3.0                     # every position the same target: collapse
    assert out.target_std == 0.0


# --- the [CLS] token's global target (data2vec 2.0) ----------------------------------------------------

@pytest.mark.parametrize("modality,version", [("image", 1), ("image", 2), ("audio", 2), ("text", 2)])
def test_cls_token_regresses_the_mean_target_and_is_never_masked(modality, version):
    model, x = make(modality, version, cls_loss=0.5, target_final_norm="layer"), inputs(modality)
    ad = model.student.adapter
    assert ad.prefix == 1
    plain = {"image": 64, "audio": 50, "text": 15}[modality]        # maskable tokens
    assert ad.num_tokens == plain + 1 and model.targets(x).shape == (B, plain, 32)
    mask = ad.sample_mask(B, gen(1))
    assert not mask[:, 0].any()
    # targets leave the [CLS] position out (also of the normalisation)
    P = ad.prefix
    with torch.no_grad():
        ffn = model.teacher(x, return_layers=True).ffn
    from d2v_lab.model.targets import build_targets
    cfg = model.cfg
    assert torch.equal(model.targets(x), build_targets([a[:, P:] for a in ffn], cfg.top_k,
                                                       cfg.target_layer_norm, cfg.target_final_norm))
    # the loss = regression + cls_loss * MSE(cls_head(student output at [CLS]), mean target)
    seen = {}
    handle = model.cls_head.register_forward_hook(lambda m, i, o: seen.update(out=o.detach()))
    out = run(model, x, mask)
    handle.remove()
    expected_cls = ((seen["out"] - model.targets(x).mean(1)) ** 2).mean()
    torch.testing.assert_close(out.cls_loss, expected_cls)
    regression = ((out.pred - out.target) ** 2).mean() if model.cfg.loss == "l2" else None
    if regression is not None:
        torch.testing.assert_close(out.loss, regression + 0.5 * expected_cls)


def test_cls_loss_needs_a_cls_token():
    adapter = ImageAdapter(32, MaskConfig("inverse_block", 0.8), cls_token=False)
    with pytest.raises(ValueError, match="CLS"):
        Data2Vec(adapter, Encoder(EncoderConfig(32, 2, 2)),
                 Data2VecConfig(top_k=2, cls_loss=1.0, decoder_dim=32, target_final_norm="layer"))


def test_cls_loss_refuses_a_constant_target():
    """Instance norm makes every channel's mean over tokens 0: the mean target would be all zeros."""
    with pytest.raises(ValueError, match="constant"):
        Data2VecConfig(cls_loss=1.0, target_layer_norm="instance", target_final_norm="none")
    y = torch.nn.functional.instance_norm(torch.randn(2, 8, 10)).transpose(1, 2)   # (B, T, D) targets
    assert y.mean(dim=1).abs().max() < 1e-5


# --- the 2.0 decoder's convolution groups ---------------------------------------------------------------

@pytest.mark.parametrize("modality", ["image", "audio"])
def test_decoder_groups_split_the_convolutions_into_independent_channel_groups(modality):
    """fairseq's Decoder1d/2d use ``decoder_groups`` (16 in its audio and image recipes): each conv's output
    group reads only its own input group. The default (1) is a full convolution, as before."""
    assert all(c.groups == 1 for c in make(modality, 2).decoder.convs)
    model, x = make(modality, 2, decoder_groups=4), inputs(modality)
    conv = model.decoder.convs[0]
    assert conv.groups == 4 and conv.weight.shape[1] == 32 // 4
    grid = model.student.adapter.grid
    h = torch.randn(2, 32, *(grid or (50,)))
    h2 = h.clone()
    h2[:, 8:] += 1.0                                     # change every input group but the first
    with torch.no_grad():
        y, y2 = conv(h), conv(h2)
    assert torch.equal(y[:, :8], y2[:, :8]) and not torch.equal(y[:, 8:], y2[:, 8:])
    out = model(x, gen(0))
    assert torch.isfinite(out.loss)


def test_decoder_groups_must_divide_the_widths():
    with pytest.raises(ValueError, match="decoder_groups"):
        Data2VecConfig(decoder_dim=32, decoder_groups=5)
    adapter = AudioAdapter(36, MaskConfig("span", 0.5, span=5))
    with pytest.raises(ValueError, match="decoder_groups"):
        Data2Vec(adapter, Encoder(EncoderConfig(36, 2, 2)), Data2VecConfig(top_k=2, decoder_dim=32, decoder_groups=8))


# --- no information about masked frames reaches the audio student ----------------------------------------

@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("cls", [False, True])
def test_audio_student_input_does_not_depend_on_masked_frames(version, cls):
    """Standardising each clip with its own mean and std (over all frames, masked ones included) would
    hand every visible token two numbers about the hidden frames. With fixed dataset statistics, what
    the student encodes, and so its predictions, are bit-identical whatever the masked frames hold."""
    model = make("audio", version, **(dict(cls_loss=0.5, target_final_norm="layer") if cls else {}))
    x, ad = inputs("audio"), model.student.adapter
    mask = ad.sample_mask(B, gen(1))
    hidden = mask[:, ad.prefix:].repeat_interleave(ad.patch, dim=1)[:, None, :]     # (B, 1, frames)
    other = torch.randn(x.shape, generator=gen(2)) * 10 + 3                         # new mean and std too
    x2 = torch.where(hidden, other, x)
    assert not torch.equal(x, x2)
    seen = _record_encoder_inputs(model)
    o1, o2 = run(model, x, mask), run(model, x2, mask)
    assert torch.equal(seen[0], seen[1]) and torch.equal(o1.pred, o2.pred)
    assert not torch.equal(o1.target, o2.target)          # the teacher does see the masked frames
    # the check can fail: a change to one VISIBLE frame reaches the student
    x3 = x.clone()
    x3[0, :, int((~hidden[0, 0]).nonzero()[0, 0])] += 1.0
    run(model, x3, mask)
    assert not torch.equal(seen[0], seen[2])
