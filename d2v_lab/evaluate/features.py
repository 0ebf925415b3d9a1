"""Frozen features of every feature source, read out one way, and the one standardiser every probe
and control uses.

The readout is defined once, here, for all three sources the probe compares:
  pretrained / random init  a backbone's tokens at every layer (``layer_features``);
  raw input                 the input itself, cut into the same tokens the model's adapter makes
                            (``RawInput``: audio = 2 log-mel frames per token, 50 tokens of 128 values;
                            image = the 4x4 patches' pixels, 64 tokens of 48 values; text = one-hot BPE
                            ids), run through ``layer_features`` as a backbone with no weights and no blocks.
Every source is summarised by the same pools (``POOLS``), and the probe picks pool and layer on
validation the same way for each:
  mean      the average of the content tokens (for raw text: the normalised bag of tokens);
  segments  the content tokens cut, in order, into ``SEGMENTS`` contiguous runs, each averaged, the
            averages side by side: coarse order (which part of the clip / image / text) survives,
            which a single mean throws away;
  cls       only models with a [CLS] token: that token's state. The raw input has no [CLS] token (for
            text its "[CLS]" would be the one-hot of one fixed id, a constant), so it has no "cls" pool.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from d2v_lab.data.tokenizer import PAD_ID
from d2v_lab.model.modalities import LOGMEL_MEAN, LOGMEL_STD
from d2v_lab.model.transformer import EncoderOutput
from d2v_lab.train.device import autocast_for

SEGMENTS = 4                      # image: 4 bands of 2 patch rows; audio: 4 runs of 12-13 tokens (~250 ms)
POOLS = ("mean", "segments")      # every source; a model with a [CLS] token adds "cls"
READOUT = {"pools": list(POOLS), "segments": SEGMENTS, "raw_input": "the input cut into the model's tokens"}


def pooling_weights(keep: torch.Tensor, segments: int = SEGMENTS) -> dict[str, torch.Tensor]:
    """keep (B, T), nonzero at the tokens a summary may read -> {"mean": (B, 1, T), "segments": (B, K, T)}.

    "mean" weighs each kept token 1/n. "segments" gives each row's kept tokens, in order, to K runs
    (the token of rank r among n goes to run floor(r K / n), so runs differ in length by at most one)
    and weighs each run's tokens 1/len(run). Every weight row sums to 1; a row with nothing to read
    (no kept token, or fewer than K) gives zeros, not NaN."""
    keep = (keep != 0).long()
    n = keep.sum(1, keepdim=True).clamp(min=1)                              # (B, 1)
    rank = keep.cumsum(1) - 1                                               # (B, T) rank among kept tokens
    run = (rank * segments) // n                                            # (B, T) in [0, K) where kept
    member = (run[:, None, :] == torch.arange(segments, device=keep.device)[None, :, None]) & (keep[:, None, :] > 0)
    member = member.float()                                                 # (B, K, T)
    return {"mean": (keep.float() / n)[:, None, :],
            "segments": member / member.sum(2, keepdim=True).clamp(min=1)}


def pool(layers: torch.Tensor, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """(L, B, T, D) tokens and {name: (B, P, T)} weights -> {name: (L, B, P * D)}: the P weighted
    averages of each row, side by side (segment-major)."""
    return {name: torch.einsum("bpt,lbtd->lbpd", w.to(layers.dtype), layers).flatten(2)
            for name, w in weights.items()}


class RawTokens(nn.Module):
    """The input itself cut into the tokens ``adapter`` makes of it, in the adapter's order, with no
    weights: what the "raw input" source feeds the shared readout.

      audio  log-mel scaled by the adapter's fixed dataset statistics, ``adapter.patch`` frames per
             token: (B, 50, 2 * 64)
      image  pixels in [0, 1] of each patch, row-major patches, channel-major inside a patch as the
             patch convolution reads them: (B, 64, 3 * 4 * 4)
      text   one-hot BPE ids: (B, T, vocab_size); position 0 holds the [CLS] id and is a prefix, as
             in the model; [PAD] positions are padding, as in the model.
    A learned [CLS] token (image / audio with ``cls_token``) is not part of the input: no prefix here."""

    def __init__(self, adapter):
        super().__init__()
        self.modality = adapter.modality
        self.prefix = adapter.prefix if self.modality == "text" else 0
        if self.modality == "audio":
            self.patch = adapter.patch
            self.token_dim = adapter.proj.in_features                       # patch * n_mels
        elif self.modality == "image":
            self.patch = adapter.patch
            self.token_dim = 3 * self.patch * self.patch
        else:
            self.vocab_size = self.token_dim = adapter.vocab_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.modality == "audio":                                        # (B, M, F) -> (B, F / p, p * M)
            B, M, F = x.shape
            x = (x.float() - LOGMEL_MEAN) / LOGMEL_STD                      # the adapter's fixed scaling
            return x.transpose(1, 2).reshape(B, F // self.patch, self.patch * M)
        if self.modality == "image":                                        # (B, 3, H, W) -> (B, HW / p^2, 3 p^2)
            B, C, H, W = x.shape
            p = self.patch
            patches = (x.float() / 255.0).reshape(B, C, H // p, p, W // p, p)
            return patches.permute(0, 2, 4, 1, 3, 5).reshape(B, (H // p) * (W // p), C * p * p)
        return nn.functional.one_hot(x, self.vocab_size).float()            # (B, T, V)

    def padding_mask(self, x: torch.Tensor) -> torch.Tensor | None:
        if self.modality != "text":
            return None
        pad = x == PAD_ID                                                   # as TextAdapter.padding_mask
        return pad if pad.any() else None


class _NoBlocks(nn.Module):
    def forward(self, x, padding_mask=None, return_layers: bool = False) -> EncoderOutput:
        return EncoderOutput(x, [], [])


class RawInput(nn.Module):
    """The raw input as a backbone: ``RawTokens`` for an adapter and no blocks, so ``layer_features``
    reads it exactly as it reads a model (one layer: layer 0, the tokens themselves)."""

    def __init__(self, adapter):
        super().__init__()
        self.adapter, self.encoder = RawTokens(adapter), _NoBlocks()

    def batch_size(self, x: torch.Tensor, budget: int = 1 << 24) -> int:
        """Rows per chunk of ``x`` so a chunk's tokens stay <= ``budget`` values (one-hot text is wide:
        128 tokens x 4096 ids are 2 MB a row)."""
        return max(1, min(256, budget // self.adapter(x[:1]).numel()))


@torch.no_grad()
def layer_features(backbone, x: torch.Tensor, batch_size: int = 256, device="cpu",
                   select: torch.Tensor | None = None, precision: str = "auto",
                   pools: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
    """Frozen features per layer: {"mean": (L+1, N, D), "segments": (L+1, N, SEGMENTS * D), "cls": (L+1, N, D)}.

    Layer 0 is the embedded input (adapter output), layer l the output of block l. "mean" and
    "segments" read the non-padding content tokens (not [CLS]), or only the tokens where ``select``
    (N, T) is True (e.g. one word's tokens); see ``pooling_weights``. "cls" is the [CLS] token, for
    backbones that have one (an adapter prefix, and not ``RawInput``). ``pools`` picks a subset
    (default: all that apply). ``precision``: "auto" runs the encoder in bf16 where that is native;
    pooling is always fp32."""
    has_cls = bool(backbone.adapter.prefix) and not isinstance(backbone, RawInput)
    pools = tuple(pools) if pools is not None else POOLS + (("cls",) if has_cls else ())
    if "cls" in pools and not has_cls:
        raise ValueError("this backbone has no [CLS] token: no 'cls' pool")
    if isinstance(backbone, RawInput):
        batch_size = min(batch_size, backbone.batch_size(x))
    backbone.eval().to(device)
    autocast = autocast_for(precision, torch.device(device).type)
    out_parts = {name: [] for name in pools}
    chunks = zip(x.split(batch_size), select.split(batch_size) if select is not None else [None] * len(x))
    for chunk, sel in chunks:
        chunk = chunk.to(device)
        pad = backbone.adapter.padding_mask(chunk)
        with autocast():
            tokens = backbone.adapter(chunk)
            out = backbone.encoder(tokens, pad, return_layers=True)
        layers = torch.stack([tokens.float()] + [h.float() for h in out.hidden])   # (L+1, B, T, D)
        if sel is not None:
            keep = sel.to(layers.device)
        else:
            keep = torch.ones(layers.shape[1:3], device=layers.device) if pad is None else (~pad).float()
            keep[:, : backbone.adapter.prefix] = 0
        weights = pooling_weights(keep)
        pooled = pool(layers, {name: weights[name] for name in pools if name != "cls"})
        if "cls" in pools:
            pooled["cls"] = layers[:, :, 0]
        for name in pools:
            out_parts[name].append(pooled[name].cpu())
    return {name: torch.cat(parts, 1).numpy() for name, parts in out_parts.items()}


def raw_features(adapter, x: torch.Tensor, device="cpu") -> dict[str, np.ndarray]:
    """The raw-input source: ``layer_features`` of ``RawInput(adapter)`` (one layer, no "cls")."""
    return layer_features(RawInput(adapter), x, device=device)


@dataclass(frozen=True)
class Standardiser:
    """Per-feature z-scoring with the statistics of the data it was fitted on (the training split:
    nothing about validation or test data leaks into the features). Constant features are centred
    but left unscaled instead of divided by ~0."""
    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, x) -> "Standardiser":
        x = np.asarray(x, dtype=np.float64)
        std = x.std(axis=0)
        return cls(x.mean(axis=0), np.where(std > 1e-8, std, 1.0))

    def __call__(self, x) -> np.ndarray:
        return (np.asarray(x, dtype=np.float64) - self.mean) / self.std


def standardise(train, *others) -> list[np.ndarray]:
    """``train`` and ``others`` z-scored with ``train``'s statistics."""
    s = Standardiser.fit(train)
    return [s(a) for a in (train, *others)]
