"""Probe tasks: labelled model inputs per split.

Every task has train / val / test splits; the test split is scored, never fitted or tuned on.
  cifar10                  CIFAR-10, 10 classes: train split minus a stratified validation tenth; test_batch.
  speechcommands_keywords  Speech Commands keyword spotting, 11 classes: the ten keywords yes, no, up,
                           down, left, right, on, off, stop, go, and "unknown" (every other word); the
                           standard 12-class task without "silence". The newest version's (v0.02's)
                           training / validation / testing lists, which are speaker-disjoint: the test
                           speakers are unseen in probing and in pretraining. The audio main task.
  fsdd_digits              FSDD spoken digits, 10 classes: test = the held-out speaker (also unseen in
                           pretraining), val = another speaker, train = the rest.
  tinystories_concepts     "Who is it about": stories that mention exactly one concept, every mention
                           replaced by [MASK]; the label is the concept.
The raw-input baseline is not built here: the probe derives it from the inputs, read out exactly as
the models' features are (``features.RawInput``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from tokenizers import Tokenizer

from d2v_lab.data import load_cifar10, load_fsdd, load_speech_commands, load_stories
from d2v_lab.data.concepts import CONCEPT_WORDS, concepts_in, mask_concept
from d2v_lab.data.speech_commands import find_speech_commands
from d2v_lab.data.tokenizer import MASK_ID, SPECIAL_TOKENS, padded_row
from d2v_lab.train.inputs import audio_inputs, fsdd_speaker_splits

SPLITS = ("train", "val", "test")
KEYWORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
UNKNOWN = "unknown"


@dataclass
class ProbeData:
    """One probe task: model inputs and labels per split.

    ``raw`` is not used by the probe any more (it reads the raw input out of ``inputs``, as it reads
    the models); it is kept, optional, so task builders that still pass flat raw features work."""
    task: str
    modality: str
    classes: tuple[str, ...]
    inputs: dict[str, torch.Tensor]
    labels: dict[str, np.ndarray]
    raw: dict[str, np.ndarray] = field(default_factory=dict)
    note: str = ""
    counts: dict = field(default_factory=dict)

    def n(self, split: str) -> int:
        return len(self.labels[split])

    def limit_train(self, n: int, seed: int = 0) -> "ProbeData":
        """The same task with a stratified subset of ``n`` training examples (val and test unchanged)."""
        if not n or n >= self.n("train"):
            return self
        keep = np.sort(train_test_split(np.arange(self.n("train")), train_size=n, random_state=seed,
                                        stratify=self.labels["train"])[0])
        pick = lambda d: {**d, "train": d["train"][keep]} if d else d  # noqa: E731
        return dataclasses.replace(self, inputs=pick(self.inputs), labels=pick(self.labels), raw=pick(self.raw),
                                   note=(self.note + "; " if self.note else "") + f"training set limited to {n}")


def _stratified_split(n: int, labels: np.ndarray, fraction: float, seed: int):
    idx = np.arange(n)
    return train_test_split(idx, test_size=fraction, random_state=seed, stratify=labels)


def cifar_task(root=None, val_fraction: float = 0.1, seed: int = 0, max_train: int | None = None) -> ProbeData:
    train, test = load_cifar10("train", root), load_cifar10("test", root)
    images, labels = train.images, train.labels
    if max_train and max_train < len(labels):  # a stratified subset of exactly max_train images
        keep, _ = train_test_split(np.arange(len(labels)), train_size=max_train, random_state=seed,
                                   stratify=labels)
        images, labels = images[np.sort(keep)], labels[np.sort(keep)]
    tr, va = _stratified_split(len(labels), labels, val_fraction, seed)
    x = {"train": images[tr], "val": images[va], "test": test.images}
    y = {"train": labels[tr], "val": labels[va], "test": test.labels}
    return ProbeData("cifar10", "image", train.classes, {k: torch.from_numpy(v) for k, v in x.items()}, y)


def _audio_task(task: str, parts: dict, classes, note: str, progress: bool, counts: dict) -> ProbeData:
    inputs = {k: audio_inputs(c, progress) for k, c in parts.items()}
    return ProbeData(task, "audio", tuple(classes), inputs, {k: c.labels for k, c in parts.items()},
                     note=note, counts=counts)


def fsdd_task(root=None, progress: bool = True) -> ProbeData:
    """Speaker-disjoint splits (``fsdd_speaker_splits``, the rule pretraining follows too): test = the
    held-out speaker, validation = the last of the remaining speakers, train = the others. Pretraining
    reads only the train speakers."""
    speakers = fsdd_speaker_splits(root)
    clips = load_fsdd("all", root)
    parts = {split: clips.subset([i for i, s in enumerate(clips.speakers) if s in speakers[split]])
             for split in SPLITS}
    return _audio_task("fsdd_digits", parts, clips.classes,
                       "test speaker unseen in pretraining and probing; one test voice", progress, speakers)


def keyword_clips(root=None, version: str | None = None) -> dict:
    """{"train", "val", "test"}: the Speech Commands clips of the official training / validation /
    testing lists (newest version unless ``version``), labelled with ``KEYWORDS`` + ("unknown",):
    a keyword's own index, or 10 for any other word."""
    parts = {}
    for split, official in zip(SPLITS, ("training", "validation", "testing")):
        c = load_speech_commands(official, root, version=version)
        word = np.array(c.classes)[c.labels]
        labels = np.array([KEYWORDS.index(w) if w in KEYWORDS else len(KEYWORDS) for w in word], dtype=np.int64)
        parts[split] = dataclasses.replace(c, labels=labels, classes=KEYWORDS + (UNKNOWN,))
    return parts


def keyword_task(root=None, progress: bool = True, version: str | None = None) -> ProbeData:
    """Keyword spotting on unseen speakers, 11 classes (the ten keywords and "unknown"); see
    ``keyword_clips``. ``counts`` has the version, clips per class and speakers per split."""
    parts = keyword_clips(root, version)
    classes = parts["train"].classes
    counts = {"version": find_speech_commands(root, version=version).name.removeprefix("speech_commands_"),
              "clips_per_class": {k: np.bincount(c.labels, minlength=len(classes)).tolist() for k, c in parts.items()},
              "speakers": {k: len(set(c.speakers)) for k, c in parts.items()}}
    return _audio_task("speechcommands_keywords", parts, classes,
                       "ten keywords + unknown; speakers of the test split unseen in pretraining and probing",
                       progress, counts)


def concept_windows(stories: list[str], tok: Tokenizer, seq_len: int, concepts=tuple(CONCEPT_WORDS)):
    """Stories that mention exactly one concept, every mention replaced by [MASK], as (ids, labels).
    Long stories are cut to a window of ``seq_len`` that starts a little before the first mention."""
    picked = [(story, found[0]) for story in stories if len(found := concepts_in(story, concepts)) == 1]
    encoded = tok.encode_batch([mask_concept(story, c) for story, c in picked], add_special_tokens=False)
    rows, labels = [], []
    for (_, concept), enc in zip(picked, encoded):
        ids = enc.ids
        first = ids.index(MASK_ID) if MASK_ID in ids else 0
        body = seq_len - 1
        start = max(0, min(first - body // 4, len(ids) - body))
        rows.append(padded_row(ids[start:], seq_len))
        labels.append(concepts.index(concept))
    return torch.tensor(rows, dtype=torch.long).view(-1, seq_len), np.array(labels, dtype=np.int64)


def _bag_of_tokens(ids: torch.Tensor, vocab_size: int) -> np.ndarray:
    bag = torch.zeros(len(ids), vocab_size)
    bag.scatter_add_(1, ids, torch.ones_like(ids, dtype=torch.float))
    bag[:, : len(SPECIAL_TOKENS)] = 0  # [PAD], [CLS], [MASK]... say nothing about the concept
    return bag.numpy()


def concept_task(tok: Tokenizer, seq_len: int, root=None, seed: int = 0, min_train: int = 8,
                 val_fraction: float = 0.2, max_stories: int | None = None) -> ProbeData:
    """Train/val from the (first ``max_stories``) training stories, test from the held-out ("valid")
    stories. Concepts with fewer than ``min_train`` training stories or no test story are dropped
    (reported in ``counts``). The cap matters on the full TinyStories: its 2.1M stories would give
    ~400k windows, and their bag-of-tokens baseline alone 6.5 GB."""
    x_tr, y_tr = concept_windows(load_stories("train", root)[:max_stories], tok, seq_len)
    x_te, y_te = concept_windows(load_stories("valid", root), tok, seq_len)
    names = list(CONCEPT_WORDS)
    counts = {c: [int((y_tr == i).sum()), int((y_te == i).sum())] for i, c in enumerate(names)}
    kept = [i for i, c in enumerate(names) if counts[c][0] >= min_train and counts[c][1] >= 1]
    if len(kept) < 2:
        raise ValueError(f"too few stories per concept for a probe: {counts}")
    remap = {old: new for new, old in enumerate(kept)}
    sel_tr, sel_te = np.isin(y_tr, kept), np.isin(y_te, kept)
    x_tr, y_tr = x_tr[sel_tr], np.array([remap[v] for v in y_tr[sel_tr]])
    x_te, y_te = x_te[sel_te], np.array([remap[v] for v in y_te[sel_te]])
    tr, va = _stratified_split(len(y_tr), y_tr, val_fraction, seed)
    x = {"train": x_tr[tr], "val": x_tr[va], "test": x_te}
    y = {"train": y_tr[tr], "val": y_tr[va], "test": y_te}
    vocab = tok.get_vocab_size()
    return ProbeData("tinystories_concepts", "text", tuple(names[i] for i in kept), x, y,
                     {k: _bag_of_tokens(v, vocab) for k, v in x.items()},
                     "stories naming exactly one concept; every mention replaced by [MASK]",
                     {"train_test_stories_per_concept": counts})
