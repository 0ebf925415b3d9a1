"""data2vec's contextualised targets: the teacher's top-K FFN outputs, normalised and averaged.

Baevski et al. 2022, Sec. 3.3 (Eq. 1): y_t = (1/K) * sum_{l=L-K+1}^{L} norm(a_t^l), where a_t^l is the
output of block l's feed-forward network before its last residual connection. Each block's output is
normalised WITHOUT learned parameters before averaging, so no single layer dominates the target:
instance norm over time for speech, layer norm over channels for text and vision (data2vec 1.0);
instance norm for all modalities in data2vec 2.0. The average is normalised again where the recipe
says so (data2vec 1.0 vision and 2.0 images: a final layer norm).

A consequence worth knowing: instance norm subtracts each sample's per-channel mean over time, so
instance-normalised targets carry no per-sample offset; only how tokens differ WITHIN a sample. What
is constant across a whole utterance or story is not asked for by such targets, and their mean over
tokens is exactly zero (which is why a [CLS] "mean target" needs the final layer norm). Layer norm
per token keeps it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

NORMS = ("instance", "layer", "none")


def normalise(x: torch.Tensor, how: str) -> torch.Tensor:
    """Parameter-free normalisation of (B, T, D) features.
    instance: each channel over time, per sample;  layer: each token over its channels."""
    if how == "instance":
        return F.instance_norm(x.transpose(1, 2)).transpose(1, 2)
    if how == "layer":
        return F.layer_norm(x, x.shape[-1:])
    if how == "none":
        return x
    raise ValueError(f"unknown normalisation {how!r}; choose from {NORMS}")


def build_targets(ffn_outputs: list[torch.Tensor], top_k: int, layer_norm: str = "layer",
                  final_norm: str = "none") -> torch.Tensor:
    """Average of the top ``top_k`` blocks' FFN outputs, each normalised by ``layer_norm``, the
    average normalised by ``final_norm``. Computed in fp32 whatever the teacher's precision."""
    if not 1 <= top_k <= len(ffn_outputs):
        raise ValueError(f"top_k must be in [1, {len(ffn_outputs)}] (the encoder depth), got {top_k}")
    layers = [normalise(a.float(), layer_norm) for a in ffn_outputs[-top_k:]]
    return normalise(sum(layers) / top_k, final_norm)


def variance_shares(targets: torch.Tensor) -> dict[str, float]:
    """What (N, T, D) targets are made of, as R^2 shares of their variance (pooled over channels):
    ``position``: explained by the token position alone (each position's mean over the N samples);
    ``sample``: explained by the sample alone (each sample's mean over its T tokens): what is constant
    across one image, utterance or story. Instance-normalised targets have ``sample`` = 0 by
    construction. A high ``position`` share means the regression is largely "where am I"."""
    y = targets.float()
    total = (y - y.mean(dim=(0, 1))).pow(2).sum()
    return {"position": float(1.0 - (y - y.mean(dim=0)).pow(2).sum() / total),
            "sample": float(1.0 - (y - y.mean(dim=1, keepdim=True)).pow(2).sum() / total)}
