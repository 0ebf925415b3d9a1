"""2-D views of the joint feature space for the pictures: a UMAP of image, text (word vectors) and audio
features (1) in data2vec's own spaces, each reduced to the same width on its own, and (2) after joint
association heads trained on concept pairs. A picture, not evidence: the numbers are in align.json."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from d2v_lab.train.config import AlignConfig

from .controls import train_joint_heads
from .metrics import l2_normalize, to_common_dim
from .pairing import ConceptFeatures

# view tag -> {"xy": (N, 2), "modality": (N,), "concept": (N,)}
Views = dict[str, dict[str, np.ndarray]]


def umap_2d(x: np.ndarray, n_neighbors: int = 15, seed: int = 0) -> np.ndarray:
    """2-D UMAP (McInnes et al. 2018) on a precomputed exact cosine kNN graph: for <= a few thousand
    points that is faster than UMAP's own approximate search, and reproducible."""
    import umap  # a heavy optional import (~13 s the first time): only when a view is computed

    z = l2_normalize(x)
    dist = 1.0 - z @ z.T
    idx = np.argsort(dist, axis=1)[:, :n_neighbors]          # the point itself comes first
    knn = (idx, np.take_along_axis(dist, idx, axis=1).clip(min=0), None)
    reducer = umap.UMAP(n_neighbors=n_neighbors, metric="cosine", precomputed_knn=knn, random_state=seed,
                        n_jobs=1)
    with warnings.catch_warnings():  # "no NNDescent index, transform() unavailable": we never transform
        warnings.filterwarnings("ignore", message=r"precomputed_knn\[2\]", category=UserWarning)
        return reducer.fit_transform(x)


def _halves(concepts: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices split per concept into a fitting half and a held-out half (a concept with one row
    goes to the held-out half only)."""
    rng = np.random.default_rng(seed)
    fit, held = [], []
    for c in np.unique(concepts):
        idx = rng.permutation(np.flatnonzero(concepts == c))
        n_fit = len(idx) // 2
        fit.append(idx[:n_fit])
        held.append(idx[n_fit:])
    return np.sort(np.concatenate(fit)), np.sort(np.concatenate(held))


def umap_views(feats: dict[str, ConceptFeatures], cfg: AlignConfig) -> Views:
    """The "raw" and "associated" joint views of image, text (word vectors) and audio, last layer.

    Only concepts that at least two of the modalities share are shown (a concept one modality alone has
    cannot line up with anything). The association heads are fitted on one half of each concept's rows
    and every point shown comes from the OTHER half, so the "associated" picture shows held-out points,
    not the heads' training data. Each view keeps the points' coordinates before the UMAP ("z": the
    common-width PCA for "raw", the heads' joint space for "associated") for similarity matrices and
    nearest neighbours."""
    names = [m for m in ("image", "text_word", "audio") if m in feats]
    counts = {c: sum(c in set(feats[m].concepts) for m in names) for m in names for c in feats[m].concepts}
    shared = {c for c, n in counts.items() if n >= 2}
    rng = np.random.default_rng(cfg.seed)
    per = max(1, cfg.umap_points // len(names))
    fit, shown, last = {}, {}, {}
    for m in names:
        keep = np.flatnonzero(np.isin(feats[m].concepts, list(shared)))
        f, h = _halves(feats[m].concepts[keep], cfg.seed)
        fit[m] = keep[f]
        shown[m] = np.sort(rng.choice(keep[h], min(per, len(h)), replace=False))
        last[m] = feats[m].layers[-1]
    # one common width for every modality, at most what the smallest sample of points supports
    dim = min(cfg.common_dim, *(min(len(shown[m]), last[m].shape[1]) for m in names))
    raw = {m: to_common_dim(last[m][shown[m]], dim) for m in names}
    heads = train_joint_heads({m: (last[m][fit[m]], feats[m].concepts[fit[m]]) for m in names},
                              dim=cfg.common_dim, seed=cfg.seed)
    joint = {m: heads[m](last[m][shown[m]]) for m in names}
    modality = np.concatenate([[m] * len(shown[m]) for m in names])
    concept = np.concatenate([feats[m].concepts[shown[m]] for m in names]).astype(str)
    views = {}
    for tag, space in (("raw", raw), ("associated", joint)):
        z = np.concatenate([space[m] for m in names])
        views[tag] = {"xy": umap_2d(z, seed=cfg.seed), "z": z, "modality": modality, "concept": concept}
    return views


def cross_similarity(view: dict[str, np.ndarray], a: str, b: str) -> tuple[list[str], list[str], np.ndarray]:
    """Concept x concept cosine similarity between modality ``a``'s and ``b``'s concept means in one
    view's coordinates ("z"): rows are a's concepts, columns b's (sorted). In one shared space the
    diagonal (same concept) stands out; between unrelated coordinate systems it does not."""
    z = l2_normalize(view["z"])
    means = {}
    for m in (a, b):
        rows = view["modality"] == m
        names = sorted(set(view["concept"][rows].tolist()))
        means[m] = (names, l2_normalize(np.stack([z[rows & (view["concept"] == c)].mean(0) for c in names])))
    (ca, ma), (cb, mb) = means[a], means[b]
    return ca, cb, ma @ mb.T


def nearest(view: dict[str, np.ndarray], query: int, modality: str, k: int = 5) -> list[str]:
    """The concepts of the ``k`` points of ``modality`` nearest (cosine, in "z") to point ``query``."""
    z = l2_normalize(view["z"])
    rows = np.flatnonzero(view["modality"] == modality)
    order = rows[np.argsort(-(z[rows] @ z[query]))[:k]]
    return view["concept"][order].tolist()


def nearest_is_own_concept(view: dict[str, np.ndarray], a: str, b: str):
    """For every point of modality ``a``: is its nearest point of modality ``b`` (cosine, in "z") of the
    same concept? Returns (a's concepts (Na,), the hits (Na,) bool, the chance of each hit (Na,): the
    share of b's points with that concept, what a random neighbour would score)."""
    z, mods, concept = l2_normalize(view["z"]), view["modality"], view["concept"]
    ia, ib = np.flatnonzero(mods == a), np.flatnonzero(mods == b)
    hits = concept[ib[np.argmax(z[ia] @ z[ib].T, axis=1)]] == concept[ia]
    chance = np.array([(concept[ib] == c).mean() for c in concept[ia]])
    return concept[ia], hits, chance


def save_views(views: Views, path: Path) -> None:
    np.savez(path, **{f"{tag}/{key}": v for tag, view in views.items() for key, v in view.items()})


def load_views(path: Path) -> Views:
    views: Views = {}
    with np.load(path) as f:
        for name in f.files:
            tag, key = name.split("/")
            views.setdefault(tag, {})[key] = f[name]
    return views
