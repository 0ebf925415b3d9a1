"""Do data2vec's image, text and audio models share a latent space? Concept-paired features, every
metric with its null and its positive controls, and a verdict derived from the numbers.

Pairs come from the data's own labels, by CONCEPT (no dataset pairs an image with a sentence about
it): image <-> text over the CIFAR-10 classes the stories mention; audio <-> text over the spoken
words that are concepts (digits from FSDD and Speech Commands, bird/cat/dog from Speech Commands);
audio <-> image over bird, cat, dog. Text features are the contextual vectors at the concept word's
tokens ("word"), and separately the pooled story ("story").

Reading the numbers (metrics in ``align.py``, controls in ``associate.py``):
- shared space?   raw cross-modal retrieval, no fitting: each side reduced to a common width on its
                  own (``to_common_dim``); compared with its permutation and rotation nulls.
- alignable?      Procrustes and an InfoNCE association network fitted on half the pairs, scored on
                  the other half. High here + chance above = the spaces CAN be aligned, given pairs.
- same structure? mutual kNN (best layer pair), unbiased CKA and RSA compare neighbourhoods /
                  similarity structure WITHIN each space: second-order similarity, not a shared space.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from d2v_lab.data import load_cifar10, load_fsdd, load_speech_commands, load_stories
from d2v_lab.data.concepts import CONCEPT_WORDS, DIGIT_WORDS, first_mentions
from d2v_lab.data.root import DatasetNotFound
from d2v_lab.data.tokenizer import CLS_ID, PAD_ID
from d2v_lab.evaluate.probe import layer_features
from d2v_lab.train.inputs import audio_inputs

from .controls import association_control, procrustes_control
from .metrics import (
    cross_modal_retrieval,
    mutual_knn_chance,
    mutual_knn_layers,
    permutation_null,
    retrieval_chance,
    rotation_null,
    rsa,
    to_common_dim,
    unbiased_cka,
)

IMAGE_CONCEPTS = tuple(CONCEPT_WORDS)                       # the CIFAR-10 classes
SPOKEN_CONCEPTS = DIGIT_WORDS + ("bird", "cat", "dog")      # words that are both spoken and written
PAIRS = (("image", "text"), ("audio", "text"), ("audio", "image"))


@dataclass
class ConceptFeatures:
    modality: str
    layers: np.ndarray      # (L+1, N, D): layer 0 = embedded input, then every block
    concepts: np.ndarray    # (N,) concept name of each row
    source: str

    def counts(self) -> dict[str, int]:
        names, n = np.unique(self.concepts, return_counts=True)
        return {str(c): int(k) for c, k in zip(names, n)}


def _sample(rng, idx: np.ndarray, n: int) -> np.ndarray:
    return np.sort(rng.choice(idx, size=min(n, len(idx)), replace=False))


def image_features(model, root=None, per_concept: int = 100, seed: int = 0) -> ConceptFeatures:
    """CIFAR-10 TEST images (never seen in pretraining), up to ``per_concept`` per class."""
    test = load_cifar10("test", root)
    rng = np.random.default_rng(seed)
    keep = np.concatenate([_sample(rng, np.flatnonzero(test.labels == c), per_concept)
                           for c in range(len(test.classes))])
    feats = layer_features(model.student, torch.from_numpy(test.images[keep]))["mean"]
    return ConceptFeatures("image", feats, np.array(test.classes)[test.labels[keep]], "cifar10/test")


def audio_features(model, root=None, per_concept: int = 100, seed: int = 0, progress: bool = True) -> ConceptFeatures:
    """Spoken concept words: FSDD digits (all speakers) and Speech Commands clips of digits and
    bird/cat/dog (all splits), up to ``per_concept`` per word."""
    clips = []
    for split in ("training", "validation", "testing"):
        sc = load_speech_commands(split, root)
        words = np.array(sc.classes)[sc.labels]
        clips.append((sc.subset(np.flatnonzero(np.isin(words, SPOKEN_CONCEPTS))), "speechcommands"))
    try:
        clips.append((load_fsdd("all", root), "fsdd"))
    except DatasetNotFound:
        pass
    rng = np.random.default_rng(seed)
    words = np.concatenate([np.array(c.classes)[c.labels] for c, _ in clips])
    owner = np.concatenate([np.full(len(c), i) for i, (c, _) in enumerate(clips)])
    offset = np.cumsum([0] + [len(c) for c, _ in clips])
    keep = np.concatenate([_sample(rng, np.flatnonzero(words == w), per_concept) for w in SPOKEN_CONCEPTS
                           if (words == w).any()])
    parts = [clips[o][0].subset(keep[owner[keep] == o] - offset[o]) for o in range(len(clips))]
    x = torch.cat([audio_inputs(p, progress) for p in parts])
    ordered = np.concatenate([keep[owner[keep] == o] for o in range(len(clips))])
    feats = layer_features(model.student, x)["mean"]
    return ConceptFeatures("audio", feats, words[ordered], " + ".join(sorted({s for _, s in clips})))


def text_features(model, tok, seq_len: int, root=None, concepts=IMAGE_CONCEPTS + DIGIT_WORDS,
                  per_concept: int = 100, mode: str = "word", seed: int = 0) -> ConceptFeatures:
    """Text features per concept from stories (train + valid) that mention it: the contextual vector
    at the first mention's tokens (mode="word") or the mean of the story window (mode="story", only
    stories that mention exactly one of ``concepts``). The word is NOT masked: this is what the model
    makes of "cat" in context."""
    stories = load_stories("train", root) + load_stories("valid", root)
    rng = np.random.default_rng(seed)
    rows, selects, labels = [], [], []
    mentions = [first_mentions(s, concepts) for s in stories]      # one scan per story
    if mode == "story":  # a story vector stands for one concept only
        keep = [i for i, m in enumerate(mentions) if len(m) == 1]
        stories, mentions = [stories[i] for i in keep], [mentions[i] for i in keep]
    for concept in concepts:
        hits = [(i, m[concept]) for i, m in enumerate(mentions) if concept in m]
        for j in _sample(rng, np.arange(len(hits)), per_concept):
            i, match = hits[j]
            enc = tok.encode(stories[i], add_special_tokens=False)
            word = [t for t, (a, b) in enumerate(enc.offsets) if a < match.end() and b > match.start()]
            body = seq_len - 1
            start = max(0, min(word[0] - body // 4, len(enc.ids) - body))
            ids = [CLS_ID] + enc.ids[start:start + body]
            sel = torch.zeros(seq_len, dtype=torch.bool)
            if mode == "word":
                sel[[t - start + 1 for t in word if t - start + 1 < seq_len]] = True
            else:
                sel[1:len(ids)] = True
            rows.append(ids + [PAD_ID] * (seq_len - len(ids)))
            selects.append(sel)
            labels.append(concept)
    x, sel = torch.tensor(rows, dtype=torch.long), torch.stack(selects)
    feats = layer_features(model.student, x, select=sel)["mean"]
    return ConceptFeatures("text", feats, np.array(labels), f"tinystories ({mode} vectors)")


def concept_pairs(fa: ConceptFeatures, fb: ConceptFeatures, per_concept: int = 100, min_per_concept: int = 5,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row indices (ia, ib) pairing samples of the same concept, min(count_a, count_b, per_concept)
    per shared concept with at least ``min_per_concept`` on both sides; and the pair labels."""
    rng = np.random.default_rng(seed)
    ia, ib, labels = [], [], []
    for c in sorted(set(fa.concepts) & set(fb.concepts)):
        a, b = np.flatnonzero(fa.concepts == c), np.flatnonzero(fb.concepts == c)
        n = min(len(a), len(b), per_concept)
        if n < min_per_concept:
            continue
        ia.append(rng.choice(a, n, replace=False))
        ib.append(rng.choice(b, n, replace=False))
        labels += [c] * n
    if not labels:
        raise ValueError(f"no concept has >= {min_per_concept} samples in both {fa.modality} and {fb.modality}")
    return np.concatenate(ia), np.concatenate(ib), np.array(labels)


def rsa_null(a, b, labels, n_shuffles: int = 200, seed: int = 0) -> dict:
    """RSA with a null that relabels b's concepts at random (which concept is which)."""
    observed = rsa(a, labels, b, labels)
    names = np.unique(labels)
    rng = np.random.default_rng(seed)
    null = []
    for _ in range(n_shuffles):
        mapping = dict(zip(names, rng.permutation(names)))
        null.append(rsa(a, labels, b, np.array([mapping[c] for c in labels])))
    return {"observed": observed, "p95": float(np.percentile(null, 95)), "n_concepts": len(names),
            "interpretable": len(names) >= 5}


def compare(fa: ConceptFeatures, fb: ConceptFeatures, per_concept: int = 100, n_shuffles: int = 200,
            common_dim: int = 32, k: int = 10, seed: int = 0) -> dict:
    """Every metric for one modality pair, each with its null band and chance; the controls; a verdict."""
    # Hundreds of small matrix products: one BLAS thread is ~10x faster than several here (measured).
    with threadpool_limits(limits=1):
        return _compare(fa, fb, per_concept, n_shuffles, common_dim, k, seed)


def _compare(fa, fb, per_concept, n_shuffles, common_dim, k, seed) -> dict:
    ia, ib, y = concept_pairs(fa, fb, per_concept, seed=seed)
    la, lb = fa.layers[:, ia], fb.layers[:, ib]
    a, b = la[-1], lb[-1]                                    # last layer for the single-layer metrics
    dim = min(common_dim, a.shape[1], b.shape[1], len(y) - 1)
    za, zb = to_common_dim(a, dim), to_common_dim(b, dim)

    knn_scores, knn_band = mutual_knn_layers(list(la), list(lb), k, n_shuffles, seed)
    best = np.unravel_index(knn_scores.argmax(), knn_scores.shape)
    cka = permutation_null(unbiased_cka, a, b, n_shuffles, seed)
    retrieval_kwargs = dict(labels_a=y, labels_b=y)
    raw_perm = permutation_null(cross_modal_retrieval, za, zb, n_shuffles, seed, **retrieval_kwargs)
    raw_rot = rotation_null(cross_modal_retrieval, za, zb, n_shuffles, seed, **retrieval_kwargs)
    procrustes = procrustes_control(za, zb, y, seed=seed, n_shuffles=n_shuffles)
    assoc = association_control(a, b, y, seed=seed, n_shuffles=n_shuffles)
    relational = rsa_null(a, b, y, n_shuffles, seed)

    result = {
        "pair": f"{fa.modality}-{fb.modality}", "sources": [fa.source, fb.source],
        "n_pairs": int(len(y)), "concepts": {c: int((y == c).sum()) for c in np.unique(y)},
        "mutual_knn": {"best": knn_band.observed, "best_layers": [int(best[0]), int(best[1])],
                       "null_p95": knn_band.p95, "chance": mutual_knn_chance(len(y), k), "k": k,
                       "all_layer_pairs": knn_scores.round(4).tolist()},
        "cka": {"observed": cka.observed, "null_p95": cka.p95},
        "retrieval_raw": {"observed": raw_perm.observed, "chance": retrieval_chance(y, y),
                          "permutation_p95": raw_perm.p95, "rotation_p95": raw_rot.p95, "common_dim": dim},
        "procrustes": procrustes, "association": assoc, "rsa": relational,
    }
    result["verdict"] = verdict(result)
    return result


def verdict(r: dict) -> dict:
    """Plain-language conclusions computed from the numbers (never a fixed sentence)."""
    raw = r["retrieval_raw"]
    raw_null = max(raw["permutation_p95"], raw["rotation_p95"])
    shared = raw["observed"] > raw_null
    assoc, proc = r["association"], r["procrustes"]
    alignable = assoc["retrieval"] > assoc["null_p95"]
    structure = {"mutual_knn": r["mutual_knn"]["best"] > r["mutual_knn"]["null_p95"],
                 "cka": r["cka"]["observed"] > r["cka"]["null_p95"],
                 "rsa": r["rsa"]["interpretable"] and r["rsa"]["observed"] > r["rsa"]["p95"]}
    pct = lambda v: f"{100 * v:.1f}%"  # noqa: E731
    lines = [
        (f"shared space: {'YES' if shared else 'NO'}: without any fitting, cross-modal retrieval is "
         f"{pct(raw['observed'])} (chance {pct(raw['chance'])}, null 95th percentile {pct(raw_null)}), "
         f"{'above' if shared else 'inside'} the null band."),
        (f"alignable with paired data: {'YES' if alignable else 'NO'}: an association network fitted on "
         f"{int(assoc['n_fit'])} concept pairs reaches {pct(assoc['retrieval'])} held-out retrieval (null 95th "
         f"percentile {pct(assoc['null_p95'])}); a rotation (Procrustes) reaches {pct(proc['retrieval_after'])}."),
        (f"similar relational structure (second-order, NOT a shared space): mutual kNN "
         f"{r['mutual_knn']['best']:.3f} vs null {r['mutual_knn']['null_p95']:.3f} "
         f"({'above' if structure['mutual_knn'] else 'inside'}); CKA {r['cka']['observed']:.3f} vs null "
         f"{r['cka']['null_p95']:.3f} ({'above' if structure['cka'] else 'inside'}); RSA "
         f"{r['rsa']['observed']:.2f} vs null {r['rsa']['p95']:.2f} over {r['rsa']['n_concepts']} concepts"
         + ("" if r["rsa"]["interpretable"] else " (too few concepts to read)") + "."),
    ]
    return {"shared_space": bool(shared), "alignable": bool(alignable), "structure": structure, "text": lines}


@dataclass(frozen=True)
class AlignConfig:
    per_concept: int = 100    # samples per concept and modality
    n_shuffles: int = 200     # permutation / rotation null size
    common_dim: int = 32      # width of the unfitted common space (per-modality PCA)
    umap_points: int = 1000   # at most this many points in the UMAP pictures
    seed: int = 0


ALIGN_PROFILES = {"ci": AlignConfig(per_concept=20, umap_points=300),
                  "cpu": AlignConfig(per_concept=100, umap_points=900),
                  "gpu": AlignConfig(per_concept=200, umap_points=1500)}


def collect_features(image_dir, text_dir, audio_dir, cfg: AlignConfig, root=None,
                     progress: bool = True) -> dict[str, ConceptFeatures]:
    """Concept features of every modality from three pretraining runs."""
    from d2v_lab.train.checkpoint import load_run

    image, _, _ = load_run(image_dir, "image")
    text, text_cfg, tok = load_run(text_dir, "text")
    audio, _, _ = load_run(audio_dir, "audio")
    steps = [("image", lambda: image_features(image, root, cfg.per_concept, cfg.seed)),
             ("text_word", lambda: text_features(text, tok, text_cfg.data.seq_len, root,
                                                 per_concept=cfg.per_concept, seed=cfg.seed)),
             ("text_story", lambda: text_features(text, tok, text_cfg.data.seq_len, root,
                                                  per_concept=cfg.per_concept, mode="story", seed=cfg.seed)),
             ("audio", lambda: audio_features(audio, root, cfg.per_concept, cfg.seed, progress=False))]
    feats = {}
    for name, fn in tqdm(steps, desc="concept features", disable=not progress, leave=False):
        feats[name] = fn()
    return feats


def run_alignment(image_dir, text_dir, audio_dir, out_dir, cfg: AlignConfig = AlignConfig(), root=None,
                  progress: bool = True) -> dict:
    """Compare every modality pair; write align.json and the UMAP figures into out_dir."""
    from d2v_lab.lab.plots import plot_alignment_umaps

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    feats = collect_features(image_dir, text_dir, audio_dir, cfg, root, progress)
    comparisons = [("image", "text_word"), ("image", "text_story"), ("audio", "text_word"), ("audio", "image")]
    results = {}
    for a, b in tqdm(comparisons, desc="comparing spaces", disable=not progress, leave=False):
        try:
            results[f"{a}-{b}"] = compare(feats[a], feats[b], cfg.per_concept, cfg.n_shuffles, cfg.common_dim,
                                          seed=cfg.seed)
        except ValueError as e:  # e.g. no concept with enough samples on both sides
            results[f"{a}-{b}"] = {"pair": f"{a}-{b}", "skipped": str(e)}
    summary = {"counts": {m: f.counts() for m, f in feats.items()},
               "sources": {m: f.source for m, f in feats.items()}, "pairs": results,
               "config": cfg.__dict__}
    (out / "align.json").write_text(json.dumps(summary, indent=2))
    plot_alignment_umaps(feats, cfg, out)
    return summary


def cached_alignment(runs_dir, cfg: AlignConfig, root=None, progress: bool = True, log=print) -> dict:
    """align.json under runs_dir/alignment when newer than the three checkpoints, else run_alignment
    on runs_dir/{image,text,audio}."""
    from d2v_lab.train.checkpoint import CHECKPOINT
    runs_dir = Path(runs_dir)
    cached = runs_dir / "alignment" / "align.json"
    inputs = [runs_dir / m / CHECKPOINT for m in ("image", "text", "audio")]
    if cached.is_file() and all(cached.stat().st_mtime >= p.stat().st_mtime for p in inputs):
        log(f"reusing {cached} (newer than the three checkpoints)")
        return json.loads(cached.read_text())
    return run_alignment(runs_dir / "image", runs_dir / "text", runs_dir / "audio", runs_dir / "alignment", cfg,
                         root, progress)


def conclusion(summary: dict) -> str:
    """A plain-language paragraph that quotes the measured numbers; every claim in it is computed from
    ``summary`` (the output of ``run_alignment``), none is fixed text."""
    pairs = {n: r for n, r in summary["pairs"].items() if "verdict" in r}
    if not pairs:
        return "No modality pair had enough shared concepts to compare."
    pct = lambda v: f"{100 * v:.1f}%"  # noqa: E731
    not_shared = [n for n, r in pairs.items() if not r["verdict"]["shared_space"]]
    shared = [n for n, r in pairs.items() if r["verdict"]["shared_space"]]
    alignable = [n for n, r in pairs.items() if r["verdict"]["alignable"]]
    raw = "; ".join(f"{n}: {pct(r['retrieval_raw']['observed'])} (chance {pct(r['retrieval_raw']['chance'])})"
                    for n, r in pairs.items())
    fitted = "; ".join(f"{n}: {pct(r['association']['retrieval'])}" for n, r in pairs.items())
    text = [f"Without any cross-modal fitting, concept retrieval across modalities is {raw}. "
            f"It is inside its null band for {len(not_shared)} of {len(pairs)} pairs"
            + (f" and above it for {', '.join(shared)}" if shared else "") + ". "]
    if len(not_shared) == len(pairs):
        text.append("So data2vec did not put the modalities in one space: one objective, separate spaces. ")
    elif shared:
        text.append(f"For {', '.join(shared)} raw retrieval exceeds both nulls: some coordinates line up "
                    f"without any pairing, which would need a cause (shared input statistics, or chance at "
                    f"{min(pairs[n]['n_pairs'] for n in shared)} pairs) before being read as a shared space. ")
    text.append(f"Given paired concepts, a small association network trained on half of the pairs reaches "
                f"held-out retrieval of {fitted}, above its null for {len(alignable)} of {len(pairs)} pairs: "
                f"aligning the spaces takes paired data, which data2vec never sees. ")
    structure = [n for n, r in pairs.items() if r["verdict"]["structure"]["mutual_knn"]
                 or r["verdict"]["structure"]["cka"]]
    if structure:
        text.append(f"Some relational structure is shared ({', '.join(structure)}: mutual kNN or CKA above "
                    f"their nulls): both spaces group samples by concept, which is similar geometry, not a "
                    f"shared space.")
    else:
        text.append("Neither mutual kNN nor CKA rises above its null for any pair: at this size not even the "
                    "relational structure is measurably shared.")
    return "".join(text)
