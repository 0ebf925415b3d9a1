"""Do data2vec's image, text and audio models share a latent space?

data2vec (Baevski et al. 2022) trains one *objective* on three modalities, but
three separate models. Nothing in training ties an image of a dog to the word
"dog", so there is no reason for their features to live in one coordinate
system. This module holds the numbers behind that argument:

* metrics on *paired* feature matrices (row i of ``a`` goes with row i of ``b``):
  mutual kNN alignment, unbiased linear CKA, cross-modal retrieval, RSA;
* their nulls: analytic chance levels, a permutation null over the pairing and
  a random-rotation null over one side's coordinates;
* the positive controls (what it takes to align two spaces given paired data:
  orthogonal Procrustes, a CLIP-style association network) are in
  ``controls.py``.

Everything takes numpy arrays or torch tensors and returns Python floats,
numpy arrays or small dataclasses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from scipy.stats import spearmanr

ArrayLike = Any  # np.ndarray | torch.Tensor | nested lists

__all__ = [
    "mutual_knn_alignment",
    "mutual_knn_chance",
    "unbiased_cka",
    "unbiased_cka_null",
    "unbiased_cka_layers",
    "platonic_preprocessing",
    "to_common_dim",
    "cross_modal_retrieval",
    "retrieval_chance",
    "NullBand",
    "permutation_null",
    "rotation_null",
    "retrieval_layers",
    "concept_similarity_matrix",
    "rsa",
    "rsa_null",
]


# -----------------------------------------------------------------------------
# input handling


def as_numpy(x: ArrayLike, name: str = "x") -> np.ndarray:
    """Return x as a finite 2-D float64 numpy array (rows = samples)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().to(torch.float64).numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (samples x features), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf")
    return x


def as_labels(labels: ArrayLike, n: int, name: str = "labels") -> np.ndarray:
    """Return labels as a 1-D numpy array with one entry per row."""
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != n:
        raise ValueError(f"{name} must be 1-D with {n} entries (one per row), got shape {labels.shape}")
    return labels


def check_paired(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape[0] != b.shape[0]:
        raise ValueError(
            f"a and b must have the same number of rows (row i of a is paired with row i of b), "
            f"got {a.shape[0]} and {b.shape[0]}"
        )


def check_same_width(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"a and b must have the same width to be compared coordinate-wise, got {a.shape[1]} and "
            f"{b.shape[1]}; use to_common_dim() (no cross-modal fitting) or a fitted map first"
        )


def l2_normalize(x: np.ndarray) -> np.ndarray:
    # the floor keeps an all-zero row at zero instead of turning it into NaN
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def pair_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Mean cosine between row i of a and row i of b."""
    return float(np.mean(np.sum(l2_normalize(a) * l2_normalize(b), axis=1)))


# -----------------------------------------------------------------------------
# mutual k-nearest-neighbour alignment (Huh et al. 2024)


def _clip_outliers(x: np.ndarray, q: float | None) -> np.ndarray:
    """Clip |x| at its q-quantile over the whole matrix (one threshold per modality).

    Huh et al. (2024, appendix) clip outlier activations before measuring
    alignment, because a few huge "massive activation" dimensions would
    otherwise decide every cosine. Their code (``remove_outliers`` in
    minyoungg/platonic-rep metrics.py) takes one scalar threshold per feature
    matrix: with ``exact=True`` (their ``--precise`` flag) the order statistic
    sorted(|x|)[int(q * x.size)] over all entries, which is what we take; the
    default fast path averages per-sample quantiles instead, which gives a
    nearly identical threshold.
    """
    if q is None or q >= 1.0:
        return x
    if not 0.0 < q < 1.0:
        raise ValueError(f"clip_quantile must be in (0, 1] or None, got {q}")
    k = int(q * x.size)
    t = np.partition(np.abs(x), k, axis=None)[k]  # = np.sort(|x|, axis=None)[k], without the full sort
    return np.clip(x, -t, t)


def platonic_preprocessing(x: ArrayLike, clip_quantile: float | None = 0.95) -> np.ndarray:
    """What minyoungg/platonic-rep (Huh et al. 2024) does to every feature matrix before ANY of its
    alignment metrics, CKA included: clip |x| at its ``clip_quantile`` quantile over the whole matrix
    (``prepare_features`` -> ``remove_outliers``, exact order statistic, see ``_clip_outliers``), then
    L2-normalise each row (``compute_score(normalize=True)``). Rows permute with the input, so a
    permutation null may preprocess once and shuffle afterwards.

    ``unbiased_cka(platonic_preprocessing(a), platonic_preprocessing(b))`` is their ``unbiased_cka``
    score (they add 1e-6 to the denominator, a difference far below the reported digits). Clipping acts
    on coordinates, so unlike raw CKA the result is not rotation invariant: when a few coordinates carry
    most of the variance, a randomly rotated copy of the same features no longer scores 1.
    """
    return l2_normalize(_clip_outliers(as_numpy(x), clip_quantile))


def _knn_indices(x: np.ndarray, k: int) -> np.ndarray:
    """Indices (n, k) of each row's k most cosine-similar other rows (order within the k is arbitrary)."""
    z = l2_normalize(x)
    sim = z @ z.T
    np.fill_diagonal(sim, -np.inf)  # a point is not its own neighbour
    return np.argpartition(-sim, k - 1, axis=1)[:, :k]


def mutual_knn_alignment(a: ArrayLike, b: ArrayLike, k: int = 10, clip_quantile: float | None = 0.95) -> float:
    """Mutual k-nearest-neighbour alignment of two paired representations.

    Huh et al. 2024, "The Platonic Representation Hypothesis" (ICML), Sec. 2 and
    appendix. For each sample i take its k nearest neighbours (cosine, self
    excluded) among the samples in space A, and again in space B; the score is
    the mean over i of |N_A(i) & N_B(i)| / k.

    What the number means: 1.0 = the two spaces agree on who is near whom for
    every sample; k / (N - 1) (see ``mutual_knn_chance``) = what independent
    spaces give. The metric only compares neighbourhoods *within* each space,
    so it can be high for two spaces with completely different coordinates:
    it measures shared structure, not a shared space.

    Preprocessing follows the paper's code: |x| is clipped at its
    ``clip_quantile`` quantile over the whole matrix (one threshold per
    modality; pass None to skip), then rows are L2-normalised. The clipping
    acts on coordinates, so it is not exactly rotation invariant.
    """
    a, b = as_numpy(a, "a"), as_numpy(b, "b")
    check_paired(a, b)
    n = a.shape[0]
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if n < k + 1:
        raise ValueError(f"need at least k+1 = {k + 1} rows for k={k} neighbours, got {n}")
    knn_a = _knn_indices(_clip_outliers(a, clip_quantile), k)
    knn_b = _knn_indices(_clip_outliers(b, clip_quantile), k)
    # |N_A(i) & N_B(i)|: neighbour lists hold distinct indices, so counting equal pairs counts the overlap
    overlap = (knn_a[:, :, None] == knn_b[:, None, :]).sum(axis=(1, 2))
    return float(np.mean(overlap / k))


def mutual_knn_layers(layers_a: ArrayLike, layers_b: ArrayLike, k: int = 10, n_shuffles: int = 200,
                      seed: int = 0, clip_quantile: float | None = 0.95) -> tuple[np.ndarray, NullBand]:
    """Mutual kNN for every layer pair of two models, and a permutation null for the BEST pair.

    ``layers_a``: La arrays (N, Da), ``layers_b``: Lb arrays (N, Db), rows paired. Returns the (La, Lb) score
    matrix and a NullBand whose observed value is its maximum and whose null distribution is the
    maximum over all layer pairs after each shuffle of the pairing. Taking the best of La * Lb pairs
    inflates the score; the null takes the same maximum, so the comparison stays fair (Huh et al.
    report the best layer pair). Neighbour lists are computed once per layer: a shuffle only
    relabels b's lists, which keeps 200 shuffles cheap.
    """
    knn_a = [_knn_indices(_clip_outliers(as_numpy(x, "a"), clip_quantile), k) for x in layers_a]
    knn_b = [_knn_indices(_clip_outliers(as_numpy(x, "b"), clip_quantile), k) for x in layers_b]
    n = knn_a[0].shape[0]
    if knn_b[0].shape[0] != n:
        raise ValueError(f"rows differ: {n} vs {knn_b[0].shape[0]}")

    def scores(perm: np.ndarray | None) -> np.ndarray:
        out = np.empty((len(knn_a), len(knn_b)))
        for j, kb in enumerate(knn_b):
            if perm is not None:  # row i of b is now old row perm[i]; relabel neighbours to new indices
                inverse = np.empty(n, dtype=np.int64)
                inverse[perm] = np.arange(n)
                kb = inverse[kb[perm]]
            for i, ka in enumerate(knn_a):
                out[i, j] = np.mean((ka[:, :, None] == kb[:, None, :]).sum(axis=(1, 2)) / k)
        return out

    observed = scores(None)
    rng = np.random.default_rng(seed)
    null = np.array([scores(rng.permutation(n)).max() for _ in range(n_shuffles)])
    return observed, _band(float(observed.max()), null)


def mutual_knn_chance(n: int, k: int) -> float:
    """Expected mutual kNN score of two independent spaces: k / (n - 1).

    Each of i's k neighbours in A is one of the n - 1 other points; if B is
    unrelated, each is also among i's k neighbours in B with probability
    k / (n - 1), so the expected overlap fraction is k / (n - 1).
    """
    if k < 1 or n < k + 1:
        raise ValueError(f"need 1 <= k < n, got n={n}, k={k}")
    return k / (n - 1)


# -----------------------------------------------------------------------------
# unbiased linear CKA (Kornblith et al. 2019; Song et al. 2012; Nguyen et al. 2021)


def _u_center(gram: np.ndarray) -> np.ndarray:
    """U-centre a Gram matrix (Szekely & Rizzo 2014): zero diagonal, row/column effects removed.

    <U(K), U(L)> / (n (n - 3)) is exactly the unbiased HSIC estimator of
    Song et al. 2012 (their Eq. 5), written in a form that is easy to read.
    """
    n = gram.shape[0]
    g = gram.copy()
    np.fill_diagonal(g, 0.0)
    row = g.sum(axis=0) / (n - 2)
    total = g.sum() / ((n - 1) * (n - 2))
    g = g - row[:, None] - row[None, :] + total
    np.fill_diagonal(g, 0.0)
    return g


def _hsic_unbiased(uk: np.ndarray, ul: np.ndarray) -> float:
    n = uk.shape[0]
    return float(np.sum(uk * ul) / (n * (n - 3)))


def unbiased_cka(a: ArrayLike, b: ArrayLike) -> float:
    """Linear CKA with the unbiased HSIC estimator.

    Kornblith et al. 2019, "Similarity of Neural Network Representations
    Revisited" define CKA(K, L) = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)) on
    the linear Gram matrices K = a a^T, L = b b^T. The plain (biased) HSIC
    makes CKA of *independent* finite samples clearly positive, growing with
    width / n; the unbiased estimator of Song et al. 2012 (used for CKA by
    Nguyen et al. 2021 and Huh et al. 2024) removes that, so independent
    spaces score about 0.

    What the number means: 1.0 = b is a rotation + isotropic scaling of a
    (after centring); ~0 = no linear relation between the pairwise-similarity
    structures. It is invariant to orthogonal maps, isotropic scaling and
    translation of either side, so like mutual kNN it compares structure, not
    coordinates. Needs n >= 4. (The unbiased estimate can dip slightly below 0.)

    Variant: this is CKA of the features AS GIVEN (raw). Huh et al.'s code
    first clips outliers and L2-normalises rows; pass both sides through
    ``platonic_preprocessing`` for that variant (the experiment reports both).
    The two can differ a lot when a few coordinates dominate: a rotated copy
    scores 1 here but can score well below 1 after the clipping.
    """
    uk, ul, scale = _cka_parts(a, b)
    return _hsic_unbiased(uk, ul) / scale


def _cka_parts(a: ArrayLike, b: ArrayLike) -> tuple[np.ndarray, np.ndarray, float]:
    """U-centred Gram matrices of a and b and CKA's denominator sqrt(HSIC(K, K) HSIC(L, L))."""
    a, b = as_numpy(a, "a"), as_numpy(b, "b")
    check_paired(a, b)
    n = a.shape[0]
    if n < 4:
        raise ValueError(f"unbiased CKA needs at least 4 rows, got {n}")
    uk, ul = _u_center(a @ a.T), _u_center(b @ b.T)
    hkk, hll = _hsic_unbiased(uk, uk), _hsic_unbiased(ul, ul)
    if hkk <= 0 or hll <= 0:
        raise ValueError("unbiased CKA is undefined: a or b has no variance across rows")
    return uk, ul, float(np.sqrt(hkk * hll))


def unbiased_cka_null(a: ArrayLike, b: ArrayLike, n_shuffles: int = 200, seed: int = 0) -> NullBand:
    """``permutation_null(unbiased_cka, a, b, n_shuffles, seed)``: the same shuffles and the same
    numbers (up to rounding), without recomputing the Gram matrices for every shuffle. Shuffling b's
    rows permutes the rows and columns of its U-centred Gram matrix and leaves HSIC(L, L) unchanged,
    so each shuffle only re-indexes one n x n matrix: O(n^2) instead of O(n^2 * width)."""
    uk, ul, scale = _cka_parts(a, b)
    if n_shuffles < 1:
        raise ValueError(f"n_shuffles must be >= 1, got {n_shuffles}")
    rng = np.random.default_rng(seed)
    perms = (rng.permutation(len(ul)) for _ in range(n_shuffles))
    null = np.array([_hsic_unbiased(uk, ul[np.ix_(p, p)]) / scale for p in perms])
    return _band(_hsic_unbiased(uk, ul) / scale, null)


def unbiased_cka_layers(layers_a: ArrayLike, layers_b: ArrayLike, n_shuffles: int = 200,
                        seed: int = 0) -> tuple[np.ndarray, NullBand]:
    """Unbiased CKA of every layer pair (La x Lb) and a permutation null for the BEST pair, as
    ``mutual_knn_layers`` does for mutual kNN: the observed value is the maximum over the layer pairs,
    and each shuffle of the pairing (the same shuffles as ``unbiased_cka_null``) also takes the maximum
    over all layer pairs, so searching the layers cannot by itself make two spaces look aligned. With
    one layer on each side it is exactly ``unbiased_cka_null``.

    Cost: the U-centred Gram matrices are built once per layer (La + Lb matrices of n x n); a shuffle
    re-indexes the Lb matrices of b and takes every HSIC in one (La, n^2) @ (n^2, Lb) product."""
    parts_a = [_cka_parts(x, x) for x in layers_a]
    parts_b = [_cka_parts(x, x) for x in layers_b]
    n = parts_a[0][0].shape[0]
    if parts_b[0][0].shape[0] != n:
        raise ValueError(f"rows differ: {n} vs {parts_b[0][0].shape[0]}")
    if n_shuffles < 1:
        raise ValueError(f"n_shuffles must be >= 1, got {n_shuffles}")
    ka = np.stack([uk.ravel() for uk, _, _ in parts_a])                     # (La, n^2)
    # HSIC(K, K) of each layer: sqrt(hkk * hll) = scale of (x, x) pairs is hkk itself
    norm = np.sqrt(np.outer([s for *_, s in parts_a], [s for *_, s in parts_b]))   # (La, Lb)

    def scores(perm: np.ndarray | None) -> np.ndarray:
        lb = np.stack([(ul if perm is None else ul[np.ix_(perm, perm)]).ravel() for ul, _, _ in parts_b])
        return (ka @ lb.T) / (n * (n - 3)) / norm

    observed = scores(None)
    rng = np.random.default_rng(seed)
    null = np.array([scores(rng.permutation(n)).max() for _ in range(n_shuffles)])
    return observed, _band(float(observed.max()), null)


# -----------------------------------------------------------------------------
# comparing coordinates without fitting anything across modalities


def to_common_dim(x: ArrayLike, dim: int, seed: int = 0) -> np.ndarray:
    """Bring one modality to ``dim`` coordinates without looking at any other modality.

    Centre, project on the top ``dim`` principal components of *this* matrix,
    then scale so that the total variance (mean squared row norm) is 1. Each
    modality is processed on its own, so comparing the outputs coordinate by
    coordinate (cosine retrieval, pair cosine) asks "do the spaces already
    line up?" without fitting anything across modalities.

    The PCA axes of two independent fits have no reason to correspond: axis 1
    of the image features and axis 1 of the text features are just each
    model's largest-variance direction (with an arbitrary sign, fixed here by
    making each axis's largest loading positive). If data2vec had put the
    modalities in one space, the coordinates would agree anyway; that they do
    not is exactly the point being tested.

    ``seed`` is accepted so callers can pass one seed everywhere; the exact SVD
    used here is deterministic and does not use it.
    """
    del seed  # exact SVD: nothing random
    x = as_numpy(x, "x")
    n, d = x.shape
    if not 1 <= dim <= min(n, d):
        raise ValueError(f"dim must be in [1, min(rows, width) = {min(n, d)}], got {dim}")
    xc = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(xc, full_matrices=False)
    axes = vt[:dim]
    # the sign of a singular vector is arbitrary; fix it so the output is reproducible
    signs = np.sign(axes[np.arange(dim), np.abs(axes).argmax(axis=1)])
    z = xc @ (axes * signs[:, None]).T
    total = np.mean(np.sum(z**2, axis=1))
    return z / np.sqrt(total) if total > 0 else z


# -----------------------------------------------------------------------------
# cross-modal retrieval


def _retrieval_one_way(q: np.ndarray, g: np.ndarray, lq: np.ndarray, lg: np.ndarray) -> float:
    nearest = np.argmax(l2_normalize(q) @ l2_normalize(g).T, axis=1)
    return float(np.mean(lg[nearest] == lq))


def cross_modal_retrieval(
    a: ArrayLike, b: ArrayLike, labels_a: ArrayLike, labels_b: ArrayLike, symmetric: bool = True
) -> float:
    """Concept-level cross-modal retrieval accuracy in a *shared coordinate system*.

    For each row of a, find its cosine nearest neighbour among the rows of b;
    the score is the fraction whose neighbour carries the same label (concept).
    With ``symmetric=True`` (default) the score is the mean of a->b and b->a.

    Unlike mutual kNN and CKA this compares coordinates across the two spaces,
    so it is only high if the spaces are actually shared (or have been mapped
    onto each other). Chance is ``retrieval_chance(labels_a, labels_b)``.
    a and b need the same width but not the same number of rows.
    """
    a, b = as_numpy(a, "a"), as_numpy(b, "b")
    check_same_width(a, b)
    la, lb = as_labels(labels_a, a.shape[0], "labels_a"), as_labels(labels_b, b.shape[0], "labels_b")
    score = _retrieval_one_way(a, b, la, lb)
    if symmetric:
        score = 0.5 * (score + _retrieval_one_way(b, a, lb, la))
    return score


def retrieval_chance(labels_a: ArrayLike, labels_b: ArrayLike) -> float:
    """Expected retrieval accuracy when the retrieved row is unrelated to the query.

    sum_c p_a(c) p_b(c), with p the label frequencies on each side: a query of
    concept c hits a same-concept row with probability p_b(c). For balanced
    labels over C shared concepts this is 1 / C. Symmetric in a and b, so it
    is also the chance level of the symmetric score.
    """
    la, lb = np.asarray(labels_a).ravel(), np.asarray(labels_b).ravel()
    if len(la) == 0 or len(lb) == 0:
        raise ValueError("labels must be non-empty")
    ca, na = np.unique(la, return_counts=True)
    pb = dict(zip(*np.unique(lb, return_counts=True)))
    return float(sum(n / len(la) * pb.get(c, 0) / len(lb) for c, n in zip(ca, na)))


# -----------------------------------------------------------------------------
# permutation null over the pairing


@dataclass(frozen=True)
class NullBand:
    """An observed score next to the distribution it would have with the pairing shuffled.

    p95 is the 95th percentile of the shuffled scores; p_value is
    (1 + #shuffled >= observed) / (1 + n_shuffles), the standard permutation
    p-value that never reports 0 (Phipson & Smyth 2010). n_shuffles counts
    the null draws (permutations, or rotations for ``rotation_null``).
    """

    observed: float
    mean: float
    p95: float
    p_value: float
    n_shuffles: int

    @property
    def inside(self) -> bool:
        """True when the observed score is no higher than the 95th percentile of the null."""
        return self.observed <= self.p95


def _group_permutation(groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random permutation of row indices that only moves rows within their group."""
    perm = np.arange(len(groups))
    for g in np.unique(groups):
        idx = np.flatnonzero(groups == g)
        perm[idx] = idx[rng.permutation(len(idx))]
    return perm


def permutation_null(
    metric: Callable[..., float],
    a: ArrayLike,
    b: ArrayLike,
    n_shuffles: int = 200,
    seed: int = 0,
    groups: ArrayLike | None = None,
    **metric_kwargs: Any,
) -> NullBand:
    """Compare ``metric(a, b)`` with its values after shuffling which row of b goes with which row of a.

    Each shuffle calls ``metric(a, b[perm], **metric_kwargs)``: only the rows
    of b move; a and every keyword argument stay fixed, so extra per-row
    arguments (labels) stay attached to the *pair index* i, not to b's rows.

    With ``groups`` (e.g. concept labels) rows of b are only permuted within
    their group: a stricter null that keeps the concept-level pairing and asks
    whether the metric sees more than concept identity.

    Retrieval: call it as
    ``permutation_null(cross_modal_retrieval, a, b, labels_a=y, labels_b=y)``.
    Because the labels stay with the pair index, a shuffle gives b's features
    the concept of some other pair, which is the null we want ("is concept
    information in b's coordinates aligned with a's?"); its mean is about
    ``retrieval_chance``. Moving labels_b together with b's rows would be
    pointless: retrieval ignores row order, so every shuffle would reproduce
    the observed score. For the same reason a within-concept (``groups``)
    null of retrieval returns the observed score every time. For retrieval
    between *unfitted* spaces also look at ``rotation_null``: this null
    keeps b's coordinates, so it misses how much an accidental cluster
    correspondence can move raw retrieval.
    """
    a, b = as_numpy(a, "a"), as_numpy(b, "b")
    check_paired(a, b)
    if n_shuffles < 1:
        raise ValueError(f"n_shuffles must be >= 1, got {n_shuffles}")
    n = a.shape[0]
    g = None if groups is None else as_labels(groups, n, "groups")
    rng = np.random.default_rng(seed)
    observed = float(metric(a, b, **metric_kwargs))
    null = np.empty(n_shuffles)
    for s in range(n_shuffles):
        perm = rng.permutation(n) if g is None else _group_permutation(g, rng)
        null[s] = metric(a, b[perm], **metric_kwargs)
    return _band(observed, null)


def _random_rotation(d: int, rng: np.random.Generator) -> np.ndarray:
    """A Haar-random orthogonal d x d matrix (QR of a Gaussian matrix, signs fixed; Mezzadri 2007)."""
    q, r = np.linalg.qr(rng.normal(size=(d, d)))
    return q * np.sign(np.diag(r))


def rotation_null(
    metric: Callable[..., float],
    a: ArrayLike,
    b: ArrayLike,
    n_rotations: int = 200,
    seed: int = 0,
    **metric_kwargs: Any,
) -> NullBand:
    """Compare ``metric(a, b)`` with its values after random rotations of b's coordinates.

    The null for metrics that compare coordinates across spaces (retrieval,
    pair cosine): "what if b had the same internal structure, concepts and
    pairing, but its own, unrelated axes?". Shuffling the pairing is not
    enough there: with few, well-separated concepts, raw retrieval between
    unrelated spaces is decided by which b-cluster happens to lie nearest to
    each a-cluster, so it scatters far around ``retrieval_chance`` (with 5
    concepts, 0.0 or 0.4 are both common); this null shows that spread. It
    is useless for rotation-invariant metrics (CKA, mutual kNN without
    clipping), which return the observed score for every rotation.
    Each rotation calls ``metric(a, b @ R, **metric_kwargs)``.
    """
    a, b = as_numpy(a, "a"), as_numpy(b, "b")
    if n_rotations < 1:
        raise ValueError(f"n_rotations must be >= 1, got {n_rotations}")
    rng = np.random.default_rng(seed)
    observed = float(metric(a, b, **metric_kwargs))
    null = np.array([metric(a, b @ _random_rotation(b.shape[1], rng), **metric_kwargs) for _ in range(n_rotations)])
    return _band(observed, null)


def retrieval_layers(layers_a: ArrayLike, layers_b: ArrayLike, labels: ArrayLike, n_shuffles: int = 200,
                     seed: int = 0) -> tuple[np.ndarray, NullBand, NullBand]:
    """Symmetric cross-modal retrieval (``cross_modal_retrieval``, same labels on both sides: rows are
    concept pairs) of every layer pair, with its permutation and rotation nulls for the BEST pair:
    each null draw takes the maximum over all La x Lb layer pairs, as the observed value does, so the
    search over layers is paid for in the null. With one layer on each side the two bands are exactly
    ``permutation_null`` and ``rotation_null`` of ``cross_modal_retrieval`` (the same draws).

    Layers of one side must share a width (e.g. each reduced by ``to_common_dim``). A shuffle of the
    pairing does not move any nearest neighbour, only which label it carries, so the permutation null
    reuses the neighbours found once per layer pair; a rotation of b (one Haar rotation per b layer and
    draw) needs the similarities anew: La x Lb products of n x d by d x n per draw."""
    la = [l2_normalize(as_numpy(x, "a")) for x in layers_a]
    lb = [l2_normalize(as_numpy(x, "b")) for x in layers_b]
    n = la[0].shape[0]
    y = as_labels(labels, n)
    for x in la + lb:
        check_paired(la[0], x)
    for x in lb:
        check_same_width(la[0], x)
    if n_shuffles < 1:
        raise ValueError(f"n_shuffles must be >= 1, got {n_shuffles}")

    def nearest(za: np.ndarray, zb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        sim = za @ zb.T
        return sim.argmax(axis=1), sim.argmax(axis=0)          # a -> b, b -> a

    def score(ab: np.ndarray, ba: np.ndarray, perm: np.ndarray | None = None) -> float:
        if perm is None:
            return 0.5 * (np.mean(y[ab] == y) + np.mean(y[ba] == y))
        # b' = b[perm]: a_i's nearest b' row is inverse[ab[i]]; row j of b' is old row perm[j]
        inverse = np.empty(n, dtype=np.int64)
        inverse[perm] = np.arange(n)
        return 0.5 * (np.mean(y[inverse[ab]] == y) + np.mean(y[ba[perm]] == y))

    neighbours = [[nearest(za, zb) for zb in lb] for za in la]
    observed = np.array([[score(*nb) for nb in row] for row in neighbours])
    rng = np.random.default_rng(seed)
    perms = [rng.permutation(n) for _ in range(n_shuffles)]
    perm_null = np.array([max(score(*nb, p) for row in neighbours for nb in row) for p in perms])
    rng = np.random.default_rng(seed)
    rot_null = np.empty(n_shuffles)
    for s in range(n_shuffles):
        rotated = [zb @ _random_rotation(zb.shape[1], rng) for zb in lb]   # rows stay unit length
        rot_null[s] = max(score(*nearest(za, zb)) for za in la for zb in rotated)
    best = float(observed.max())
    return observed, _band(best, perm_null), _band(best, rot_null)


def _band(observed: float, null: np.ndarray) -> NullBand:
    return NullBand(
        observed=observed,
        mean=float(null.mean()),
        p95=float(np.percentile(null, 95)),
        p_value=float((1 + np.sum(null >= observed)) / (1 + len(null))),
        n_shuffles=len(null),
    )


# -----------------------------------------------------------------------------
# representational similarity analysis (Kriegeskorte et al. 2008)


def concept_similarity_matrix(x: ArrayLike, labels: ArrayLike) -> tuple[list[Any], np.ndarray]:
    """Concept-by-concept cosine similarity of one representation.

    Rows are L2-normalised (so no sample dominates by its norm), averaged per
    concept, and the C x C matrix of cosines between the concept means is
    returned together with the concepts in sorted order.
    """
    x = as_numpy(x, "x")
    y = as_labels(labels, x.shape[0])
    concepts = np.unique(y)
    z = l2_normalize(x)
    means = l2_normalize(np.stack([z[y == c].mean(axis=0) for c in concepts]))
    return concepts.tolist(), means @ means.T


def rsa(a: ArrayLike, labels_a: ArrayLike, b: ArrayLike, labels_b: ArrayLike) -> float:
    """Representational similarity analysis (Kriegeskorte et al. 2008) between two modalities.

    Spearman correlation between the off-diagonal upper triangles of the two
    concept similarity matrices (``concept_similarity_matrix``), over the
    concepts both sides have. Rows need not be paired; only concepts are.

    What the number means: ~1 = both spaces rank concept pairs by similarity
    the same way ("dog" is closer to "cat" than to "car" in both); ~0 = no
    shared relational structure. A similar relational structure is NOT a
    shared space: two spaces with rho = 1 can have unrelated coordinates (any
    rotation keeps rho), so cross-modal retrieval there is at chance until a
    map is fitted on paired data.
    """
    ca, sa = concept_similarity_matrix(a, labels_a)
    cb, sb = concept_similarity_matrix(b, labels_b)
    shared = sorted(set(ca) & set(cb))
    if len(shared) < 3:
        raise ValueError(f"rsa needs at least 3 concepts shared by both sides, got {len(shared)}")
    ia = [ca.index(c) for c in shared]
    ib = [cb.index(c) for c in shared]
    iu = np.triu_indices(len(shared), k=1)
    rho = spearmanr(sa[np.ix_(ia, ia)][iu], sb[np.ix_(ib, ib)][iu]).statistic
    return float(rho)


def rsa_null(a: ArrayLike, b: ArrayLike, labels: ArrayLike, n_shuffles: int = 200, seed: int = 0) -> NullBand:
    """RSA of concept-paired features against a null that relabels b's concepts at random (which
    concept is which), keeping each side's own similarity structure."""
    y = as_labels(labels, as_numpy(a, "a").shape[0])
    names = np.unique(y)
    rng = np.random.default_rng(seed)
    observed = rsa(a, y, b, y)
    null = []
    for _ in range(n_shuffles):
        mapping = dict(zip(names, rng.permutation(names)))
        null.append(rsa(a, y, b, np.array([mapping[c] for c in y])))
    return _band(observed, np.array(null))

