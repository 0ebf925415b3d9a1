"""Masks: which tokens the student does not see. ``True`` = masked.

Every function is a pure function of (shape, settings, generator): the same seed gives the same mask.
Every mask masks EXACTLY ``round(ratio * n)`` of the ``n`` maskable tokens in every row. data2vec 2.0
needs that (its student encodes only the visible tokens, so every row must keep the same number;
fairseq calls it ``require_same_masks``) and it makes "the ratio you asked for" the ratio you get.
Where a structured sampler (blocks, spans) overshoots or undershoots, the count is fixed at random,
as fairseq does; the structure stays apart from a few tokens.

Every sampler is a batched tensor program that runs where its generator lives (or on ``device``): a
CUDA generator samples on the GPU. The structured samplers draw from the same distributions as the
obvious per-row loops (tests/model/reference_masking.py keeps those; tests/model/test_masking_reference.py compares
their block, blob and span statistics), with a little host synchronisation: one check per call for
spans and inverse blocks, one per placed block for BEiT blocks.

- ``block_mask``: BEiT block-wise masking (Bao et al. 2021, Alg. 1), data2vec 1.0 vision (Sec. 3.2: 60%).
- ``inverse_block_mask``: data2vec 2.0 (Sec. 3): choose blocks to KEEP visible, mask the rest (80%).
- ``span_mask``: wav2vec 2.0 / data2vec 1.0 speech (Sec. 3.2): every time step starts a span of L steps
  with probability p; p=0.065, L=10 masks ~49%. Also data2vec 2.0 text/speech spans.
- ``random_mask`` + ``bert_corrupt``: BERT (Devlin et al. 2019) for data2vec 1.0 text (Sec. 3.2): mask 15%
  of tokens; of those 80% -> [MASK], 10% -> a random token, 10% unchanged.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

MASK_KINDS = ("block", "inverse_block", "span", "random")


@dataclass(frozen=True)
class MaskConfig:
    """How one modality masks. ``ratio`` is the exact fraction of tokens masked per sample."""
    kind: str = "block"          # one of MASK_KINDS
    ratio: float = 0.6
    min_block: int = 4           # block: smallest block, in tokens (BEiT uses 16 on a 14x14 grid)
    block: int = 3               # inverse_block: side of each kept square, in tokens
    span: int = 10               # span: span length L, in tokens

    def __post_init__(self):
        if self.kind not in MASK_KINDS:
            raise ValueError(f"unknown mask kind {self.kind!r}; choose from {MASK_KINDS}")
        masked_count(self.ratio, 1000)  # refuses ratios outside (0, 1) with a clear message
        if min(self.min_block, self.block, self.span) < 1:
            raise ValueError("block and span sizes must be >= 1")


def masked_count(ratio: float, n: int) -> int:
    """round(ratio * n), refusing settings that leave nothing to predict or nothing to see."""
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"mask ratio must be strictly between 0 and 1, got {ratio}: ratio 0 leaves "
                         f"nothing to predict and ratio >= 1 leaves the student nothing to see")
    k = round(ratio * n)
    if not 1 <= k <= n - 1:
        raise ValueError(f"mask ratio {ratio} masks {k} of {n} tokens; at least one token must be "
                         f"masked and one visible")
    return k


def span_ratio(start_prob: float, span: int) -> float:
    """Expected masked fraction when each step starts a span of ``span`` steps with probability
    ``start_prob`` (overlaps allowed): 1 - (1 - p)^L. p=0.065, L=10 -> 0.489."""
    return 1.0 - (1.0 - start_prob) ** span


def start_prob(ratio: float, span: int) -> float:
    """The inverse of ``span_ratio``: the per-step start probability p that masks ``ratio`` on average."""
    return 1.0 - (1.0 - ratio) ** (1.0 / span)


def _device(generator: torch.Generator | None, device=None) -> torch.device:
    """Where a mask is sampled: ``device`` if given, else the generator's device, else the CPU. A CUDA
    generator thus samples on the GPU without a host round trip (torch refuses to mix the two)."""
    if device is None:
        return generator.device if generator is not None else torch.device("cpu")
    device = torch.device(device)
    if generator is not None and generator.device.type != device.type:
        raise ValueError(f"a {generator.device.type} generator cannot sample on {device}; "
                         f"pass a generator on {device} or leave device=None")
    return device


def _cover(sets: torch.Tensor, batch: int, n: int, target: int, generator=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequential covering, for all rows at once: each row draws sets of positions uniformly from the
    rows of ``sets`` (num_sets, P), one after the other, until their union holds at least ``target``
    of its ``n`` positions. Position ``n`` in ``sets`` stands for "off the grid" and never counts.

    Returns ``first`` (batch, n): the draw that first covers each position (the number of draws S
    where none does), and ``stop`` (batch, 1): the draw that reached ``target``. So ``first < stop`` is
    what was covered before that draw and ``first == stop`` is what it added: the outcome of a per-row
    loop that stops at ``target``, without the loop. Rows draw a generous S at first (twice what would
    do without overlaps, plus slack); if a row needs more, every row draws S more (a host sync).
    """
    num_sets, P = sets.shape
    rounds = 2 * math.ceil(target / P) + 8

    def draw():                                                   # (batch, rounds, P) positions
        pick = torch.randint(0, num_sets, (batch * rounds,), generator=generator, device=sets.device)
        return sets.index_select(0, pick).view(batch, rounds, P)  # index_select: a table lookup, fast on CPU

    drawn = draw()
    while True:
        S = drawn.shape[1]
        order = torch.arange(S, device=sets.device).repeat_interleave(P).expand(batch, -1)  # (B, S*P) draw index
        first = torch.full((batch, n + 1), S, device=sets.device)
        first = first.scatter_reduce_(1, drawn.flatten(1), order, "amin")[:, :n]          # (B, n); drop off-grid
        added = torch.zeros(batch, S + 1, dtype=torch.long, device=sets.device)
        added = added.scatter_add_(1, first, torch.ones_like(first))[:, :S]              # (B, S) new per draw
        covered = added.cumsum(1)                                                         # (B, S) union size
        if bool((covered[:, -1] >= target).all()):
            return first, (covered < target).sum(1, keepdim=True)
        drawn = torch.cat([drawn, draw()], dim=1)


def fix_count(candidate: torch.Tensor, k: int, generator: torch.Generator | None = None,
              maskable: torch.Tensor | None = None) -> torch.Tensor:
    """Make every row have exactly ``k`` True entries, keeping as many candidate positions as
    possible: drop random candidates where there are too many, add random others where too few.
    Runs on ``candidate``'s device (the generator must live there too)."""
    allowed = torch.ones_like(candidate) if maskable is None else maskable
    noise = torch.rand(candidate.shape, generator=generator, device=candidate.device)
    # candidates score in [1, 1.5), other allowed tokens in [0, 0.5), forbidden ones -1: top-k picks
    # candidates first (at random among them), then random allowed tokens, never forbidden ones.
    score = torch.where(allowed, candidate.float() + 0.5 * noise, torch.full_like(noise, -1.0))
    idx = score.topk(k, dim=1).indices
    return torch.zeros_like(candidate).scatter_(1, idx, True)


def random_mask(batch: int, length: int, ratio: float, generator=None, device=None) -> torch.Tensor:
    """Uniformly random tokens, exactly round(ratio * length) per row (MAE-style): the top k of random
    scores, one batched top-k on ``device``. (The same masks as before issue 16, for a CPU generator.)"""
    empty = torch.zeros(batch, length, dtype=torch.bool, device=_device(generator, device))
    return fix_count(empty, masked_count(ratio, length), generator)


def block_mask(batch: int, grid: tuple[int, int], ratio: float, min_block: int = 4,
               min_aspect: float = 0.3, generator=None, device=None) -> torch.Tensor:
    """BEiT block-wise masking on an (h, w) patch grid, flattened row-major to (batch, h*w).

    Repeatedly draw a rectangle of area in [min_block, tokens still to mask] and aspect ratio in
    [min_aspect, 1/min_aspect] (log-uniform) at a random place, and mask it if it adds new tokens
    without overshooting; stop at the target count or after 10 fruitless tries, then fix the count.

    All rows run in lockstep. A fruitless try leaves the mask as it was, so the next tries come from
    the same distribution: each round draws the 10 tries of every row still going at once and takes the
    first that works; a row where none works stops. That is the per-row loop's process, one round per
    block (and one host sync per round, to drop the rows that stopped).
    """
    h, w = grid
    k = masked_count(ratio, h * w)
    dev = _device(generator, device)
    tries = 10
    mask = torch.zeros(batch, h * w, dtype=torch.bool, device=dev)
    count = torch.zeros(batch, 1, dtype=torch.long, device=dev)          # masked so far
    going = torch.arange(batch, device=dev)                              # rows still placing blocks
    rows, cols = torch.arange(h, device=dev), torch.arange(w, device=dev)
    log_aspect = math.log(min_aspect)
    while going.numel():
        m, left = mask[going], k - count[going]                          # (b, h*w), (b, 1) still to mask
        u = torch.rand(4, len(going), tries, generator=generator, device=dev)
        low = left.clamp(max=min_block)
        area = low + u[0] * (left - low)                                 # (b, tries) uniform in [low, left]
        aspect = torch.exp(log_aspect * (1 - 2 * u[1]))                  # log-uniform in [a, 1/a]
        bh, bw = torch.round(torch.sqrt(area * aspect)).long(), torch.round(torch.sqrt(area / aspect)).long()
        fits = (bh >= 1) & (bh <= h) & (bw >= 1) & (bw <= w)
        bh, bw = bh.clamp(1, h), bw.clamp(1, w)                          # placeholders where it does not fit
        top, lft = (u[2] * (h - bh + 1)).long(), (u[3] * (w - bw + 1)).long()
        # masked tokens inside each rectangle from the integral image (summed-area table) ii, where
        # ii[r, c] counts the masked tokens above and left of (r, c): 4 corners per rectangle
        ii = F.pad(m.view(-1, h, w).float().cumsum(2).cumsum(1), (1, 0, 1, 0)).flatten(1)  # (b, (h+1)*(w+1))
        corners = torch.cat([top + bh, top, top + bh, top], 1) * (w + 1) + torch.cat([lft + bw, lft + bw, lft, lft], 1)
        c1, c2, c3, c4 = ii.gather(1, corners).long().chunk(4, dim=1)   # (b, tries) each
        new = bh * bw - (c1 - c2 - c3 + c4)                              # tokens the rectangle would add
        works = fits & (new > 0) & (new <= left)                         # (b, tries)
        hit = works.any(1)
        j = works.int().argmax(1, keepdim=True)                          # the first try that works
        t, c, bh, bw = (x.gather(1, j)[hit] for x in (top, lft, bh, bw))  # (hits, 1) the chosen rectangles
        rect = ((rows >= t) & (rows < t + bh))[:, :, None] & ((cols >= c) & (cols < c + bw))[:, None, :]
        mask[going[hit]] = m[hit] | rect.flatten(1)                      # paint it
        count[going] += new.gather(1, j) * hit[:, None]
        going = going[hit & (count[going, 0] < k)]
    short = (count[:, 0] < k).nonzero()[:, 0]                           # rows stopped by 10 fruitless tries
    mask[short] = fix_count(mask[short], k, generator)
    return mask


def inverse_block_mask(batch: int, grid: tuple[int, int], ratio: float, block: int = 3,
                       generator=None, device=None) -> torch.Tensor:
    """data2vec 2.0 inverse block masking: place ``block`` x ``block`` squares (clipped at the border)
    around random centres until the KEPT area reaches (1 - ratio) of the grid; everything else is
    masked. The visible tokens thus come in contiguous blobs, so the student must infer whole regions.
    Where the last square overshoots, random kept tokens are masked again to keep the count exact."""
    h, w = grid
    k = masked_count(ratio, h * w)
    keep_target = h * w - k
    dev = _device(generator, device)
    # one row per centre: the block*block positions of its square, h*w where the square leaves the grid
    lo, hi = -(block // 2), block - block // 2                            # offsets around the centre
    offsets = torch.arange(lo, hi, device=dev)
    centre = torch.arange(h * w, device=dev)[:, None]
    r = centre // w + offsets.repeat_interleave(block)                    # (h*w, block*block)
    c = centre % w + offsets.repeat(block)
    squares = torch.where((r >= 0) & (r < h) & (c >= 0) & (c < w), r * w + c, h * w)
    first, stop = _cover(squares, batch, h * w, keep_target, generator)
    return ~fix_count(first <= stop, keep_target, generator)


def span_mask(batch: int, length: int, ratio: float | None = None, span: int = 10,
              start_prob: float | None = None, generator=None, device=None) -> torch.Tensor:
    """Spans of ``span`` consecutive tokens at random starts (overlaps allowed, as in wav2vec 2.0)
    until exactly round(ratio * length) tokens are masked; the last span is cut short if needed
    (it masks its first not-yet-masked tokens).

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
    dev = _device(generator, device)
    spans = torch.arange(length - span + 1, device=dev)[:, None] + torch.arange(span, device=dev)  # (starts, span)
    first, stop = _cover(spans, batch, length, k, generator)
    last = first == stop                                   # (B, length) what the last span adds
    need = k - (first < stop).sum(1, keepdim=True)         # (B, 1) how much of it is still wanted
    return (first < stop) | (last & (last.cumsum(1) <= need))


def bert_corrupt(ids: torch.Tensor, mask: torch.Tensor, mask_id: int, random_ids: tuple[int, int],
                 generator=None, p_mask: float = 0.8, p_random: float = 0.1,
                 part_of: tuple[int, int] | None = None) -> torch.Tensor:
    """BERT's 80/10/10: of the masked positions, 80% become [MASK], 10% a random token drawn from
    ``random_ids`` = [low, high), 10% keep their token. Returns corrupted ids; the loss still covers
    all masked positions. The random numbers come from the generator's device (ids' device without
    one) and are moved to ids' device, so a CPU generator can corrupt ids on the GPU.
    ``part_of=(first, total)``: ids are rows [first, first + B) of ``total`` rows; the draws are made
    for all of them and these rows kept (a batch split across processes: data2vec.py)."""
    dev = _device(generator, None if generator is not None else ids.device)
    first, total = part_of or (0, len(ids))
    shape, rows = (total, *ids.shape[1:]), slice(first, first + len(ids))
    u = torch.rand(shape, generator=generator, device=dev)[rows].to(ids.device)
    random_tokens = torch.randint(*random_ids, shape, generator=generator, device=dev)[rows].to(ids.device)
    out = ids.clone()
    out = torch.where(mask & (u < p_mask), torch.full_like(ids, mask_id), out)
    out = torch.where(mask & (u >= p_mask) & (u < p_mask + p_random), random_tokens, out)
    return out


def sample_mask(cfg: MaskConfig, batch: int, num_tokens: int, grid: tuple[int, int] | None = None,
                prefix: int = 0, generator=None, device=None) -> torch.Tensor:
    """Dispatch on ``cfg.kind``: the one entry point the algorithm uses. The first ``prefix`` tokens
    (e.g. text's [CLS]) are never masked; the ratio applies to the rest. (batch, num_tokens) bool on
    ``device`` (default: the generator's device, else the CPU)."""
    n = num_tokens - prefix
    dev = _device(generator, device)
    if cfg.kind in ("block", "inverse_block"):
        if grid is None or grid[0] * grid[1] != n:
            raise ValueError(f"{cfg.kind} masking needs a 2-D token grid covering {n} tokens, got {grid}")
        fn = block_mask if cfg.kind == "block" else inverse_block_mask
        size = cfg.min_block if cfg.kind == "block" else cfg.block
        mask = fn(batch, grid, cfg.ratio, size, generator=generator, device=dev)
    elif cfg.kind == "span":
        mask = span_mask(batch, n, cfg.ratio, cfg.span, generator=generator, device=dev)
    elif cfg.kind == "random":
        mask = random_mask(batch, n, cfg.ratio, generator, device=dev)
    else:
        raise ValueError(f"unknown mask kind {cfg.kind!r}; choose from {MASK_KINDS}")
    return torch.cat([torch.zeros(batch, prefix, dtype=torch.bool, device=dev), mask], dim=1)
