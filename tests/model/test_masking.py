"""Masking: exact counts, reproducibility, the structure each scheme promises, BERT's 80/10/10, and
refusal of settings that leave nothing to predict or nothing to see."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from d2v_lab.model.masking import (
    MaskConfig,
    bert_corrupt,
    block_mask,
    inverse_block_mask,
    random_mask,
    sample_mask,
    span_mask,
    span_ratio,
)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# one callable per mask function: (batch, n, ratio, generator) -> mask; block kinds on a square grid
def _grid(n):
    side = int(round(n ** 0.5))
    assert side * side == n
    return side, side


MASKERS = {
    "random": lambda b, n, r, g: random_mask(b, n, r, g),
    "block": lambda b, n, r, g: block_mask(b, _grid(n), r, generator=g),
    "inverse_block": lambda b, n, r, g: inverse_block_mask(b, _grid(n), r, generator=g),
    "span": lambda b, n, r, g: span_mask(b, n, r, span=4, generator=g),
}


def neighbour_agreement(mask: torch.Tensor, grid: tuple[int, int]) -> float:
    """Of the 4-neighbours of True tokens, the fraction that are True too. Independent random
    tokens give about the ratio; blobs (rectangles) give much more."""
    g = mask.view(-1, *grid)
    same, total = 0, 0
    for a, b in [(g[:, 1:, :], g[:, :-1, :]), (g[:, :, 1:], g[:, :, :-1])]:
        same += 2 * int((a & b).sum())
        total += int(a.sum()) + int(b.sum())
    return same / total


def runs(row: torch.Tensor) -> list[int]:
    """Lengths of the maximal runs of True in a 1-D bool tensor."""
    out, n = [], 0
    for v in row.tolist() + [False]:
        if v:
            n += 1
        elif n:
            out.append(n)
            n = 0
    return out


# --- exact counts, dtype, shape, reproducibility ----------------------------------------------------

@pytest.mark.parametrize("kind", list(MASKERS))
@pytest.mark.parametrize("n,ratio", [(64, 0.6), (64, 0.8), (196, 0.5), (100, 0.15), (49, 0.33)])
def test_every_row_masks_exactly_round_ratio_n(kind, n, ratio):
    m = MASKERS[kind](6, n, ratio, gen(1))
    assert m.dtype == torch.bool and m.shape == (6, n)
    assert m.sum(dim=1).tolist() == [round(ratio * n)] * 6


@pytest.mark.parametrize("kind", list(MASKERS))
def test_same_seed_same_mask_other_seed_other_mask(kind):
    a, b, c = (MASKERS[kind](4, 64, 0.5, gen(s)) for s in (7, 7, 8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not all(torch.equal(a[0], a[i]) for i in range(1, 4))  # rows are drawn independently


def test_global_rng_is_used_without_generator():
    torch.manual_seed(3)
    a = block_mask(2, (8, 8), 0.5)
    torch.manual_seed(3)
    assert torch.equal(a, block_mask(2, (8, 8), 0.5))


# --- structure: blocks, inverse blocks, spans -------------------------------------------------------

@pytest.mark.parametrize("grid,ratio", [((14, 14), 0.5), ((8, 8), 0.6)])
def test_block_mask_is_contiguous_far_beyond_random(grid, ratio):
    n = grid[0] * grid[1]
    blocks = neighbour_agreement(block_mask(64, grid, ratio, generator=gen(0)), grid)
    rand = neighbour_agreement(random_mask(64, n, ratio, gen(0)), grid)
    assert abs(rand - ratio) < 0.05      # the statistic's baseline is the ratio itself
    assert blocks > 0.75 and blocks > rand + 0.2


@pytest.mark.parametrize("grid", [(14, 14), (8, 8)])
def test_inverse_block_mask_keeps_visible_tokens_in_blobs(grid):
    n = grid[0] * grid[1]
    m = inverse_block_mask(64, grid, 0.8, block=3, generator=gen(0))
    assert m.sum(dim=1).tolist() == [round(0.8 * n)] * 64
    visible = neighbour_agreement(~m, grid)
    rand = neighbour_agreement(~random_mask(64, n, 0.8, gen(0)), grid)
    assert abs(rand - 0.2) < 0.05
    assert visible > 0.45 and visible > rand + 0.25


@pytest.mark.parametrize("length,span,ratio", [(50, 10, 0.49), (50, 5, 0.5), (200, 10, 0.3), (37, 4, 0.6)])
def test_span_mask_runs_are_at_least_one_span_except_one_cut_short(length, span, ratio):
    m = span_mask(40, length, ratio, span=span, generator=gen(2))
    assert m.sum(dim=1).tolist() == [round(ratio * length)] * 40
    for row in m:
        short = [r for r in runs(row) if r < span]
        assert len(short) <= 1, runs(row)


def test_span_ratio_formula_and_start_prob_count():
    assert span_ratio(0.065, 10) == pytest.approx(1 - 0.935 ** 10)
    assert span_ratio(0.065, 10) == pytest.approx(0.4894, abs=1e-4)
    for T in (50, 100, 333):
        m = span_mask(8, T, start_prob=0.065, span=10, generator=gen(0))
        assert m.sum(dim=1).tolist() == [round(span_ratio(0.065, 10) * T)] * 8


def test_span_ratio_is_the_expected_coverage_of_the_wav2vec_scheme():
    """Monte Carlo of the scheme the formula describes: every step independently starts a span of L
    steps with probability p. Far from the sequence start, coverage is 1 - (1 - p)^L."""
    rng = np.random.default_rng(0)
    p, L, T = 0.065, 10, 20_000
    cover = []
    for p_, L_ in [(p, L), (0.2, 5)]:
        starts = rng.random((8, T)) < p_
        covered = np.zeros_like(starts)
        for j in range(L_):
            covered[:, j:] |= starts[:, : T - j]
        cover.append((covered[:, L_:].mean(), span_ratio(p_, L_)))
    for got, expected in cover:
        assert got == pytest.approx(expected, abs=0.01)
    assert cover[0][1] == pytest.approx(0.489, abs=0.001)


def test_span_mask_needs_exactly_one_of_ratio_and_start_prob():
    with pytest.raises(ValueError, match="exactly one"):
        span_mask(1, 50)
    with pytest.raises(ValueError, match="exactly one"):
        span_mask(1, 50, 0.5, start_prob=0.065)
    with pytest.raises(ValueError, match="start_prob"):
        span_mask(1, 50, start_prob=1.2)


@pytest.mark.parametrize("length,span,ratio", [(40, 4, 0.95), (12, 5, 0.9), (30, 1, 0.5)])
def test_span_mask_exact_where_rows_need_many_spans(length, span, ratio):
    """Near-total coverage needs far more spans than usual (the edges are hard to hit): rows keep
    drawing until they reach the count, and still only the last span is cut short."""
    m = span_mask(64, length, ratio, span=span, generator=gen(3))
    assert m.sum(dim=1).tolist() == [round(ratio * length)] * 64
    for row in m:
        assert len([r for r in runs(row) if r < span]) <= 1, runs(row)


@pytest.mark.parametrize("grid,ratio,block", [((8, 8), 0.05, 3), ((5, 7), 0.2, 2), ((8, 8), 0.5, 1)])
def test_inverse_block_mask_exact_where_rows_need_many_squares(grid, ratio, block):
    n = grid[0] * grid[1]
    m = inverse_block_mask(64, grid, ratio, block=block, generator=gen(3))
    assert m.sum(dim=1).tolist() == [round(ratio * n)] * 64


@pytest.mark.parametrize("grid,ratio,min_block", [((5, 7), 0.6, 4), ((14, 14), 0.4, 16), ((3, 3), 0.9, 1)])
def test_block_mask_exact_on_other_grids(grid, ratio, min_block):
    m = block_mask(64, grid, ratio, min_block, generator=gen(3))
    assert m.sum(dim=1).tolist() == [round(ratio * grid[0] * grid[1])] * 64


# --- sample_mask: dispatch and prefix ----------------------------------------------------------------

@pytest.mark.parametrize("cfg", [MaskConfig("random", 0.15), MaskConfig("random", 0.48),
                                 MaskConfig("span", 0.5, span=5)])
def test_prefix_is_never_masked_and_ratio_applies_to_the_rest(cfg):
    m = sample_mask(cfg, 32, 64, prefix=1, generator=gen(0))
    assert m.shape == (32, 64)
    assert not m[:, 0].any()
    assert m.sum(dim=1).tolist() == [round(cfg.ratio * 63)] * 32


def test_sample_mask_dispatches_block_kinds_on_the_grid():
    m = sample_mask(MaskConfig("block", 0.6, min_block=4), 16, 64, grid=(8, 8), generator=gen(0))
    assert m.sum(dim=1).tolist() == [38] * 16
    assert torch.equal(m, block_mask(16, (8, 8), 0.6, 4, generator=gen(0)))
    m = sample_mask(MaskConfig("inverse_block", 0.8, block=3), 16, 64, grid=(8, 8), generator=gen(0))
    assert torch.equal(m, inverse_block_mask(16, (8, 8), 0.8, 3, generator=gen(0)))


@pytest.mark.parametrize("kind", ["block", "inverse_block"])
def test_block_kinds_need_a_matching_grid(kind):
    with pytest.raises(ValueError, match="grid"):
        sample_mask(MaskConfig(kind, 0.5), 2, 64)
    with pytest.raises(ValueError, match="grid"):
        sample_mask(MaskConfig(kind, 0.5), 2, 64, grid=(4, 8))


# --- BERT 80/10/10 -----------------------------------------------------------------------------------

def test_bert_corrupt_80_10_10_and_unmasked_untouched():
    MASK_ID, low, high = 4, 100, 200
    ids = torch.randint(300, 1000, (400, 500), generator=gen(0))  # originals outside [low, high)
    mask = random_mask(400, 500, 0.5, gen(1))
    out = bert_corrupt(ids, mask, MASK_ID, (low, high), generator=gen(2))
    assert out.dtype == ids.dtype and out.shape == ids.shape
    assert torch.equal(out[~mask], ids[~mask])
    o, i = out[mask], ids[mask]
    to_mask, kept = o == MASK_ID, o == i
    rand = ~to_mask & ~kept
    assert to_mask.float().mean() == pytest.approx(0.8, abs=0.01)
    assert rand.float().mean() == pytest.approx(0.1, abs=0.01)
    assert kept.float().mean() == pytest.approx(0.1, abs=0.01)
    r = o[rand]
    assert int(r.min()) == low and int(r.max()) == high - 1      # [low, high), the whole range
    assert r.float().mean() == pytest.approx((low + high - 1) / 2, abs=1.0)
    assert torch.equal(out, bert_corrupt(ids, mask, MASK_ID, (low, high), generator=gen(2)))


# --- edge values -------------------------------------------------------------------------------------

BAD_RATIOS = [0.0, 1.0, 1.5, -0.1]


@pytest.mark.parametrize("ratio", BAD_RATIOS)
@pytest.mark.parametrize("kind", list(MASKERS))
def test_ratio_outside_open_unit_interval_raises(kind, ratio):
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        MASKERS[kind](2, 64, ratio, gen(0))


@pytest.mark.parametrize("ratio", BAD_RATIOS)
@pytest.mark.parametrize("kind", ["block", "inverse_block", "span", "random"])
def test_mask_config_refuses_bad_ratio(kind, ratio):
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        MaskConfig(kind, ratio)


def test_mask_config_refuses_unknown_kind_and_zero_sizes():
    with pytest.raises(ValueError, match="unknown mask kind"):
        MaskConfig("checkerboard", 0.5)
    with pytest.raises(ValueError, match=">= 1"):
        MaskConfig("span", 0.5, span=0)


@pytest.mark.parametrize("kind", list(MASKERS))
@pytest.mark.parametrize("ratio,what", [(0.05, "masks 0 of 9"), (0.95, "masks 9 of 9")])
def test_ratio_rounding_to_none_or_all_raises(kind, ratio, what):
    with pytest.raises(ValueError, match=what):
        MASKERS[kind](1, 9, ratio, gen(0))


def test_span_longer_than_sequence_raises():
    with pytest.raises(ValueError, match="span length"):
        span_mask(1, 8, 0.5, span=9)
    with pytest.raises(ValueError, match="span length"):
        sample_mask(MaskConfig("span", 0.5, span=10), 1, 8)


# --- devices -----------------------------------------------------------------------------------------

DEVICE_CASES = [MaskConfig("block", 0.6, min_block=4), MaskConfig("inverse_block", 0.8, block=3),
                MaskConfig("span", 0.5, span=5), MaskConfig("random", 0.15)]


def _sample(cfg, generator=None, device=None, batch=8):
    grid = (8, 8) if "block" in cfg.kind else None
    return sample_mask(cfg, batch, 65, grid=grid, prefix=1, generator=generator, device=device)


@pytest.mark.parametrize("cfg", DEVICE_CASES, ids=lambda c: c.kind)
def test_masks_live_on_the_generators_device_or_the_one_asked_for(cfg):
    m = _sample(cfg, gen(0))
    assert m.device.type == "cpu" and m.shape == (8, 65) and not m[:, 0].any()
    assert torch.equal(m, _sample(cfg, gen(0), device="cpu"))          # "cpu" = the generator's device
    torch.manual_seed(0)
    assert _sample(cfg, device=torch.device("cpu")).device.type == "cpu"  # no generator: the global one


@pytest.mark.parametrize("cfg", DEVICE_CASES, ids=lambda c: c.kind)
def test_a_generator_on_another_device_is_refused_clearly(cfg):
    with pytest.raises(ValueError, match="cpu generator cannot sample on cuda"):
        _sample(cfg, gen(0), device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("cfg", DEVICE_CASES, ids=lambda c: c.kind)
def test_cuda_generator_samples_exact_reproducible_masks_on_the_gpu(cfg):
    def g(seed):
        return torch.Generator("cuda").manual_seed(seed)

    m = _sample(cfg, g(0), batch=512)
    assert m.device.type == "cuda" and not m[:, 0].any()
    assert m.sum(dim=1).tolist() == [round(cfg.ratio * 64)] * 512
    assert torch.equal(m, _sample(cfg, g(0), batch=512))
    assert not torch.equal(m, _sample(cfg, g(1), batch=512))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_bert_corrupt_on_gpu_ids_with_a_cpu_generator():
    ids = torch.randint(10, 100, (4, 20), generator=gen(0))
    mask = random_mask(4, 20, 0.5, gen(1))
    out = bert_corrupt(ids.cuda(), mask.cuda(), 4, (5, 100), generator=gen(2))
    assert out.device.type == "cuda"
    assert torch.equal(out.cpu(), bert_corrupt(ids, mask, 4, (5, 100), generator=gen(2)))
