"""Do data2vec's image, text and audio models share a latent space?

data2vec (Baevski et al. 2022) trains one *objective* on three modalities, but
three separate models. Nothing in training ties an image of a dog to the word
"dog", so there is no reason for their features to live in one coordinate
system. This module holds the numbers behind that argument:

* metrics on *paired* feature matrices (row i of ``a`` goes with row i of ``b``):
  mutual kNN alignment, unbiased linear CKA, cross-modal retrieval, RSA;
* their nulls: analytic chance levels, a permutation null over the pairing and
  a random-rotation null over one side's coordinates;
* positive controls that show what it takes to align two spaces once you are
  given paired data: orthogonal Procrustes and a small CLIP-style association
  network trained with symmetric InfoNCE.

Everything takes numpy arrays or torch tensors and returns Python floats,
numpy arrays or small dataclasses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy.stats import spearmanr

ArrayLike = Any  # np.ndarray | torch.Tensor | nested lists

__all__ = [
    "mutual_knn_alignment",
    "mutual_knn_chance",
    "unbiased_cka",
    "to_common_dim",
    "cross_modal_retrieval",
    "retrieval_chance",
    "NullBand",
    "permutation_null",
    "rotation_null",
    "ProcrustesMap",
    "procrustes_fit",
    "procrustes_control",
    "symmetric_info_nce",
    "AssociationHeads",
    "train_association_heads",
    "association_control",
    "concept_similarity_matrix",
    "rsa",
]


# -----------------------------------------------------------------------------
# input handling


def _as_numpy(x: ArrayLike, name: str = "x") -> np.ndarray:
    """Return x as a finite 2-D float64 numpy array (rows = samples)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().to(torch.float64).numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (samples x features), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf")
    return x


def _as_labels(labels: ArrayLike, n: int, name: str = "labels") -> np.ndarray:
    """Return labels as a 1-D numpy array with one entry per row."""
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != n:
        raise ValueError(f"{name} must be 1-D with {n} entries (one per row), got shape {labels.shape}")
    return labels


def _check_paired(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape[0] != b.shape[0]:
        raise ValueError(
            f"a and b must have the same number of rows (row i of a is paired with row i of b), "
            f"got {a.shape[0]} and {b.shape[0]}"
        )


def _check_same_width(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"a and b must have the same width to be compared coordinate-wise, got {a.shape[1]} and "
            f"{b.shape[1]}; use to_common_dim() (no cross-modal fitting) or a fitted map first"
        )


def _l2_normalize(x: np.ndarray) -> np.ndarray:
    # the floor keeps an all-zero row at zero instead of turning it into NaN
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _pair_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Mean cosine between row i of a and row i of b."""
    return float(np.mean(np.sum(_l2_normalize(a) * _l2_normalize(b), axis=1)))


# -----------------------------------------------------------------------------
# mutual k-nearest-neighbour alignment (Huh et al. 2024)


def _clip_outliers(x: np.ndarray, q: float | None) -> np.ndarray:
    """Clip |x| at its q-quantile over the whole matrix (one threshold per modality).

    Huh et al. (2024, appendix) clip outlier activations before measuring
    alignment, because a few huge "massive activation" dimensions would
    otherwise decide every cosine. Their code (``remove_outliers`` in
    minyoungg/platonic-rep) takes one scalar threshold per feature matrix:
    with ``exact=True`` (their ``--precise`` flag) the q-quantile of |x| over
    all entries, which is what we do; the default fast path averages
    per-sample quantiles instead, which gives a nearly identical threshold.
    """
    if q is None or q >= 1.0:
        return x
    if not 0.0 < q < 1.0:
        raise ValueError(f"clip_quantile must be in (0, 1] or None, got {q}")
    t = np.quantile(np.abs(x), q)
    return np.clip(x, -t, t)


def _knn_indices(x: np.ndarray, k: int) -> np.ndarray:
    """Indices (n, k) of each row's k most cosine-similar other rows (order within the k is arbitrary)."""
    z = _l2_normalize(x)
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
    a, b = _as_numpy(a, "a"), _as_numpy(b, "b")
    _check_paired(a, b)
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
    """
    a, b = _as_numpy(a, "a"), _as_numpy(b, "b")
    _check_paired(a, b)
    n = a.shape[0]
    if n < 4:
        raise ValueError(f"unbiased CKA needs at least 4 rows, got {n}")
    uk, ul = _u_center(a @ a.T), _u_center(b @ b.T)
    hkk, hll = _hsic_unbiased(uk, uk), _hsic_unbiased(ul, ul)
    if hkk <= 0 or hll <= 0:
        raise ValueError("unbiased CKA is undefined: a or b has no variance across rows")
    return _hsic_unbiased(uk, ul) / float(np.sqrt(hkk * hll))


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
    x = _as_numpy(x, "x")
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
    nearest = np.argmax(_l2_normalize(q) @ _l2_normalize(g).T, axis=1)
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
    a, b = _as_numpy(a, "a"), _as_numpy(b, "b")
    _check_same_width(a, b)
    la, lb = _as_labels(labels_a, a.shape[0], "labels_a"), _as_labels(labels_b, b.shape[0], "labels_b")
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
    a, b = _as_numpy(a, "a"), _as_numpy(b, "b")
    _check_paired(a, b)
    if n_shuffles < 1:
        raise ValueError(f"n_shuffles must be >= 1, got {n_shuffles}")
    n = a.shape[0]
    g = None if groups is None else _as_labels(groups, n, "groups")
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
    a, b = _as_numpy(a, "a"), _as_numpy(b, "b")
    if n_rotations < 1:
        raise ValueError(f"n_rotations must be >= 1, got {n_rotations}")
    rng = np.random.default_rng(seed)
    observed = float(metric(a, b, **metric_kwargs))
    null = np.array([metric(a, b @ _random_rotation(b.shape[1], rng), **metric_kwargs) for _ in range(n_rotations)])
    return _band(observed, null)


def _band(observed: float, null: np.ndarray) -> NullBand:
    return NullBand(
        observed=observed,
        mean=float(null.mean()),
        p95=float(np.percentile(null, 95)),
        p_value=float((1 + np.sum(null >= observed)) / (1 + len(null))),
        n_shuffles=len(null),
    )


# -----------------------------------------------------------------------------
# positive control 1: orthogonal Procrustes (Schonemann 1966)


@dataclass(frozen=True)
class ProcrustesMap:
    """x -> (x - mean_a) @ rotation + mean_b: the fitted rigid map from space A to space B."""

    rotation: np.ndarray
    mean_a: np.ndarray
    mean_b: np.ndarray

    def transform(self, x: ArrayLike) -> np.ndarray:
        x = _as_numpy(x, "x")
        if x.shape[1] != self.rotation.shape[0]:
            raise ValueError(f"x has width {x.shape[1]}, the map expects {self.rotation.shape[0]}")
        return (x - self.mean_a) @ self.rotation + self.mean_b


def procrustes_fit(a: ArrayLike, b: ArrayLike) -> ProcrustesMap:
    """Orthogonal R minimising ||(a - mean_a) R - (b - mean_b)||_F over rotations/reflections.

    Schonemann 1966, "A generalized solution of the orthogonal Procrustes
    problem": with U S V^T the SVD of a_c^T b_c, the minimiser is R = U V^T.
    It needs paired rows, which is the point: if data2vec's spaces differed
    only by a rotation, a handful of pairs would be enough to line them up.
    """
    a, b = _as_numpy(a, "a"), _as_numpy(b, "b")
    _check_paired(a, b)
    _check_same_width(a, b)
    mean_a, mean_b = a.mean(axis=0), b.mean(axis=0)
    u, _, vt = np.linalg.svd((a - mean_a).T @ (b - mean_b))
    return ProcrustesMap(rotation=u @ vt, mean_a=mean_a, mean_b=mean_b)


def _stratified_split(labels: np.ndarray, train_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split row indices into (fit, eval) so that every label appears on both sides."""
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
    rng = np.random.default_rng(seed)
    fit, held = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        if len(idx) < 2:
            raise ValueError(f"concept {c!r} has {len(idx)} pair(s); need at least 2 to split into fit/eval")
        n_fit = min(max(int(round(train_fraction * len(idx))), 1), len(idx) - 1)
        fit.append(idx[:n_fit])
        held.append(idx[n_fit:])
    return np.sort(np.concatenate(fit)), np.sort(np.concatenate(held))


def procrustes_control(
    a: ArrayLike, b: ArrayLike, labels: ArrayLike, train_fraction: float = 0.5, seed: int = 0
) -> dict[str, float]:
    """How much of the gap between two same-width spaces a single rotation closes, on held-out pairs.

    Pairs are split per concept into a fit part (``train_fraction``) and an
    evaluation part. Both halves are centred with the fit part's per-modality
    means (within-modality preprocessing, no cross-modal information); the
    rotation is fitted on the fit pairs only. Returned keys (floats):

    - ``retrieval_before`` / ``retrieval_after``: symmetric cross-modal
      retrieval on the evaluation pairs, in raw shared coordinates vs. after
      rotating a onto b;
    - ``pair_cosine_before`` / ``pair_cosine_after``: mean cosine of the
      true evaluation pairs, before vs. after;
    - ``chance``: ``retrieval_chance`` of the evaluation labels;
    - ``n_fit`` / ``n_eval``: pair counts.

    Spaces of different widths: bring both to one width with ``to_common_dim``
    first (Procrustes then also has to undo the arbitrary PCA axes, which is
    what it is for).
    """
    a, b = _as_numpy(a, "a"), _as_numpy(b, "b")
    _check_paired(a, b)
    _check_same_width(a, b)
    y = _as_labels(labels, a.shape[0])
    fit, held = _stratified_split(y, train_fraction, seed)
    m = procrustes_fit(a[fit], b[fit])
    a_eval, b_eval = a[held] - m.mean_a, b[held] - m.mean_b
    a_mapped = a_eval @ m.rotation
    return {
        "retrieval_before": cross_modal_retrieval(a_eval, b_eval, y[held], y[held]),
        "retrieval_after": cross_modal_retrieval(a_mapped, b_eval, y[held], y[held]),
        "pair_cosine_before": _pair_cosine(a_eval, b_eval),
        "pair_cosine_after": _pair_cosine(a_mapped, b_eval),
        "chance": retrieval_chance(y[held], y[held]),
        "n_fit": float(len(fit)),
        "n_eval": float(len(held)),
    }


# -----------------------------------------------------------------------------
# positive control 2: a CLIP-style association network over frozen features


def symmetric_info_nce(
    za: torch.Tensor, zb: torch.Tensor, temperature: float, labels: torch.Tensor | None = None
) -> torch.Tensor:
    """CLIP's loss (Radford et al. 2021; InfoNCE of van den Oord et al. 2018).

    za, zb: (B, dim) L2-normalised embeddings of B pairs. logits[i, j] =
    cos(za_i, zb_j) / temperature; cross-entropy with target j = i, averaged
    over the a->b (rows) and b->a (columns) directions. Every other item in the
    batch is a negative, so the heads learn to make true pairs the most similar.

    ``labels`` (B,): when pairs are formed by *concept* (an image of a dog next
    to some recording of "dog"), other same-concept items in the batch are not
    negatives. Then the target of row i is spread evenly over all j with
    labels[j] == labels[i] (the multi-positive form of Khosla et al. 2020,
    "Supervised Contrastive Learning"). Without it, the only way to tell
    same-concept pairs apart is to memorise their noise, which overfits.
    """
    logits = za @ zb.T / temperature
    if labels is None:
        target = torch.arange(za.shape[0], device=za.device)
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
    same = (labels[:, None] == labels[None, :]).to(logits.dtype)
    target = same / same.sum(dim=1, keepdim=True)  # symmetric, so it serves both directions
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def _make_head(d_in: int, dim: int, hidden: int | None) -> nn.Module:
    if hidden is None:
        return nn.Linear(d_in, dim)
    return nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Linear(hidden, dim))


@dataclass(frozen=True, eq=False)
class AssociationHeads:
    """Two trained projection heads; ``project_a`` / ``project_b`` map each modality into the joint space."""

    head_a: nn.Module
    head_b: nn.Module
    mean_a: np.ndarray
    std_a: np.ndarray
    mean_b: np.ndarray
    std_b: np.ndarray
    losses: tuple[float, ...]  # mean training loss per epoch

    @staticmethod
    def _project(head: nn.Module, x: ArrayLike, mean: np.ndarray, std: np.ndarray, name: str) -> np.ndarray:
        x = _as_numpy(x, name)
        if x.shape[1] != mean.shape[0]:
            raise ValueError(f"{name} has width {x.shape[1]}, the head expects {mean.shape[0]}")
        head.eval()
        with torch.no_grad():
            z = head(torch.from_numpy((x - mean) / std).float())
        return F.normalize(z, dim=1).double().numpy()

    def project_a(self, x: ArrayLike) -> np.ndarray:
        """L2-normalised joint-space embeddings of modality-A features."""
        return self._project(self.head_a, x, self.mean_a, self.std_a, "x")

    def project_b(self, x: ArrayLike) -> np.ndarray:
        """L2-normalised joint-space embeddings of modality-B features."""
        return self._project(self.head_b, x, self.mean_b, self.std_b, "x")


def _standardizer(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    std = x.std(axis=0)
    return x.mean(axis=0), np.where(std > 1e-8, std, 1.0)  # constant features: leave unscaled


def train_association_heads(
    a: ArrayLike,
    b: ArrayLike,
    dim: int = 64,
    epochs: int = 100,
    lr: float = 1e-3,
    temperature: float = 0.1,
    seed: int = 0,
    batch_size: int = 128,
    hidden: int | None = 256,
    weight_decay: float = 1e-4,
    labels: ArrayLike | None = None,
) -> AssociationHeads:
    """Learn to align two *frozen* feature spaces from paired rows, CLIP-style.

    Radford et al. 2021 (CLIP) put a linear projection on top of two encoders
    and train everything with the symmetric InfoNCE loss (van den Oord et al.
    2018). Here the encoders (data2vec's models) stay frozen, so the heads are
    the only trainable part: by default a small MLP (Linear -> GELU -> Linear),
    because a linear head can only rotate/stretch and frozen features from
    independently trained models need not be related linearly. Pass
    ``hidden=None`` for CLIP's linear projection.

    ``labels`` (one per pair, optional): treat every same-concept pair in a
    batch as a positive (see ``symmetric_info_nce``). Use it when pairs were
    formed by concept rather than by instance (a caption *of this* image).

    Inputs are standardised with the mean/std of these training rows (stored
    in the result, so held-out rows get the same transform). The temperature
    is fixed rather than learned, for simplicity. Deterministic for a given
    seed: initialisation and batch order use it, and the global torch RNG
    state is left as it was.
    """
    a, b = _as_numpy(a, "a"), _as_numpy(b, "b")
    _check_paired(a, b)
    n = a.shape[0]
    if n < 2:
        raise ValueError("need at least 2 pairs: InfoNCE contrasts each pair with the others")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    mean_a, std_a = _standardizer(a)
    mean_b, std_b = _standardizer(b)
    xa = torch.from_numpy((a - mean_a) / std_a).float()
    xb = torch.from_numpy((b - mean_b) / std_b).float()
    if labels is not None:  # integer codes, so torch can compare them
        yt = torch.from_numpy(np.unique(_as_labels(labels, n), return_inverse=True)[1].reshape(-1))

    with torch.random.fork_rng(devices=[]):  # seed the init without disturbing the caller's RNG
        torch.manual_seed(seed)
        head_a = _make_head(a.shape[1], dim, hidden)
        head_b = _make_head(b.shape[1], dim, hidden)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW([*head_a.parameters(), *head_b.parameters()], lr=lr, weight_decay=weight_decay)

    losses = []
    head_a.train()
    head_b.train()
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        total, batches = 0.0, 0
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            if len(idx) < 2:  # a batch of one has no negatives
                continue
            za = F.normalize(head_a(xa[idx]), dim=1)
            zb = F.normalize(head_b(xb[idx]), dim=1)
            loss = symmetric_info_nce(za, zb, temperature, None if labels is None else yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total, batches = total + loss.item(), batches + 1
        losses.append(total / max(batches, 1))
    return AssociationHeads(head_a, head_b, mean_a, std_a, mean_b, std_b, tuple(losses))


def association_control(
    a: ArrayLike,
    b: ArrayLike,
    labels: ArrayLike,
    train_fraction: float = 0.5,
    seed: int = 0,
    concept_positives: bool = True,
    **head_kwargs: Any,
) -> dict[str, float]:
    """What paired data buys: held-out retrieval after training association heads on the other pairs.

    Pairs are split per concept into fit/eval parts; heads are trained on the
    fit pairs (``head_kwargs`` go to ``train_association_heads``) and scored on
    the evaluation pairs. a and b may have different widths. With
    ``concept_positives`` (default) the fit labels are passed to the heads so
    that same-concept pairs count as positives, which is right for
    concept-paired data; False gives plain instance-level CLIP training.
    Returned keys:

    - ``retrieval``: symmetric cross-modal retrieval in the learned joint space;
    - ``retrieval_baseline``: the same with no cross-modal fitting, each side
      of the evaluation half passed through ``to_common_dim`` on its own (to
      min(both widths, head dim, n_eval) coordinates). One such number can sit
      well away from chance by accident; see ``rotation_null``;
    - ``pair_cosine``: mean cosine of true evaluation pairs in the joint space;
    - ``chance``: ``retrieval_chance`` of the evaluation labels;
    - ``final_loss``: last epoch's training loss;
    - ``n_fit`` / ``n_eval``: pair counts.
    """
    a, b = _as_numpy(a, "a"), _as_numpy(b, "b")
    _check_paired(a, b)
    y = _as_labels(labels, a.shape[0])
    fit, held = _stratified_split(y, train_fraction, seed)
    fit_labels = y[fit] if concept_positives else None
    heads = train_association_heads(a[fit], b[fit], seed=seed, labels=fit_labels, **head_kwargs)
    za, zb = heads.project_a(a[held]), heads.project_b(b[held])
    common = min(a.shape[1], b.shape[1], len(held), za.shape[1])
    return {
        "retrieval": cross_modal_retrieval(za, zb, y[held], y[held]),
        "retrieval_baseline": cross_modal_retrieval(
            to_common_dim(a[held], common), to_common_dim(b[held], common), y[held], y[held]
        ),
        "pair_cosine": _pair_cosine(za, zb),
        "chance": retrieval_chance(y[held], y[held]),
        "final_loss": float(heads.losses[-1]) if heads.losses else float("nan"),
        "n_fit": float(len(fit)),
        "n_eval": float(len(held)),
    }


# -----------------------------------------------------------------------------
# representational similarity analysis (Kriegeskorte et al. 2008)


def concept_similarity_matrix(x: ArrayLike, labels: ArrayLike) -> tuple[list[Any], np.ndarray]:
    """Concept-by-concept cosine similarity of one representation.

    Rows are L2-normalised (so no sample dominates by its norm), averaged per
    concept, and the C x C matrix of cosines between the concept means is
    returned together with the concepts in sorted order.
    """
    x = _as_numpy(x, "x")
    y = _as_labels(labels, x.shape[0])
    concepts = np.unique(y)
    z = _l2_normalize(x)
    means = _l2_normalize(np.stack([z[y == c].mean(axis=0) for c in concepts]))
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
