"""Frozen features of an encoder, per layer, and the one standardiser every probe and control uses."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from d2v_lab.train.device import autocast_for


@torch.no_grad()
def layer_features(backbone, x: torch.Tensor, batch_size: int = 256, device="cpu",
                   select: torch.Tensor | None = None, precision: str = "auto") -> dict[str, np.ndarray]:
    """Frozen features per layer: {"mean": (L+1, N, D), "cls": ...}. Layer 0 is the embedded input
    (adapter output), layer l the output of block l. "mean" averages the non-padding content tokens
    (not [CLS]), or only the tokens where ``select`` (N, T) is True (e.g. one word's tokens); "cls"
    (models with a [CLS] token) is that token. ``precision``: "auto" runs the encoder in bf16 where that is native."""
    backbone.eval().to(device)
    autocast = autocast_for(precision, torch.device(device).type)
    means, cls = [], []
    chunks = zip(x.split(batch_size), select.split(batch_size) if select is not None else [None] * len(x))
    for chunk, sel in chunks:
        chunk = chunk.to(device)
        pad = backbone.adapter.padding_mask(chunk)
        with autocast():
            tokens = backbone.adapter(chunk)
            out = backbone.encoder(tokens, pad, return_layers=True)
        layers = torch.stack([tokens.float()] + [h.float() for h in out.hidden])   # (L+1, B, T, D)
        if sel is not None:
            keep = sel.to(layers.device).float()
        else:
            keep = torch.ones(layers.shape[1:3], device=layers.device) if pad is None else (~pad).float()
            keep[:, : backbone.adapter.prefix] = 0
        means.append((layers * keep[None, :, :, None]).sum(2) / keep.sum(1)[None, :, None])
        cls.append(layers[:, :, 0])
    feats = {"mean": torch.cat(means, 1).cpu().numpy()}
    if backbone.adapter.prefix:
        feats["cls"] = torch.cat(cls, 1).cpu().numpy()
    return feats


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
