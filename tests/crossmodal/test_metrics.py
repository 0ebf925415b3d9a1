"""Properties of d2v_lab.align that fail if the numbers are computed wrongly."""

import itertools

import numpy as np
import pytest
import torch

from d2v_lab.crossmodal.controls import association_control, procrustes_control, procrustes_fit, train_association_heads
from d2v_lab.crossmodal.metrics import (
    NullBand,
    concept_similarity_matrix,
    cross_modal_retrieval,
    mutual_knn_alignment,
    mutual_knn_chance,
    permutation_null,
    platonic_preprocessing,
    retrieval_chance,
    rotation_null,
    rsa,
    to_common_dim,
    unbiased_cka,
    unbiased_cka_null,
)


def random_rotation(d: int, rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(d, d)))
    return q * np.sign(np.diag(r))


def concept_data(seed: int, n_per: int = 80, n_concepts: int = 5, da: int = 32, db: int = 48):
    """Concept-paired synthetic modalities: nothing shared except the concept of each pair.

    a = concept centre in space A + noise; b = tanh of a random linear map of an
    *independent* concept centre in a latent B space, + noise. Widths differ.
    """
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(n_concepts), n_per)
    centres_a = rng.normal(size=(n_concepts, da))
    centres_b = rng.normal(size=(n_concepts, 16))
    a = centres_a[y] + rng.normal(size=(len(y), da))
    h = centres_b[y] + rng.normal(size=(len(y), 16))
    b = np.tanh(h @ rng.normal(size=(16, db)) / 4) + 0.1 * rng.normal(size=(len(y), db))
    return a, b, y


# ----------------------------------------------------------------------------- mutual kNN


def test_mutual_knn_identical_spaces_is_one():
    x = np.random.default_rng(0).normal(size=(100, 16))
    assert mutual_knn_alignment(x, x, k=10) == pytest.approx(1.0, abs=1e-6)


def test_mutual_knn_rotation_and_scale_invariant_without_clipping():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 32))
    y = 3.0 * x @ random_rotation(32, rng)
    assert mutual_knn_alignment(x, y, k=10, clip_quantile=None) == pytest.approx(1.0, abs=1e-6)
    # quantile clipping acts on coordinates, so a rotation changes what is clipped: only approximately 1
    assert 0.8 < mutual_knn_alignment(x, y, k=10) < 1.0


def test_mutual_knn_clipping_is_one_whole_matrix_quantile_per_modality():
    rng = np.random.default_rng(2)
    a = rng.standard_t(df=2, size=(60, 8))  # heavy tails, so clipping changes neighbourhoods
    b = rng.standard_t(df=2, size=(60, 8)) + a
    # platonic-rep's remove_outliers(exact=True): the order statistic sorted(|x|)[int(q * numel)]
    qa, qb = (np.sort(np.abs(x), axis=None)[int(0.95 * x.size)] for x in (a, b))
    expected = mutual_knn_alignment(np.clip(a, -qa, qa), np.clip(b, -qb, qb), k=5, clip_quantile=None)
    assert mutual_knn_alignment(a, b, k=5) == pytest.approx(expected, abs=1e-12)
    assert mutual_knn_alignment(a, b, k=5) != mutual_knn_alignment(a, b, k=5, clip_quantile=None)


def test_mutual_knn_hand_computed_example():
    # five 2-D points given by their angles; cosine neighbours are the nearest angles.
    def points(degrees, norms):
        t = np.deg2rad(degrees)
        return np.stack([np.cos(t), np.sin(t)], axis=1) * np.asarray(norms)[:, None]

    a = points([0, 10, 30, 70, 150], [1, 2, 3, 4, 5])  # norms must not matter (rows are normalised)
    b = points([0, 50, 60, 105, 170], [5, 1, 2, 1, 3])
    # k=1  A: 0->1, 1->0, 2->1, 3->2, 4->3   B: 0->1, 1->2, 2->1, 3->2, 4->3  -> agree on 4 of 5
    assert mutual_knn_alignment(a, b, k=1, clip_quantile=None) == pytest.approx(4 / 5)
    # k=2  A: {1,2} {0,2} {0,1} {1,2} {2,3}   B: {1,2} {0,2} {1,3} {1,2} {2,3}
    #      overlaps 2, 2, 1, 2, 2 -> 9 / (5 * 2)
    assert mutual_knn_alignment(a, b, k=2, clip_quantile=None) == pytest.approx(9 / 10)


def test_mutual_knn_independent_spaces_at_chance_and_inside_null():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(200, 32)), rng.normal(size=(200, 32))
    chance = mutual_knn_chance(200, 10)
    assert chance == pytest.approx(10 / 199)
    assert mutual_knn_alignment(a, b, k=10) == pytest.approx(chance, abs=0.02)
    band = permutation_null(mutual_knn_alignment, a, b, n_shuffles=100, seed=0, k=10)
    assert isinstance(band, NullBand)
    assert band.mean == pytest.approx(chance, abs=0.01)
    assert band.inside and band.p_value > 0.05


def test_permutation_null_flags_real_alignment():
    rng = np.random.default_rng(4)
    a = rng.normal(size=(120, 16))
    b = a @ random_rotation(16, rng) + 0.3 * rng.normal(size=(120, 16))
    band = permutation_null(mutual_knn_alignment, a, b, n_shuffles=50, seed=0, k=5)
    assert not band.inside
    assert band.p_value == pytest.approx(1 / 51)  # no shuffle reaches the observed score
    assert band.observed > 0.5 > band.p95


def test_accepts_torch_tensors():
    x = np.random.default_rng(5).normal(size=(30, 6))
    y = x + 0.5 * np.random.default_rng(6).normal(size=(30, 6))
    assert mutual_knn_alignment(torch.tensor(x), torch.tensor(y), k=3) == mutual_knn_alignment(x, y, k=3)
    assert unbiased_cka(torch.tensor(x, dtype=torch.float64), y) == pytest.approx(unbiased_cka(x, y))


# ----------------------------------------------------------------------------- CKA


def test_cka_identical_rotated_scaled_translated_is_one():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(80, 12))
    assert unbiased_cka(x, x) == pytest.approx(1.0, abs=1e-6)
    assert unbiased_cka(x, 0.2 * x @ random_rotation(12, rng)) == pytest.approx(1.0, abs=1e-6)
    assert unbiased_cka(x + 5.0, x) == pytest.approx(1.0, abs=1e-6)  # unbiased HSIC ignores centring


def test_cka_independent_spaces_near_zero():
    rng = np.random.default_rng(8)
    assert abs(unbiased_cka(rng.normal(size=(500, 20)), rng.normal(size=(500, 20)))) < 0.05


def _hsic_u_statistic(k: np.ndarray, l: np.ndarray) -> float:
    """Song et al. 2012: HSIC_1 as a U-statistic, the mean over ordered 4-tuples of distinct indices."""
    n = k.shape[0]
    terms = [
        k[i, j] * l[i, j] + k[i, j] * l[q, r] - 2 * k[i, j] * l[i, q]
        for i, j, q, r in itertools.permutations(range(n), 4)
    ]
    return float(np.mean(terms))


def _hsic_song_eq5(k: np.ndarray, l: np.ndarray) -> float:
    """Song et al. 2012, Eq. 5, written out as printed."""
    n = k.shape[0]
    kt, lt, one = k - np.diag(np.diag(k)), l - np.diag(np.diag(l)), np.ones(n)
    return (
        np.trace(kt @ lt)
        + (one @ kt @ one) * (one @ lt @ one) / ((n - 1) * (n - 2))
        - 2 / (n - 2) * (one @ kt @ lt @ one)
    ) / (n * (n - 3))


def test_cka_matches_textbook_unbiased_hsic():
    rng = np.random.default_rng(9)
    a, b = rng.normal(size=(7, 3)), rng.normal(size=(7, 5))
    b[:, :3] += a  # some dependence so the value is not ~0
    k, l = a @ a.T, b @ b.T
    assert _hsic_song_eq5(k, l) == pytest.approx(_hsic_u_statistic(k, l), rel=1e-10)
    expected = _hsic_u_statistic(k, l) / np.sqrt(_hsic_u_statistic(k, k) * _hsic_u_statistic(l, l))
    assert unbiased_cka(a, b) == pytest.approx(expected, rel=1e-10)


def test_cka_of_a_rotated_copy_is_one_raw_but_not_after_platonic_preprocessing():
    """Raw unbiased CKA is rotation invariant. platonic-rep clips |x| at one quantile per matrix before
    every metric, which acts on coordinates: when one coordinate carries most of the structure (a
    "massive activation"), the clip flattens it in x but not in a rotated copy, where it is spread out."""
    rng = np.random.default_rng(12)
    n, d = 300, 64
    centres, y = rng.normal(size=(10, d)), rng.integers(0, 10, n)
    x = 2 * centres[y] + rng.normal(size=(n, d))
    x[:, 0] *= 100
    xr = x @ random_rotation(d, rng)
    assert unbiased_cka(x, xr) == pytest.approx(1.0, abs=1e-9)
    assert unbiased_cka(platonic_preprocessing(x), platonic_preprocessing(xr)) < 0.6
    # without a dominant coordinate the clip barely matters
    z = 2 * centres[y] + rng.normal(size=(n, d))
    assert unbiased_cka(platonic_preprocessing(z), platonic_preprocessing(z @ random_rotation(d, rng))) > 0.95


def test_fast_cka_null_is_the_generic_permutation_null():
    a, b, _ = concept_data(13, n_per=20)
    fast, slow = unbiased_cka_null(a, b, n_shuffles=40, seed=3), permutation_null(unbiased_cka, a, b, 40, seed=3)
    assert fast.observed == slow.observed and fast.n_shuffles == slow.n_shuffles == 40
    assert (fast.mean, fast.p95, fast.p_value) == pytest.approx((slow.mean, slow.p95, slow.p_value), abs=1e-12)
    assert fast.observed > fast.p95                          # the concepts make the pairing matter


def test_platonic_preprocessing_by_hand():
    a = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 1.0], [1.0, 1.0], [10.0, -1.0]])
    b = np.array([[0.0, 1.0, 1.0], [2.0, 0.0, 1.0], [1.0, 1.0, 0.0], [0.5, -1.0, 2.0], [1.0, 3.0, 1.0]])
    # |a| sorted: 0 0 1 1 1 1 1 2 3 10; q = 0.8 -> element int(0.8 * 10) = 8 -> threshold 3: 10 -> 3
    a_hand = np.array([[1.0, 0.0], [0.0, 1.0], [3 / 10**0.5, 1 / 10**0.5], [2**-0.5, 2**-0.5],
                       [3 / 10**0.5, -1 / 10**0.5]])
    np.testing.assert_allclose(platonic_preprocessing(a, clip_quantile=0.8), a_hand, rtol=1e-12)
    # |b| sorted: 0 0 0 0.5 1 1 1 1 1 1 1 1 2 2 3; element int(0.8 * 15) = 12 -> threshold 2: 3 -> 2
    b_clip = b.copy()
    b_clip[4, 1] = 2.0
    b_hand = b_clip / np.sqrt((b_clip**2).sum(1, keepdims=True))
    np.testing.assert_allclose(platonic_preprocessing(b, clip_quantile=0.8), b_hand, rtol=1e-12)
    k, l = a_hand @ a_hand.T, b_hand @ b_hand.T
    expected = _hsic_u_statistic(k, l) / np.sqrt(_hsic_u_statistic(k, k) * _hsic_u_statistic(l, l))
    got = unbiased_cka(platonic_preprocessing(a, 0.8), platonic_preprocessing(b, 0.8))
    assert got == pytest.approx(expected, rel=1e-10)
    assert abs(got - unbiased_cka(a, b)) > 0.05             # the preprocessing matters on this example
    np.testing.assert_allclose(platonic_preprocessing(b, clip_quantile=None), b / np.sqrt((b**2).sum(1, keepdims=True)))


# ----------------------------------------------------------------------------- retrieval & Procrustes


def test_retrieval_and_chance_by_hand():
    a = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    b = np.array([[2.0, 0.1], [0.1, 2.0]])
    # a->b: row0 -> b0 (x), row1 -> b1 (y), row2 ties-ish: cos to b0 = cos to b1 -> argmax picks b0 (x)
    la, lb = np.array(["x", "y", "y"]), np.array(["x", "y"])
    assert cross_modal_retrieval(a, b, la, lb, symmetric=False) == pytest.approx(2 / 3)
    # b->a: b0 -> a0 (x, hit), b1 -> a1 (y, hit)
    assert cross_modal_retrieval(a, b, la, lb) == pytest.approx(0.5 * (2 / 3 + 1.0))
    assert retrieval_chance(la, lb) == pytest.approx(1 / 3 * 1 / 2 + 2 / 3 * 1 / 2)
    assert retrieval_chance(["x", "y", "y"], ["x", "x", "y", "z"]) == pytest.approx(1 / 3 * 2 / 4 + 2 / 3 * 1 / 4)
    assert retrieval_chance(np.repeat(np.arange(4), 5), np.tile(np.arange(4), 3)) == pytest.approx(0.25)


def test_rotation_breaks_retrieval_and_procrustes_restores_it():
    rng = np.random.default_rng(10)
    n, d = 400, 16
    labels = np.repeat(np.arange(8), n // 8)
    a = rng.normal(size=(n, d))  # isotropic: the labels carry no geometry, only pair identity counts
    b = 2.0 * a @ random_rotation(d, rng)
    assert unbiased_cka(a, b) == pytest.approx(1.0, abs=1e-6)  # same structure ...
    out = procrustes_control(a, b, labels, train_fraction=0.5, seed=0)
    chance = retrieval_chance(labels, labels)
    assert out["chance"] == pytest.approx(chance)
    assert abs(out["retrieval_before"] - chance) < 0.1  # ... but not the same coordinates
    assert abs(out["pair_cosine_before"]) < 0.2
    assert out["retrieval_after"] == pytest.approx(1.0)
    assert out["pair_cosine_after"] == pytest.approx(1.0, abs=1e-9)
    assert out["n_fit"] + out["n_eval"] == n


def test_procrustes_fit_recovers_rotation():
    rng = np.random.default_rng(11)
    a = rng.normal(size=(50, 6))
    r = random_rotation(6, rng)
    b = a @ r + np.arange(6.0)
    m = procrustes_fit(a, b)
    np.testing.assert_allclose(m.rotation, r, atol=1e-10)
    np.testing.assert_allclose(m.transform(a), b, atol=1e-10)
    np.testing.assert_allclose(m.rotation @ m.rotation.T, np.eye(6), atol=1e-10)


def test_permutation_null_for_retrieval_keeps_labels_with_the_pair():
    a, b, y = concept_data(0, n_per=30)
    m = procrustes_fit(to_common_dim(a, 16), to_common_dim(b, 16))  # aligned spaces: retrieval is high
    za, zb = m.transform(to_common_dim(a, 16)), to_common_dim(b, 16)
    band = permutation_null(cross_modal_retrieval, za, zb, n_shuffles=50, seed=0, labels_a=y, labels_b=y)
    assert band.observed > 0.8 and not band.inside
    assert band.mean == pytest.approx(retrieval_chance(y, y), abs=0.05)
    # a within-concept shuffle keeps every label, so retrieval cannot change
    within = permutation_null(cross_modal_retrieval, za, zb, n_shuffles=10, groups=y, labels_a=y, labels_b=y)
    assert within.mean == pytest.approx(within.observed)


# ----------------------------------------------------------------------------- permutation with groups


def test_permutation_null_groups_only_permutes_within_groups():
    n = 30
    groups = np.repeat(["p", "q", "r"], 10)
    a = np.zeros((n, 1))
    b = np.arange(n, dtype=float)[:, None]  # b's rows carry their own index, so the metric sees the permutation
    seen: list[np.ndarray] = []

    def record(a_, b_perm):
        perm = b_perm[:, 0].astype(int)
        seen.append(perm)
        return float(np.mean(perm == np.arange(n)))

    band = permutation_null(record, a, b, n_shuffles=20, seed=0, groups=groups)
    shuffles = seen[1:]  # the first call is the observed, unshuffled score
    assert band.observed == 1.0 and len(shuffles) == 20
    for perm in shuffles:
        assert sorted(perm) == list(range(n))
        assert (groups[perm] == groups).all()
    assert any((perm != np.arange(n)).any() for perm in shuffles)

    seen.clear()
    permutation_null(record, a, b, n_shuffles=20, seed=0)
    assert any((groups[perm] != groups).any() for perm in seen[1:])  # without groups, rows cross groups


def test_permutation_null_p_value_formula():
    a = np.zeros((5, 1))
    band = permutation_null(lambda a_, b_: float(b_[0, 0]), a, np.arange(5.0)[:, None], n_shuffles=400, seed=1)
    # observed = 0 and every shuffle is >= 0 -> p = (1 + 400) / 401 = 1; mean of b[perm][0] is ~2
    assert band.p_value == 1.0 and band.inside
    assert band.mean == pytest.approx(2.0, abs=0.3)
    assert band.p95 == 4.0


# ----------------------------------------------------------------------------- common dim


def test_to_common_dim_shape_scale_and_independence_of_fits():
    rng = np.random.default_rng(13)
    x = rng.normal(size=(100, 30)) * np.linspace(3, 0.1, 30) + 7.0
    z = to_common_dim(x, 10)
    assert z.shape == (100, 10)
    np.testing.assert_allclose(z.mean(axis=0), 0, atol=1e-10)
    assert np.mean(np.sum(z**2, axis=1)) == pytest.approx(1.0)
    var = z.var(axis=0)
    assert (np.diff(var) <= 1e-12).all()  # ordered by variance
    np.testing.assert_allclose(to_common_dim(torch.tensor(x), 10), z)
    # a rotated copy has the same PCA coordinates up to sign: PCA undoes rotations of one space ...
    np.testing.assert_allclose(np.abs(to_common_dim(x @ random_rotation(30, rng), 10)), np.abs(z), atol=1e-8)
    with pytest.raises(ValueError):
        to_common_dim(x, 31)


def test_raw_retrieval_after_independent_pca_is_chance_on_average_and_inside_rotation_null():
    chance = retrieval_chance(*[np.repeat(np.arange(5), 80)] * 2)
    raws = []
    for seed in range(8):
        a, b, y = concept_data(seed)
        za, zb = to_common_dim(a, 16), to_common_dim(b, 16)
        raws.append(cross_modal_retrieval(za, zb, y, y))
    # one draw scatters widely (which b-cluster lies nearest each a-cluster is an accident) ...
    assert max(raws) - min(raws) > 0.2
    # ... but on average independent PCA fits share no coordinates
    assert np.mean(raws) == pytest.approx(chance, abs=0.1)
    band = rotation_null(cross_modal_retrieval, za, zb, n_rotations=100, seed=0, labels_a=y, labels_b=y)
    assert band.inside and band.n_shuffles == 100
    aligned = procrustes_fit(za, zb).transform(za)  # fitted on all pairs: coordinates now shared
    band = rotation_null(cross_modal_retrieval, aligned, zb, n_rotations=100, seed=0, labels_a=y, labels_b=y)
    assert band.observed > 0.8 and not band.inside
    # rotation-invariant metrics do not move under this null
    cka = rotation_null(unbiased_cka, za, zb, n_rotations=5)
    assert cka.mean == pytest.approx(cka.observed)


def test_association_heads_align_concept_paired_spaces():
    a, b, y = concept_data(0)
    out = association_control(a, b, y, train_fraction=0.5, seed=0, epochs=30)
    assert out["chance"] == pytest.approx(0.2)
    assert out["retrieval_baseline"] < 0.5  # no cross-modal fit: near chance (a single draw scatters)
    assert out["retrieval"] > 0.8
    assert out["pair_cosine"] > 0.2
    assert out["n_fit"] == 200 and out["n_eval"] == 200


def test_association_heads_instance_pairs_and_determinism():
    # plain CLIP training (no labels): pairs share an instance-level latent, so pair identity is learnable
    rng = np.random.default_rng(14)
    z = rng.normal(size=(300, 8))
    a = z @ rng.normal(size=(8, 24)) + 0.1 * rng.normal(size=(300, 24))
    b = np.tanh(z @ rng.normal(size=(8, 40)) / 3) + 0.05 * rng.normal(size=(300, 40))
    state = torch.get_rng_state()
    heads = train_association_heads(a[:200], b[:200], dim=32, epochs=40, seed=3, hidden=None, batch_size=64)
    assert torch.equal(state, torch.get_rng_state())  # caller's RNG untouched
    pa, pb = heads.project_a(a[200:]), heads.project_b(b[200:])
    np.testing.assert_allclose(np.linalg.norm(pa, axis=1), 1.0, atol=1e-6)
    ids = np.arange(100)
    assert cross_modal_retrieval(pa, pb, ids, ids) > 0.3  # exact-pair retrieval; chance is 0.01
    assert heads.losses[-1] < heads.losses[0]
    torch.manual_seed(123)  # the result depends on `seed`, not on the global torch RNG
    again = train_association_heads(a[:200], b[:200], dim=32, epochs=40, seed=3, hidden=None, batch_size=64)
    np.testing.assert_array_equal(again.project_a(a[200:]), pa)
    other = train_association_heads(a[:200], b[:200], dim=32, epochs=40, seed=4, hidden=None, batch_size=64)
    assert not np.allclose(other.project_a(a[200:]), pa)


def test_association_heads_standardise_with_training_statistics():
    # per-feature affine changes of the inputs are undone by the stored mean/std
    rng = np.random.default_rng(17)
    a, b = rng.normal(size=(64, 5)), rng.normal(size=(64, 7))
    scale, shift = rng.uniform(0.1, 100, size=5), rng.normal(size=5) * 50
    h1 = train_association_heads(a, b, dim=8, epochs=3, seed=0, batch_size=32)
    h2 = train_association_heads(a * scale + shift, b, dim=8, epochs=3, seed=0, batch_size=32)
    np.testing.assert_allclose(h2.project_a(a * scale + shift), h1.project_a(a), atol=1e-4)


# ----------------------------------------------------------------------------- RSA


def test_rsa_same_geometry_up_to_rotation_vs_shuffled_concepts():
    rng = np.random.default_rng(15)
    n_concepts, d = 8, 16
    centres = rng.normal(size=(n_concepts, d))
    y = np.repeat(np.arange(n_concepts), 20)
    a = centres[y] + 0.2 * rng.normal(size=(len(y), d))
    b = 2.0 * centres[y] @ random_rotation(d, rng) + 0.4 * rng.normal(size=(len(y), d))
    rho = rsa(a, y, b, y)
    assert rho > 0.9
    # same relational structure, yet no shared coordinates: retrieval stays low
    assert cross_modal_retrieval(a, b, y, y) < 0.5
    shuffled = rng.permutation(n_concepts)[y]  # concept names scrambled on one side
    assert rsa(a, y, b, shuffled) < rho - 0.5


def test_concept_similarity_matrix_and_rsa_use_shared_concepts():
    # dog: unit vectors at 0 and 45 degrees -> mean direction 22.5 degrees; cat at 90; car at 45
    x = np.array([[3.0, 0.0], [1.0, 1.0], [0.0, 2.0], [5.0, 5.0]])
    concepts, sim = concept_similarity_matrix(x, ["dog", "dog", "cat", "car"])
    assert concepts == ["car", "cat", "dog"]
    np.testing.assert_allclose(np.diag(sim), 1.0)
    cos = lambda deg: np.cos(np.deg2rad(deg))  # noqa: E731
    np.testing.assert_allclose(sim, [[1, cos(45), cos(22.5)], [cos(45), 1, cos(67.5)], [cos(22.5), cos(67.5), 1]])
    rng = np.random.default_rng(16)
    a, b = rng.normal(size=(40, 4)), rng.normal(size=(30, 5))  # rows need not be paired
    la, lb = np.repeat(list("abcde"), 8), np.repeat(list("bcdef"), 6)
    assert -1.0 <= rsa(a, la, b, lb) <= 1.0
    with pytest.raises(ValueError):
        rsa(a, np.repeat(list("abcde"), 8), b, np.repeat(list("defgh"), 6))  # only 2 shared concepts


# ----------------------------------------------------------------------------- validation


def test_input_validation():
    x = np.zeros((10, 3))
    with pytest.raises(ValueError, match="same number of rows"):
        mutual_knn_alignment(x, np.zeros((9, 3)))
    with pytest.raises(ValueError, match="same number of rows"):
        unbiased_cka(x, np.zeros((9, 3)))
    with pytest.raises(ValueError, match="k\\+1"):
        mutual_knn_alignment(x, x, k=10)
    with pytest.raises(ValueError):
        mutual_knn_chance(10, 10)
    bad = np.ones((10, 3))
    bad[2, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        mutual_knn_alignment(bad, x, k=2)
    with pytest.raises(ValueError, match="4 rows"):
        unbiased_cka(np.eye(3), np.eye(3))
    with pytest.raises(ValueError, match="same width"):
        cross_modal_retrieval(x, np.zeros((10, 4)), np.arange(10), np.arange(10))
    with pytest.raises(ValueError, match="labels_b"):
        cross_modal_retrieval(x, x, np.arange(10), np.arange(9))
    with pytest.raises(ValueError, match="same number of rows"):
        permutation_null(mutual_knn_alignment, x, np.zeros((9, 3)))
    with pytest.raises(ValueError, match="at least 2"):
        procrustes_control(x, x, np.arange(10))
    with pytest.raises(ValueError, match="2-D"):
        unbiased_cka(np.zeros(10), np.zeros(10))


def test_mutual_knn_layers_matches_single_pair_and_null_takes_the_max():
    from d2v_lab.crossmodal.metrics import mutual_knn_layers
    rng = np.random.default_rng(3)
    base = rng.normal(size=(60, 8))
    layers_a = np.stack([base, rng.normal(size=(60, 8))])
    layers_b = [rng.normal(size=(60, 5)), base @ rng.normal(size=(8, 8)), base]  # widths may differ
    scores, band = mutual_knn_layers(layers_a, layers_b, k=5, n_shuffles=30, seed=0)
    for i in range(2):
        for j in range(3):
            assert scores[i, j] == pytest.approx(mutual_knn_alignment(layers_a[i], layers_b[j], k=5))
    assert scores[0, 2] == 1.0 and band.observed == 1.0 and not band.inside
    # the shuffled pairing is scored exactly as mutual_knn_alignment scores b[perm]
    perm = np.random.default_rng(0).permutation(60)
    shuffled = max(mutual_knn_alignment(layers_a[i], layers_b[j][perm], k=5) for i in range(2) for j in range(3))
    _, one = mutual_knn_layers(layers_a, layers_b, k=5, n_shuffles=1, seed=0)
    assert one.mean == pytest.approx(shuffled)


# --- the layer search (AlignConfig.layer_search): best layer pair, null with the same maximum ----------

def test_cka_layers_is_cka_per_pair_and_one_layer_is_unbiased_cka_null():
    from d2v_lab.crossmodal.metrics import unbiased_cka_layers
    rng = np.random.default_rng(5)
    base = rng.normal(size=(40, 6))
    layers_a = [rng.normal(size=(40, 6)), base]
    layers_b = [base @ random_rotation(6, rng), rng.normal(size=(40, 3)), rng.normal(size=(40, 9))]
    scores, band = unbiased_cka_layers(layers_a, layers_b, n_shuffles=40, seed=2)
    for i, a in enumerate(layers_a):
        for j, b in enumerate(layers_b):
            assert scores[i, j] == pytest.approx(unbiased_cka(a, b), abs=1e-9)
    assert band.observed == pytest.approx(1.0) and not band.inside       # base vs its rotation
    # one layer a side: the same shuffles and numbers as unbiased_cka_null
    _, one = unbiased_cka_layers([layers_a[0]], [layers_b[1]], n_shuffles=40, seed=2)
    ref = unbiased_cka_null(layers_a[0], layers_b[1], n_shuffles=40, seed=2)
    assert (one.observed, one.mean, one.p95) == pytest.approx((ref.observed, ref.mean, ref.p95), abs=1e-12)


def test_retrieval_layers_one_layer_is_the_permutation_and_rotation_nulls():
    from d2v_lab.crossmodal.metrics import retrieval_layers
    rng = np.random.default_rng(6)
    y = np.repeat(np.arange(5), 12)
    a = rng.normal(size=(5, 8))[y] + 0.8 * rng.normal(size=(60, 8))
    b = rng.normal(size=(60, 8))
    scores, perm, rot = retrieval_layers([a], [b], y, n_shuffles=30, seed=4)
    kw = dict(labels_a=y, labels_b=y)
    assert scores[0, 0] == pytest.approx(cross_modal_retrieval(a, b, **kw))
    ref_perm = permutation_null(cross_modal_retrieval, a, b, 30, 4, **kw)
    ref_rot = rotation_null(cross_modal_retrieval, a, b, 30, 4, **kw)
    assert (perm.mean, perm.p95) == pytest.approx((ref_perm.mean, ref_perm.p95))
    assert (rot.mean, rot.p95) == pytest.approx((ref_rot.mean, ref_rot.p95))


def test_layer_search_does_not_manufacture_alignment():
    """Unrelated spaces with many layers: the best of 6 x 6 layer pairs scores above what one pair's null
    allows, but not above the null that takes the same maximum, so the search alone never says "aligned"."""
    from d2v_lab.crossmodal.metrics import retrieval_layers, unbiased_cka_layers
    rng = np.random.default_rng(7)
    y = np.repeat(np.arange(4), 10)
    clusters = lambda: rng.normal(size=(4, 6))[y] + 0.7 * rng.normal(size=(40, 6))  # noqa: E731
    layers_a, layers_b = [clusters() for _ in range(6)], [clusters() for _ in range(6)]
    scores, perm, rot = retrieval_layers(layers_a, layers_b, y, n_shuffles=100, seed=0)
    single = rotation_null(cross_modal_retrieval, layers_a[-1], layers_b[-1], 100, 0, labels_a=y, labels_b=y).p95
    assert rot.p95 > single                      # the maximum over 36 pairs is a higher bar than one pair's
    assert rot.observed <= max(perm.p95, rot.p95)
    # CKA: the concept clusters are shared structure (CKA sees them); unrelated noise is not
    noise = [rng.normal(size=(40, 6)) for _ in range(12)]
    scores, cka = unbiased_cka_layers(noise[:6], noise[6:], n_shuffles=100, seed=0)
    one = unbiased_cka_null(noise[5], noise[11], n_shuffles=100, seed=0)
    assert cka.p95 > one.p95 and cka.inside
