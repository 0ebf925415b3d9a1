"""One readout for every feature source: the pooling weights on known answers, the raw input cut into
exactly the model's tokens (an adapter made identity-like gives the raw features back), and the raw
source going through the same ``layer_features`` as the models."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from d2v_lab.data.tokenizer import CLS_ID, PAD_ID
from d2v_lab.evaluate.features import (
    POOLS,
    SEGMENTS,
    RawInput,
    layer_features,
    pool,
    pooling_weights,
    raw_features,
)
from d2v_lab.model.data2vec import Backbone
from d2v_lab.model.modalities import LOGMEL_MEAN, LOGMEL_STD, AudioAdapter, ImageAdapter, TextAdapter
from d2v_lab.model.transformer import Encoder, EncoderConfig
from d2v_lab.train.profiles import get_profile

# --- pooling weights --------------------------------------------------------------------------------


def test_segments_cut_the_kept_tokens_into_contiguous_runs():
    keep = torch.tensor([[1] * 10,                                      # 10 tokens: runs of 3, 2, 3, 2
                         [0] + [1] * 8 + [0],                           # a prefix and a padding token
                         [0, 1, 0, 0, 1, 0, 0, 0, 0, 0]])               # 2 tokens for 4 runs
    w = pooling_weights(keep, segments=4)
    assert w["mean"].shape == (3, 1, 10) and w["segments"].shape == (3, 4, 10)
    runs = lambda row: [torch.nonzero(w["segments"][row, k]).flatten().tolist() for k in range(4)]  # noqa: E731
    assert runs(0) == [[0, 1, 2], [3, 4], [5, 6, 7], [8, 9]]
    assert runs(1) == [[1, 2], [3, 4], [5, 6], [7, 8]]
    assert runs(2) == [[1], [], [4], []]                               # floor(r * 4 / 2): runs 0 and 2
    torch.testing.assert_close(w["mean"][1, 0], keep[1].float() / 8)
    tokens = torch.arange(10.0)[None, None, :, None].expand(1, 3, 10, 1)       # token t has value t
    out = pool(tokens, w)
    torch.testing.assert_close(out["mean"][0, :, 0], torch.tensor([4.5, 4.5, 2.5]))
    torch.testing.assert_close(out["segments"][0], torch.tensor([[1.0, 3.5, 6.0, 8.5],
                                                                 [1.5, 3.5, 5.5, 7.5],
                                                                 [1.0, 0.0, 4.0, 0.0]]))  # empty runs: 0, not NaN


def test_audio_tokens_split_into_four_runs_of_about_250_ms():
    w = pooling_weights(torch.ones(1, 50), SEGMENTS)["segments"][0]
    assert w.sum(1).tolist() == [1.0] * SEGMENTS
    assert (w > 0).sum(1).tolist() == [13, 12, 13, 12]


# --- raw tokens: the model's tokens of an identity-like adapter --------------------------------------

def backbone(adapter) -> Backbone:
    return Backbone(adapter, Encoder(EncoderConfig(adapter.dim, 1, 1)))


def identity_image_adapter() -> ImageAdapter:
    """Patch convolution = identity on the 48 pixel values of a patch, no normalisation, no positions."""
    a = ImageAdapter(48, get_profile("image", "ci").mask)
    with torch.no_grad():
        a.proj.weight.copy_(torch.eye(48).reshape(48, 3, 4, 4))
        a.proj.bias.zero_()
    a.mean.zero_()
    a.std.fill_(1.0)
    a.pos.zero_()
    return a


def identity_audio_adapter() -> AudioAdapter:
    """Projection = identity on a token's 2 x 64 log-mel values, no LayerNorm, no positions."""
    a = AudioAdapter(128, get_profile("audio", "ci").mask)
    with torch.no_grad():
        a.proj.weight.copy_(torch.eye(128))
        a.proj.bias.zero_()
    a.norm = nn.Identity()
    a.pos.zero_()
    return a


def identity_text_adapter(vocab: int, seq_len: int) -> TextAdapter:
    """Embedding = one-hot rows, no positions."""
    a = TextAdapter(vocab, get_profile("text", "ci").mask, vocab, seq_len)
    with torch.no_grad():
        a.tok.weight.copy_(torch.eye(vocab))
        a.pos.zero_()
    return a


def inputs(modality: str) -> tuple:
    g = torch.Generator().manual_seed(0)
    if modality == "image":
        return identity_image_adapter(), torch.randint(0, 256, (6, 3, 32, 32), generator=g, dtype=torch.uint8)
    if modality == "audio":
        x = torch.randn(6, 64, 100, generator=g) * 5 - 8     # log-mel-like values; both paths scale them alike
        return identity_audio_adapter(), x
    ids = torch.randint(5, 40, (6, 20), generator=g)
    ids[:, 0] = CLS_ID
    ids[2, 12:] = PAD_ID                                                # padding in some rows
    ids[4, 5:] = PAD_ID
    return identity_text_adapter(40, 20), ids


@pytest.mark.parametrize("modality", ["image", "audio", "text"])
def test_raw_input_equals_layer_0_of_a_model_whose_adapter_is_identity_like(modality):
    """The raw source and the model source give identical pooled features when the model's adapter
    passes the input's tokens through: same tokens, same order, same padding and prefix, same pools."""
    adapter, x = inputs(modality)
    model = layer_features(backbone(adapter), x, batch_size=4, precision="fp32")
    raw = raw_features(adapter, x)
    assert set(raw) == set(POOLS)                                       # the raw input has no [CLS] token
    assert set(model) == set(POOLS) | ({"cls"} if modality == "text" else set())
    for name in POOLS:
        assert raw[name].shape == (1,) + model[name].shape[1:]         # one layer: the input itself
        np.testing.assert_allclose(raw[name][0], model[name][0], atol=1e-4, rtol=1e-4)


def test_raw_audio_features_known_answer():
    """Token t is frames 2t and 2t+1 (64 mels each, scaled by the adapter's fixed statistics): the mean
    pool is the even frames' average spectrum then the odd frames'; segment k averages its own frames."""
    x = torch.randn(3, 64, 100, generator=torch.Generator().manual_seed(1))
    feats = raw_features(AudioAdapter(32, get_profile("audio", "ci").mask), x)
    ref = ((x - LOGMEL_MEAN) / LOGMEL_STD).numpy()
    expected_mean = np.concatenate([ref[:, :, 0::2].mean(2), ref[:, :, 1::2].mean(2)], axis=1)
    np.testing.assert_allclose(feats["mean"][0], expected_mean, atol=1e-5)
    first = ref[:, :, :26]                                              # segment 0: tokens 0-12 = frames 0-25
    expected_first = np.concatenate([first[:, :, 0::2].mean(2), first[:, :, 1::2].mean(2)], axis=1)
    np.testing.assert_allclose(feats["segments"][0][:, :128], expected_first, atol=1e-5)
    assert feats["segments"].shape == (1, 3, SEGMENTS * 128)


def test_raw_text_mean_is_the_normalised_bag_of_tokens():
    ids = torch.tensor([[CLS_ID, 7, 7, 9, PAD_ID, PAD_ID], [CLS_ID, 9, 8, 8, 8, 7]])
    feats = raw_features(TextAdapter(16, get_profile("text", "ci").mask, 30, 6), ids)
    bag = np.zeros((2, 30))
    bag[0, [7, 9]] = [2 / 3, 1 / 3]                                     # [CLS] and padding are not counted
    bag[1, [7, 8, 9]] = [1 / 5, 3 / 5, 1 / 5]
    np.testing.assert_allclose(feats["mean"][0], bag, atol=1e-6)


def test_raw_text_is_read_in_chunks_small_enough_for_one_hot():
    raw = RawInput(TextAdapter(16, get_profile("text", "ci").mask, 4096, 128))
    ids = torch.full((300, 128), 9)
    assert raw.batch_size(ids) == (1 << 24) // (128 * 4096) == 32
    audio = RawInput(identity_audio_adapter())                         # 50 x 128 values a row: the usual 256
    assert audio.batch_size(torch.zeros(10, 64, 100)) == 256


def test_cls_pool_only_where_there_is_a_cls_token():
    adapter, x = inputs("text")
    with pytest.raises(ValueError, match="no \\[CLS\\] token"):
        layer_features(RawInput(adapter), x, pools=("mean", "cls"))
    assert set(layer_features(backbone(adapter), x, pools=("mean",))) == {"mean"}
