"""The batched samplers of d2v_lab.model.masking against the per-row loops they replace
(tests/model/reference_masking.py): the same block, blob and span statistics over 4,096 rows, and the very
same masks where the sampling itself did not change (random masks, BERT's corruption). (BEiT's 14x14
grid uses 2,048 rows: the reference loop needs seconds there.)

Both sides are seeded, so every check is deterministic. The tolerances are statistical, not fitted:
- per-row statistics (blobs per row, largest blob) are independent across rows, so their histograms
  go through a chi-square test of homogeneity (p > 0.001) and their means through a z test (|z| < 4,
  a band a correct sampler leaves once in ~16,000 checks);
- pooled blob sizes are correlated within a row (the z test would be too strict), so their mean must
  agree within 5% (the reference differs from itself by up to ~2% between seeds) and their 10/50/90%
  quantiles within 1 token (2 on the 14x14 grid, where blobs are larger);
- the masked frequency of every position (edges, corners) must agree within 5 standard errors.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage, stats

from d2v_lab.model import masking

import reference_masking as ref

ROWS = 4096


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def blobs(mask: torch.Tensor, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """4-connected blobs of True in each row of a (rows, prod(shape)) mask, laid out as ``shape``
    ((h, w) grid or (length,) sequence: then the blobs are runs). Returns blobs per row (rows,),
    the largest blob of each row (rows,) and the sizes of all blobs, pooled."""
    m = mask.numpy().reshape(len(mask), *shape)
    if m.ndim == 2:
        m = m[:, None, :]                                   # a sequence is a 1 x length grid
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = ndimage.generate_binary_structure(2, 1)  # 4-neighbours within a row, never across rows
    labels, n = ndimage.label(m, structure)
    sizes = np.bincount(labels.ravel())[1:]
    row_of = np.zeros(n + 1, dtype=int)
    row_of[labels.reshape(len(m), -1)] = np.arange(len(m))[:, None]
    row_of = row_of[1:]
    largest = np.zeros(len(m), dtype=int)
    np.maximum.at(largest, row_of, sizes)
    return np.bincount(row_of, minlength=len(m)), largest, sizes


def homogeneity_p(a: np.ndarray, b: np.ndarray) -> float:
    """Chi-square test that two samples of integers come from one distribution; values seen fewer
    than 10 times in both samples together share one bin."""
    values = np.union1d(a, b)
    counts = np.array([[(x == v).sum() for v in values] for x in (a, b)])
    common = counts.sum(0) >= 10
    table = np.concatenate([counts[:, common], counts[:, ~common].sum(1, keepdims=True)], axis=1)
    return float(stats.chi2_contingency(table[:, table.sum(0) > 0])[1])


def z(a: np.ndarray, b: np.ndarray) -> float:
    return float((a.mean() - b.mean()) / np.sqrt(a.var() / len(a) + b.var() / len(b)))


# (name, sampler(module, generator), layout, which blobs carry the structure)
CASES = {
    "block 8x8 (data2vec 1.0)": (lambda mod, g: mod.block_mask(ROWS, (8, 8), 0.6, 4, generator=g), (8, 8),
                                 ("masked", "visible")),
    "block 14x14 (BEiT)": (lambda mod, g: mod.block_mask(ROWS // 2, (14, 14), 0.4, 16, generator=g), (14, 14),
                           ("masked", "visible")),
    "inverse_block 8x8 (data2vec 2.0)": (lambda mod, g: mod.inverse_block_mask(ROWS, (8, 8), 0.8, 3, generator=g),
                                         (8, 8), ("visible",)),
    "inverse_block 14x14": (lambda mod, g: mod.inverse_block_mask(ROWS, (14, 14), 0.8, 3, generator=g), (14, 14),
                            ("visible",)),
    "span 50 L10 (data2vec 1.0)": (lambda mod, g: mod.span_mask(ROWS, 50, 0.49, 10, generator=g), (50,),
                                   ("masked", "visible")),
    "span 50 L5 (data2vec 2.0)": (lambda mod, g: mod.span_mask(ROWS, 50, 0.5, 5, generator=g), (50,),
                                  ("masked", "visible")),
}


@pytest.fixture(scope="module", params=list(CASES))
def pair(request):
    """(reference masks, new masks, layout, blob kinds) for one case; the seeds differ on purpose."""
    sampler, shape, kinds = CASES[request.param]
    return sampler(ref, gen(0)), sampler(masking, gen(1)), shape, kinds


def test_same_exact_count_as_the_reference(pair):
    old, new, _, _ = pair
    assert new.shape == old.shape and torch.equal(new.sum(1), old.sum(1))


def test_blobs_per_row_and_largest_blob_match_the_reference(pair):
    old, new, shape, kinds = pair
    for kind in kinds:
        flip = kind == "visible"
        a, b = blobs(~old if flip else old, shape), blobs(~new if flip else new, shape)
        for name, x, y in (("blobs per row", a[0], b[0]), ("largest blob", a[1], b[1])):
            assert homogeneity_p(x, y) > 1e-3, (kind, name)
            assert abs(z(x, y)) < 4, (kind, name, x.mean(), y.mean())


def test_pooled_blob_sizes_match_the_reference(pair):
    old, new, shape, kinds = pair
    slack = 2 if shape == (14, 14) else 1
    for kind in kinds:
        flip = kind == "visible"
        a, b = blobs(~old if flip else old, shape)[2], blobs(~new if flip else new, shape)[2]
        assert b.mean() == pytest.approx(a.mean(), rel=0.05), kind
        qa, qb = np.quantile(a, [0.1, 0.5, 0.9]), np.quantile(b, [0.1, 0.5, 0.9])
        assert np.abs(qa - qb).max() <= slack, (kind, qa, qb)


def test_every_position_is_masked_as_often_as_in_the_reference(pair):
    old, new, _, _ = pair
    p_old, p_new = old.double().mean(0), new.double().mean(0)
    se = ((p_old * (1 - p_old) + p_new * (1 - p_new)) / len(old)).sqrt().clamp(min=1e-3)
    assert ((p_old - p_new).abs() / se).max() < 5


def test_random_masks_and_bert_corruption_are_the_reference_ones():
    """Their sampling did not change: the same generator gives the very same tensors."""
    assert torch.equal(masking.random_mask(300, 63, 0.15, gen(4)), ref.random_mask(300, 63, 0.15, gen(4)))
    cfg = masking.MaskConfig("random", 0.48)
    assert torch.equal(masking.sample_mask(cfg, 300, 64, prefix=1, generator=gen(5)),
                       ref.sample_mask(cfg, 300, 64, prefix=1, generator=gen(5)))
    ids = torch.randint(10, 1000, (64, 50), generator=gen(6))
    mask = masking.random_mask(64, 50, 0.3, gen(7))
    assert torch.equal(masking.bert_corrupt(ids, mask, 4, (8, 1000), gen(8)),
                       ref.bert_corrupt(ids, mask, 4, (8, 1000), gen(8)))
