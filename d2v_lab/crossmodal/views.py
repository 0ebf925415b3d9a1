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


def umap_views(feats: dict[str, ConceptFeatures], cfg: AlignConfig) -> Views:
    """The "raw" and "associated" joint UMAPs of at most ``cfg.umap_points`` points (last layer)."""
    rng = np.random.default_rng(cfg.seed)
    names = [m for m in ("image", "text_word", "audio") if m in feats]
    per = max(1, cfg.umap_points // len(names))
    chosen = {m: np.sort(rng.choice(len(feats[m].concepts), min(per, len(feats[m].concepts)), replace=False))
              for m in names}
    last = {m: feats[m].layers[-1] for m in names}
    # one common width for every modality, at most what the smallest sample of points supports
    dim = min(cfg.common_dim, *(min(len(chosen[m]), last[m].shape[1]) for m in names))
    raw = {m: to_common_dim(last[m][chosen[m]], dim) for m in names}
    heads = train_joint_heads({m: (last[m], feats[m].concepts) for m in names}, dim=cfg.common_dim, seed=cfg.seed)
    joint = {m: heads[m](last[m][chosen[m]]) for m in names}
    modality = np.concatenate([[m] * len(chosen[m]) for m in names])
    concept = np.concatenate([feats[m].concepts[chosen[m]] for m in names]).astype(str)
    return {tag: {"xy": umap_2d(np.concatenate([space[m] for m in names]), seed=cfg.seed),
                  "modality": modality, "concept": concept}
            for tag, space in (("raw", raw), ("associated", joint))}


def save_views(views: Views, path: Path) -> None:
    np.savez(path, **{f"{tag}/{key}": v for tag, view in views.items() for key, v in view.items()})


def load_views(path: Path) -> Views:
    views: Views = {}
    with np.load(path) as f:
        for name in f.files:
            tag, key = name.split("/")
            views.setdefault(tag, {})[key] = f[name]
    return views
