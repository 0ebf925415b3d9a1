"""A pre-LN Transformer encoder that hands back what data2vec's targets need in the same pass.

Each block returns its output AND its feed-forward (FFN) output taken before the last residual
connection: data2vec (Baevski et al. 2022, Sec. 3.3) builds its targets from exactly those FFN
outputs of the teacher's top K blocks, so no second pass (and no hooks) are needed. Attention is
``torch.nn.functional.scaled_dot_product_attention``, which picks flash / memory-efficient kernels
on a GPU and a fused kernel on the CPU.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass(frozen=True)
class EncoderConfig:
    dim: int = 192
    depth: int = 6
    heads: int = 3
    mlp_ratio: float = 4.0
    dropout: float = 0.0       # on attention weights and FFN outputs
    drop_path: float = 0.0     # stochastic depth, linearly increasing with depth

    def __post_init__(self):
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} is not divisible by heads {self.heads}")


@dataclass
class EncoderOutput:
    x: torch.Tensor                         # (B, T, D) final output, after the final LayerNorm
    hidden: list[torch.Tensor] | None       # per block (B, T, D) residual stream; for probes
    ffn: list[torch.Tensor] | None          # per block (B, T, D) FFN output before the residual; targets


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.proj(x.transpose(1, 2).reshape(B, T, D))


class Block(nn.Module):
    def __init__(self, cfg: EncoderConfig, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.dim)
        self.attn = Attention(cfg.dim, cfg.heads, cfg.dropout)
        self.norm2 = nn.LayerNorm(cfg.dim)
        hidden = int(cfg.dim * cfg.mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(cfg.dim, hidden), nn.GELU(), nn.Linear(hidden, cfg.dim),
                                 nn.Dropout(cfg.dropout))
        self.drop_path = drop_path

    def _drop_path(self, x: torch.Tensor) -> torch.Tensor:
        """Stochastic depth: drop the whole branch for random samples while training."""
        if not self.training or self.drop_path == 0.0:
            return x
        keep = torch.rand(x.shape[0], 1, 1, device=x.device) >= self.drop_path
        return x * keep / (1.0 - self.drop_path)

    def forward(self, x, attn_mask=None) -> tuple[torch.Tensor, torch.Tensor]:
        x = x + self._drop_path(self.attn(self.norm1(x), attn_mask))
        ffn = self.mlp(self.norm2(x))
        return x + self._drop_path(ffn), ffn


class Encoder(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.cfg = cfg
        rates = torch.linspace(0, cfg.drop_path, cfg.depth).tolist()
        self.blocks = nn.ModuleList(Block(cfg, r) for r in rates)
        self.norm = nn.LayerNorm(cfg.dim)
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None,
                return_layers: bool = False) -> EncoderOutput:
        """x: (B, T, D) tokens with positions. padding_mask: (B, T) True at padding (not attended to)."""
        attn_mask = None if padding_mask is None else ~padding_mask[:, None, None, :]
        hidden, ffn = [], []
        for block in self.blocks:
            x, f = block(x, attn_mask)
            if return_layers:
                hidden.append(x)
                ffn.append(f)
        return EncoderOutput(self.norm(x), hidden if return_layers else None, ffn if return_layers else None)


def _init_weights(m: nn.Module) -> None:
    """ViT/BERT-style init: truncated normal(0.02) weights, zero biases, unit LayerNorms."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
