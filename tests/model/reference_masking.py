"""REFERENCE ONLY: the host-side masking samplers as they were before issue 16 (per-row Python/numpy
loops), copied verbatim from ``d2v_lab/model/masking.py`` at commit 040545d. Nothing in ``d2v_lab``
imports this file; it imports the parts that did not change (MaskConfig, masked_count, span_ratio).
The tests compare the statistics of the vectorised samplers (block sizes, span
lengths, visible blobs) with these, and ``benchmarks/masking.py`` times both.

The original module docstring follows.

Masks: which tokens the student does not see. ``True`` = masked.

Every function is a pure function of (shape, settings, generator): the same seed gives the same mask.
Every mask masks EXACTLY ``round(ratio * n)`` of the ``n`` maskable tokens in every row. data2vec 2.0
needs that (its student encodes only the visible tokens, so every row must keep the same number;
fairseq calls it ``require_same_masks``) and it makes "the ratio you asked for" the ratio you get.
Where a structured sampler (blocks, spans) overshoots or undershoots, the count is fixed at random,
as fairseq does; the structure stays apart from a few tokens.

- ``block_mask``: BEiT block-wise masking (Bao et al. 2021, Alg. 1), data2vec 1.0 vision (Sec. 3.2: 60%).
- ``inverse_block_mask``: data2vec 2.0 (Sec. 3): choose blocks to KEEP visible, mask the rest (80%).
- ``span_mask``: wav2vec 2.0 / data2vec 1.0 speech (Sec. 3.2): every time step starts a span of L steps
  with probability p; p=0.065, L=10 masks ~49%. Also data2vec 2.0 text/speech spans.
- ``random_mask`` + ``bert_corrupt``: BERT (Devlin et al. 2019) for data2vec 1.0 text (Sec. 3.2): mask 15%
  of tokens; of those 80% -> [MASK], 10% -> a random token, 10% unchanged.
"""
from __future__ import annotations

import math

import numpy as np
import torch

# The config, the exact count and the span arithmetic did not change: shared, not copied.
from d2v_lab.model.masking import MASK_KINDS, MaskConfig, masked_count, span_ratio  # noqa: E402


def _rng(generator: torch.Generator | None) -> np.random.Generator:
    """A numpy generator seeded from the torch one, for the small per-row Python loops."""
    return np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=generator)))


def fix_count(candidate: torch.Tensor, k: int, generator: torch.Generator | None = None,
              maskable: torch.Tensor | None = None) -> torch.Tensor:
    """Make every row have exactly ``k`` True entries, keeping as many candidate positions as
    possible: drop random candidates where there are too many, add random others where too few."""
    allowed = torch.ones_like(candidate) if maskable is None else maskable
    noise = torch.rand(candidate.shape, generator=generator)
    # candidates score in [1, 1.5), other allowed tokens in [0, 0.5), forbidden ones -1: top-k picks
    # candidates first (at random among them), then random allowed tokens, never forbidden ones.
    score = torch.where(allowed, candidate.float() + 0.5 * noise, torch.full_like(noise, -1.0))
    idx = score.topk(k, dim=1).indices
    return torch.zeros_like(candidate).scatter_(1, idx, True)


def random_mask(batch: int, length: int, ratio: float, generator=None) -> torch.Tensor:
    """Uniformly random tokens, exactly round(ratio * length) per row (MAE-style)."""
    return fix_count(torch.zeros(batch, length, dtype=torch.bool), masked_count(ratio, length), generator)


def block_mask(batch: int, grid: tuple[int, int], ratio: float, min_block: int = 4,
               min_aspect: float = 0.3, generator=None) -> torch.Tensor:
    """BEiT block-wise masking on an (h, w) patch grid, flattened row-major to (batch, h*w).

    Repeatedly draw a rectangle of area in [min_block, tokens still to mask] and aspect ratio in
    [min_aspect, 1/min_aspect] (log-uniform) at a random place, and mask it if it adds new tokens
    without overshooting; stop at the target count or after 10 fruitless tries, then fix the count.
    """
    h, w = grid
    k = masked_count(ratio, h * w)
    rng = _rng(generator)
    out = torch.zeros(batch, h * w, dtype=torch.bool)
    log_aspect = (math.log(min_aspect), -math.log(min_aspect))
    for b in range(batch):
        m = np.zeros((h, w), dtype=bool)
        fails = 0
        while m.sum() < k and fails < 10:
            left_to_mask = k - int(m.sum())
            area = rng.uniform(min(min_block, left_to_mask), left_to_mask)
            aspect = math.exp(rng.uniform(*log_aspect))
            bh, bw = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
            if not (1 <= bh <= h and 1 <= bw <= w):
                fails += 1
                continue
            top, left = rng.integers(0, h - bh + 1), rng.integers(0, w - bw + 1)
            new = int((~m[top:top + bh, left:left + bw]).sum())
            if 0 < new <= left_to_mask:
                m[top:top + bh, left:left + bw] = True
                fails = 0
            else:
                fails += 1
        out[b] = torch.from_numpy(m.reshape(-1))
    return fix_count(out, k, generator)


def inverse_block_mask(batch: int, grid: tuple[int, int], ratio: float, block: int = 3,
                       generator=None) -> torch.Tensor:
    """data2vec 2.0 inverse block masking: place ``block`` x ``block`` squares (clipped at the border)
    around random centres until the KEPT area reaches (1 - ratio) of the grid; everything else is
    masked. The visible tokens thus come in contiguous blobs, so the student must infer whole regions."""
    h, w = grid
    k = masked_count(ratio, h * w)
    keep_target = h * w - k
    rng = _rng(generator)
    keep = torch.zeros(batch, h * w, dtype=torch.bool)
    lo, hi = -(block // 2), block - block // 2  # square offsets around its centre
    for b in range(batch):
        m = np.zeros((h, w), dtype=bool)
        while m.sum() < keep_target:
            r, c = rng.integers(0, h), rng.integers(0, w)
            m[max(r + lo, 0):r + hi, max(c + lo, 0):c + hi] = True
        keep[b] = torch.from_numpy(m.reshape(-1))
    return ~fix_count(keep, keep_target, generator)


def span_mask(batch: int, length: int, ratio: float | None = None, span: int = 10,
              start_prob: float | None = None, generator=None) -> torch.Tensor:
    """Spans of ``span`` consecutive tokens at random starts (overlaps allowed, as in wav2vec 2.0)
    until exactly round(ratio * length) tokens are masked; the last span is cut short if needed.

    Give either ``ratio`` or ``start_prob`` (p); with p the ratio is the expected coverage of the
    wav2vec scheme, 1 - (1 - p)^span (p=0.065, span=10 -> 49% masked).
    """
    if (ratio is None) == (start_prob is None):
        raise ValueError("give exactly one of ratio or start_prob")
    if span < 1 or span > length:
        raise ValueError(f"span length must be in [1, {length}], got {span}")
    if ratio is None:
        if not 0.0 < start_prob < 1.0:
            raise ValueError(f"start_prob must be strictly between 0 and 1, got {start_prob}")
        ratio = span_ratio(start_prob, span)
    k = masked_count(ratio, length)
    rng = _rng(generator)
    out = torch.zeros(batch, length, dtype=torch.bool)
    for b in range(batch):
        m = np.zeros(length, dtype=bool)
        count = 0
        while count < k:
            start = rng.integers(0, length - span + 1)
            new = np.flatnonzero(~m[start:start + span])[: k - count] + start
            m[new] = True
            count += len(new)
        out[b] = torch.from_numpy(m)
    return out


def bert_corrupt(ids: torch.Tensor, mask: torch.Tensor, mask_id: int, random_ids: tuple[int, int],
                 generator=None, p_mask: float = 0.8, p_random: float = 0.1) -> torch.Tensor:
    """BERT's 80/10/10: of the masked positions, 80% become [MASK], 10% a random token drawn from
    ``random_ids`` = [low, high), 10% keep their token. Returns corrupted ids; the loss still covers
    all masked positions."""
    u = torch.rand(ids.shape, generator=generator)
    random_tokens = torch.randint(*random_ids, ids.shape, generator=generator)
    out = ids.clone()
    out = torch.where(mask & (u < p_mask), torch.full_like(ids, mask_id), out)
    out = torch.where(mask & (u >= p_mask) & (u < p_mask + p_random), random_tokens, out)
    return out


def sample_mask(cfg: MaskConfig, batch: int, num_tokens: int, grid: tuple[int, int] | None = None,
                prefix: int = 0, generator=None) -> torch.Tensor:
    """Dispatch on ``cfg.kind``: the one entry point the algorithm uses. The first ``prefix`` tokens
    (e.g. text's [CLS]) are never masked; the ratio applies to the rest."""
    n = num_tokens - prefix
    if cfg.kind in ("block", "inverse_block"):
        if grid is None or grid[0] * grid[1] != n:
            raise ValueError(f"{cfg.kind} masking needs a 2-D token grid covering {n} tokens, got {grid}")
        fn = block_mask if cfg.kind == "block" else inverse_block_mask
        size = cfg.min_block if cfg.kind == "block" else cfg.block
        mask = fn(batch, grid, cfg.ratio, size, generator=generator)
    elif cfg.kind == "span":
        mask = span_mask(batch, n, cfg.ratio, cfg.span, generator=generator)
    elif cfg.kind == "random":
        mask = random_mask(batch, n, cfg.ratio, generator)
    else:
        raise ValueError(f"unknown mask kind {cfg.kind!r}; choose from {MASK_KINDS}")
    return torch.cat([torch.zeros(batch, prefix, dtype=torch.bool), mask], dim=1)
