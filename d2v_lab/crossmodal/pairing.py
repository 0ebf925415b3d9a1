"""Concept-paired features: what each modality's encoder makes of the same concept.

No dataset pairs an image with a sentence about it, so pairs come from the data's own labels, by CONCEPT:
image <-> text over the CIFAR-10 classes the stories mention; audio <-> text over the spoken words that are
concepts (digits from FSDD and Speech Commands, bird/cat/dog from Speech Commands); audio <-> image over
bird, cat, dog. Text features are the contextual vectors at the concept word's tokens ("word"), and
separately the pooled story ("story").
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from d2v_lab.data import load_cifar10, load_fsdd, load_speech_commands, load_stories
from d2v_lab.data.concepts import CONCEPT_WORDS, DIGIT_WORDS, first_mentions
from d2v_lab.data.root import DatasetNotFound
from d2v_lab.data.tokenizer import padded_row
from d2v_lab.evaluate import hf
from d2v_lab.evaluate.features import layer_features
from d2v_lab.train.checkpoint import load_run
from d2v_lab.train.config import AlignConfig
from d2v_lab.train.inputs import audio_inputs

IMAGE_CONCEPTS = tuple(CONCEPT_WORDS)                       # the CIFAR-10 classes
SPOKEN_CONCEPTS = DIGIT_WORDS + ("bird", "cat", "dog")      # words that are both spoken and written


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


def image_samples(root=None, per_concept: int = 100, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 TEST images (never seen in pretraining), up to ``per_concept`` per class: (N, 3, 32, 32)
    uint8 pictures and their class names."""
    test = load_cifar10("test", root)
    rng = np.random.default_rng(seed)
    keep = np.concatenate([_sample(rng, np.flatnonzero(test.labels == c), per_concept)
                           for c in range(len(test.classes))])
    return test.images[keep], np.array(test.classes)[test.labels[keep]]


def image_features(model, root=None, per_concept: int = 100, seed: int = 0, progress: bool = False) -> ConceptFeatures:
    """``image_samples`` through a d2v_lab model or a Hugging Face encoder (``evaluate.hf``)."""
    images, concepts = image_samples(root, per_concept, seed)
    if isinstance(model, hf.HFEncoder):
        feats = hf.image_features(model, images, progress=progress)["mean"]
        return ConceptFeatures("image", feats, concepts, f"cifar10/test via {model.source}")
    feats = layer_features(model.student, torch.from_numpy(images))["mean"]
    return ConceptFeatures("image", feats, concepts, "cifar10/test")


def audio_samples(root=None, per_concept: int = 100, seed: int = 0) -> tuple[list, np.ndarray, str]:
    """Spoken concept words: FSDD digits (all speakers) and Speech Commands clips of digits and
    bird/cat/dog (all splits), up to ``per_concept`` per word. Returns the clips (a ClipSet per
    dataset, in order), every clip's word in that order, and the sources' names."""
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
    ordered = np.concatenate([keep[owner[keep] == o] for o in range(len(clips))])
    return parts, words[ordered], " + ".join(sorted({s for _, s in clips}))


def audio_features(model, root=None, per_concept: int = 100, seed: int = 0, progress: bool = True) -> ConceptFeatures:
    """``audio_samples`` through a d2v_lab model (log-mel) or a Hugging Face encoder (1 s waveforms)."""
    parts, words, source = audio_samples(root, per_concept, seed)
    if isinstance(model, hf.HFEncoder):
        waves = np.concatenate([p.waveforms(progress=False) for p in parts])
        feats = hf.audio_features(model, waves, progress=progress)["mean"]
        return ConceptFeatures("audio", feats, words, f"{source} via {model.source}")
    x = torch.cat([audio_inputs(p, progress) for p in parts])
    feats = layer_features(model.student, x)["mean"]
    return ConceptFeatures("audio", feats, words, source)


def text_samples(root=None, concepts=IMAGE_CONCEPTS + DIGIT_WORDS, per_concept: int = 100, mode: str = "word",
                 seed: int = 0) -> list[tuple[str, re.Match, str]]:
    """(story, first mention, concept) for up to ``per_concept`` stories (train + valid) per concept that
    mention it; with mode="story" only stories that mention exactly one of ``concepts``."""
    stories = load_stories("train", root) + load_stories("valid", root)
    rng = np.random.default_rng(seed)
    mentions = [first_mentions(s, concepts) for s in stories]      # one scan per story
    if mode == "story":  # a story vector stands for one concept only
        keep = [i for i, m in enumerate(mentions) if len(m) == 1]
        stories, mentions = [stories[i] for i in keep], [mentions[i] for i in keep]
    picked = []
    for concept in concepts:
        hits = [(i, m[concept]) for i, m in enumerate(mentions) if concept in m]
        for j in _sample(rng, np.arange(len(hits)), per_concept):
            i, match = hits[j]
            picked.append((stories[i], match, concept))
    return picked


def text_features(model, tok, seq_len: int, root=None, concepts=IMAGE_CONCEPTS + DIGIT_WORDS,
                  per_concept: int = 100, mode: str = "word", seed: int = 0, progress: bool = False) -> ConceptFeatures:
    """Text features per concept from ``text_samples``: the contextual vector at the first mention's
    tokens (mode="word") or the mean of the story window (mode="story"). The word is NOT masked: this
    is what the model makes of "cat" in context. ``model`` is a d2v_lab model with its tokenizer
    ``tok``, or a Hugging Face encoder (its own tokenizer; ``tok`` unused), with windows of ``seq_len``
    tokens either way."""
    picked = text_samples(root, concepts, per_concept, mode, seed)
    labels = np.array([c for *_, c in picked])
    if isinstance(model, hf.HFEncoder):
        feats = hf.text_features(model, [s for s, _, _ in picked], [m.span() for _, m, _ in picked],
                                 select="span" if mode == "word" else "window", max_tokens=seq_len,
                                 progress=progress)["mean"]
        return ConceptFeatures("text", feats, labels, f"tinystories ({mode} vectors) via {model.source}")
    rows, selects = [], []
    for story, match, _ in picked:
        enc = tok.encode(story, add_special_tokens=False)
        word = [t for t, (a, b) in enumerate(enc.offsets) if a < match.end() and b > match.start()]
        body = seq_len - 1
        start = max(0, min(word[0] - body // 4, len(enc.ids) - body))
        n_tokens = 1 + len(enc.ids[start:start + body])        # [CLS] + the window's tokens
        sel = torch.zeros(seq_len, dtype=torch.bool)
        if mode == "word":
            sel[[t - start + 1 for t in word if t - start + 1 < seq_len]] = True
        else:
            sel[1:n_tokens] = True
        rows.append(padded_row(enc.ids[start:], seq_len))
        selects.append(sel)
    x, sel = torch.tensor(rows, dtype=torch.long), torch.stack(selects)
    feats = layer_features(model.student, x, select=sel)["mean"]
    return ConceptFeatures("text", feats, labels, f"tinystories ({mode} vectors)")


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


def load_encoder(spec, modality: str):
    """(model, tokenizer, text window length) of one encoder: a d2v_lab pretraining run folder, or a
    Hugging Face encoder (``hf:<id>`` or a saved folder; ``evaluate.hf``), which brings its own
    tokenizer and reads text windows of ``hf.TEXT_TOKENS`` tokens."""
    if hf.is_hf_spec(spec):
        return hf.load_encoder(spec, modality), None, hf.TEXT_TOKENS
    model, cfg, tok = load_run(spec, modality)
    return model, tok, cfg.data.seq_len


def collect_features(image_dir, text_dir, audio_dir, cfg: AlignConfig, root=None,
                     progress: bool = True) -> dict[str, ConceptFeatures]:
    """Concept features of every modality from three encoders: pretraining run folders or Hugging
    Face encoders (see ``load_encoder``), in any mix."""
    image, _, _ = load_encoder(image_dir, "image")
    text, tok, seq_len = load_encoder(text_dir, "text")
    audio, _, _ = load_encoder(audio_dir, "audio")
    steps = [("image", lambda: image_features(image, root, cfg.per_concept, cfg.seed, progress=progress)),
             ("text_word", lambda: text_features(text, tok, seq_len, root, per_concept=cfg.per_concept,
                                                 seed=cfg.seed, progress=progress)),
             ("text_story", lambda: text_features(text, tok, seq_len, root, per_concept=cfg.per_concept,
                                                  mode="story", seed=cfg.seed, progress=progress)),
             ("audio", lambda: audio_features(audio, root, cfg.per_concept, cfg.seed,
                                             progress=progress and isinstance(audio, hf.HFEncoder)))]
    feats = {}
    for name, fn in tqdm(steps, desc="concept features", disable=not progress, leave=False):
        feats[name] = fn()
    return feats
