"""Do data2vec's image, text and audio models share a latent space? Every metric with its null and its
positive controls, for every modality pair, and a verdict derived from the numbers.

Reading the numbers (metrics in ``metrics.py``, controls in ``controls.py``, pairs in ``pairing.py``):
- shared space?   raw cross-modal retrieval, no fitting: each side reduced to a common width on its
                  own (``to_common_dim``); compared with its permutation and rotation nulls.
- alignable?      Procrustes and an InfoNCE association network fitted on half the pairs, scored on
                  the other half. High here + chance above = the spaces CAN be aligned, given pairs.
- same structure? mutual kNN (best layer pair), unbiased CKA and RSA compare neighbourhoods /
                  similarity structure WITHIN each space: second-order similarity, not a shared space.
                  CKA is reported on the raw last-layer features and, next to it, after Huh et al.'s
                  preprocessing (outliers clipped, rows L2-normalised), each with its own null.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from d2v_lab.train.config import AlignConfig
from d2v_lab.train.runs import ALIGN_JSON, ALIGNMENT, CHECKPOINT, UMAP_VIEWS, is_fresh

from .controls import association_control, procrustes_control
from .metrics import (
    cross_modal_retrieval,
    mutual_knn_chance,
    mutual_knn_layers,
    permutation_null,
    platonic_preprocessing,
    retrieval_chance,
    retrieval_layers,
    rotation_null,
    rsa_null,
    to_common_dim,
    unbiased_cka_layers,
    unbiased_cka_null,
)
from .pairing import ConceptFeatures, collect_features, concept_pairs
from .results import (
    CKA,
    RSA,
    AlignmentResult,
    Association,
    MutualKNN,
    PairResult,
    Procrustes,
    RawRetrieval,
    SkippedPair,
)
from .verdict import verdict
from .views import save_views, umap_views

# the layout of align.json and views.npz; a saved result of another layout is recomputed, not reused.
# 2: verdicts with intervals and calls, views of held-out points with their coordinates.
ALIGN_FORMAT = 2
# (a, b) feature sets compared, in the order they are reported
COMPARISONS = (("image", "text_word"), ("image", "text_story"), ("audio", "text_word"), ("audio", "image"))


def compare(fa: ConceptFeatures, fb: ConceptFeatures, per_concept: int = 100, n_shuffles: int = 200,
            common_dim: int = 32, k: int = 10, seed: int = 0, layer_search: bool = False) -> PairResult:
    """Every metric for one modality pair, each with its null band and chance; the controls; a verdict.

    ``layer_search`` (Huh et al.'s protocol, which mutual kNN always follows): CKA and raw retrieval
    are read at their best layer pair instead of the last layers, and their nulls take the same
    maximum over the same layer pairs. The controls and RSA stay on the last layers."""
    # Hundreds of small matrix products: one BLAS thread is far faster than several here.
    with threadpool_limits(limits=1):
        result = _compare(fa, fb, per_concept, n_shuffles, common_dim, k, seed, layer_search)
    return dataclasses.replace(result, verdict=verdict(result))


def _best(scores: np.ndarray) -> list[int]:
    return [int(i) for i in np.unravel_index(scores.argmax(), scores.shape)]


def _compare(fa, fb, per_concept, n_shuffles, common_dim, k, seed, layer_search=False) -> PairResult:
    ia, ib, y = concept_pairs(fa, fb, per_concept, seed=seed)
    la, lb = fa.layers[:, ia], fb.layers[:, ib]              # (L+1, P, D) features of the P pairs
    a, b = la[-1], lb[-1]                                    # last layer for the single-layer metrics
    dim = min(common_dim, a.shape[1], b.shape[1], len(y) - 1)
    za, zb = to_common_dim(a, dim), to_common_dim(b, dim)

    knn_scores, knn_band = mutual_knn_layers(list(la), list(lb), k, n_shuffles, seed)
    best = np.unravel_index(knn_scores.argmax(), knn_scores.shape)
    retrieval_kwargs = dict(labels_a=y, labels_b=y)
    cka_layers = raw_layers = None
    if layer_search:
        scores, cka = unbiased_cka_layers(list(la), list(lb), n_shuffles, seed)
        platonic, cka_platonic = unbiased_cka_layers([platonic_preprocessing(x) for x in la],
                                                     [platonic_preprocessing(x) for x in lb], n_shuffles, seed)
        cka_layers = (_best(scores), _best(platonic))
        retrieval, raw_perm, raw_rot = retrieval_layers([to_common_dim(x, dim) for x in la],
                                                        [to_common_dim(x, dim) for x in lb], y, n_shuffles, seed)
        raw_layers = _best(retrieval)
    else:
        cka = unbiased_cka_null(a, b, n_shuffles, seed)
        # preprocessing is per matrix (one clip threshold) and per row, so it commutes with the shuffles
        cka_platonic = unbiased_cka_null(platonic_preprocessing(a), platonic_preprocessing(b), n_shuffles, seed)
        raw_perm = permutation_null(cross_modal_retrieval, za, zb, n_shuffles, seed, **retrieval_kwargs)
        raw_rot = rotation_null(cross_modal_retrieval, za, zb, n_shuffles, seed, **retrieval_kwargs)
    procrustes = procrustes_control(za, zb, y, seed=seed, n_shuffles=n_shuffles)
    assoc = association_control(a, b, y, seed=seed, n_shuffles=n_shuffles)
    relational = rsa_null(a, b, y, n_shuffles, seed)
    n_concepts = len(np.unique(y))
    return PairResult(
        pair=f"{fa.modality}-{fb.modality}", sources=[fa.source, fb.source], n_pairs=int(len(y)),
        concepts={c: int((y == c).sum()) for c in np.unique(y)},
        mutual_knn=MutualKNN(knn_band.observed, [int(best[0]), int(best[1])], knn_band.p95,
                             mutual_knn_chance(len(y), k), k, knn_scores.round(4).tolist()),
        cka=CKA(cka.observed, cka.p95, cka_platonic.observed, cka_platonic.p95,
                *(cka_layers or (None, None))),
        retrieval_raw=RawRetrieval(raw_perm.observed, retrieval_chance(y, y), raw_perm.p95, raw_rot.p95, dim,
                                   raw_layers),
        procrustes=Procrustes(**procrustes), association=Association(**assoc),
        # a rank correlation over fewer than 5 concepts (10 concept pairs) says little
        rsa=RSA(relational.observed, relational.p95, n_concepts, n_concepts >= 5))


def compare_all(feats: dict[str, ConceptFeatures], cfg: AlignConfig, progress: bool = True) -> AlignmentResult:
    """``compare`` for every pair in COMPARISONS; a pair without enough shared concepts is skipped."""
    pairs = {}
    for a, b in tqdm(COMPARISONS, desc="comparing spaces", disable=not progress, leave=False):
        try:
            pairs[f"{a}-{b}"] = compare(feats[a], feats[b], cfg.per_concept, cfg.n_shuffles, cfg.common_dim,
                                        seed=cfg.seed, layer_search=cfg.layer_search)
        except ValueError as e:  # e.g. no concept with enough samples on both sides
            pairs[f"{a}-{b}"] = SkippedPair(f"{a}-{b}", str(e))
    return AlignmentResult({m: f.counts() for m, f in feats.items()}, {m: f.source for m, f in feats.items()},
                           pairs, dataclasses.asdict(cfg))


def run_alignment(image_dir, text_dir, audio_dir, out_dir, cfg: AlignConfig = AlignConfig(), root=None,
                  progress: bool = True) -> AlignmentResult:
    """Compare every modality pair of three encoders (pretraining run folders, or Hugging Face encoders
    named ``hf:<id>`` or by a saved folder, see ``pairing.load_encoder``); write align.json and the 2-D
    views the UMAP figures draw (``views.npz``) into out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    feats = collect_features(image_dir, text_dir, audio_dir, cfg, root, progress)
    result = compare_all(feats, cfg, progress)
    (out / ALIGN_JSON).write_text(json.dumps({"format": ALIGN_FORMAT, **result.to_json()}, indent=2))
    save_views(umap_views(feats, cfg), out / UMAP_VIEWS)
    return result


def cached_alignment(runs_dir, cfg: AlignConfig, root=None, progress: bool = True, log=print) -> AlignmentResult:
    """align.json under runs_dir/alignment when it (and its views) are newer than the three checkpoints,
    else run_alignment on runs_dir/{image,text,audio}."""
    runs_dir = Path(runs_dir)
    out = runs_dir / ALIGNMENT
    inputs = [runs_dir / m / CHECKPOINT for m in ("image", "text", "audio")]
    if is_fresh(out / ALIGN_JSON, inputs) and is_fresh(out / UMAP_VIEWS, inputs):
        saved = json.loads((out / ALIGN_JSON).read_text())
        if saved.get("format") == ALIGN_FORMAT:      # an older layout (e.g. without intervals) is recomputed
            log(f"reusing {out / ALIGN_JSON} (newer than the three checkpoints)")
            return AlignmentResult.from_json(saved)
    return run_alignment(runs_dir / "image", runs_dir / "text", runs_dir / "audio", out, cfg, root, progress)
