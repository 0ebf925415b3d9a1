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
import re
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.model_selection import StratifiedGroupKFold, train_test_split
from tokenizers import Tokenizer

from d2v_lab.data import load_cifar10, load_fsdd, load_speech_commands, load_stories
from d2v_lab.data.concepts import CONCEPT_WORDS, concepts_in, mask_concept
from d2v_lab.data.speech_commands import find_speech_commands
from d2v_lab.data.tokenizer import CLS_ID, MASK_ID, PAD_ID, SPECIAL_TOKENS, UNK_ID, padded_row
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


# --- masked-word identity: contextual knowledge a bag of tokens lacks (issue 14) ------------------

# The candidate classes, per part of speech: a base word and every form that counts as "the word"
# (case-insensitive, whole words). Derived forms are listed too (happily, happiness): seeing one of
# them would give the answer away. The concept words (dog, cat, bird...) are left out: they are what
# the concept task asks about, by topic. ``masked_word_vocabulary`` picks from these by frequency.
MASKED_WORD_CANDIDATES: dict[str, dict[str, tuple[str, ...]]] = {
    "noun": {
        "mom": ("mom", "moms", "mommy", "mommies"),
        "dad": ("dad", "dads", "daddy", "daddies"),
        "friend": ("friend", "friends"),
        "park": ("park", "parks"),
        "tree": ("tree", "trees"),
        "ball": ("ball", "balls"),
        "toy": ("toy", "toys"),
        "house": ("house", "houses"),
        "sky": ("sky", "skies"),
        "water": ("water", "waters"),
        "garden": ("garden", "gardens"),
        "room": ("room", "rooms"),
    },
    "verb": {
        "go": ("go", "goes", "went", "gone", "going"),
        "say": ("say", "says", "said", "saying"),
        "see": ("see", "sees", "saw", "seen", "seeing"),
        "play": ("play", "plays", "played", "playing"),
        "look": ("look", "looks", "looked", "looking"),
        "run": ("run", "runs", "ran", "running"),
        "find": ("find", "finds", "found", "finding"),
        "smile": ("smile", "smiles", "smiled", "smiling"),
        "help": ("help", "helps", "helped", "helping"),
        "eat": ("eat", "eats", "ate", "eaten", "eating"),
    },
    "adjective": {
        "happy": ("happy", "happier", "happiest", "happily", "happiness"),
        "sad": ("sad", "sadder", "saddest", "sadly", "sadness"),
        "big": ("big", "bigger", "biggest"),
        "little": ("little", "littler", "littlest"),
        "small": ("small", "smaller", "smallest"),
        "excited": ("excited", "exciting", "excitement", "excitedly"),
        "scared": ("scared",),
        "proud": ("proud", "proudly"),
        "beautiful": ("beautiful", "beautifully"),
    },
}


def word_forms(candidates=None) -> dict[str, tuple[str, ...]]:
    """word -> its forms, over every part of speech of ``candidates`` (default MASKED_WORD_CANDIDATES)."""
    candidates = MASKED_WORD_CANDIDATES if candidates is None else candidates
    forms = {w: f for pos in candidates.values() for w, f in pos.items()}
    owner: dict[str, str] = {}
    for w, fs in forms.items():
        for f in fs:
            if owner.setdefault(f.lower(), w) != w:
                raise ValueError(f"{f!r} is a form of both {owner[f.lower()]!r} and {w!r}")
    return forms


def _forms_regex(forms: dict[str, tuple[str, ...]]) -> tuple[re.Pattern, dict[str, str]]:
    """One whole-word, case-insensitive regex for every form of every word, and form -> word."""
    owner = {f.lower(): w for w, fs in forms.items() for f in fs}
    alternatives = "|".join(map(re.escape, sorted(owner, key=len, reverse=True)))
    return re.compile(r"\b(?:" + alternatives + r")\b", re.IGNORECASE), owner


def masked_word_vocabulary(stories: list[str], per_pos: int = 4, candidates=None) -> tuple[str, ...]:
    """The rule that picks the classes: for each part of speech of ``candidates``, the ``per_pos``
    words found (in any form) in the most of ``stories`` (ties: alphabetical). Nouns, verbs and
    adjectives alike, so the answer cannot be read off one kind of context (after "the" a noun, after
    "was very" an adjective): the probe must tell words of one part of speech apart too. Call it on
    TRAINING stories only; the test stories never shape the task."""
    candidates = MASKED_WORD_CANDIDATES if candidates is None else candidates
    pattern, owner = _forms_regex(word_forms(candidates))
    in_stories: dict[str, int] = {}
    for story in stories:
        for w in {owner[m.group(0).lower()] for m in pattern.finditer(story)}:
            in_stories[w] = in_stories.get(w, 0) + 1
    picked = []
    for words in candidates.values():
        picked += sorted(words, key=lambda w: (-in_stories.get(w, 0), w))[:per_pos]
    return tuple(picked)


def masked_word_windows(stories: list[str], tok: Tokenizer, seq_len: int, words: tuple[str, ...],
                        forms: dict[str, tuple[str, ...]] | None = None):
    """One example per (story, word of ``words`` the story contains), as (ids, labels, story index).

    The word's FIRST mention becomes one [MASK]: the position the probe asks about. Every other
    mention of it, and every mention of every other word of ``words`` (any form, any case), becomes
    one [UNK]. So no input contains its answer, there is exactly one [MASK] per input, a word's length
    in tokens does not show, and the visible text of a window does not depend on which of its words
    is asked: a bag of its tokens cannot rule out the words it sees (they are never visible) and can
    only guess from the rest of the story.

    The window: [CLS], up to ``(seq_len - 1) // 2`` tokens before the [MASK], the [MASK], the tokens
    after it; [PAD] fills in on the left (mention near the story's start) and on the right. So the
    [MASK] sits at the same index in every input and its position embedding says nothing: where a
    word is first mentioned ("a little girl" opens many stories) cannot be read off the position,
    only off the text around it. (Centring the window where the story allows instead gave a random
    encoder's layer 0, which sees nothing but the [MASK] and its position, 23% on 12 words.)

    The story is tokenized as it is, and a mention's tokens (found by their character offsets) are
    then replaced: writing "[MASK]" into the text instead would make the byte-level BPE start the
    text after it anew, with a stray "Ġ" token before punctuation that pretraining never saw."""
    forms = word_forms() if forms is None else forms
    pattern, owner = _forms_regex({w: forms[w] for w in words})

    def starts_word(t: int) -> bool:   # byte-level BPE: a word's first piece carries its leading space "Ġ"
        piece = tok.id_to_token(t)
        return t < len(SPECIAL_TOKENS) or not piece or not piece[0].isalnum()

    body = seq_len - 1
    half = body // 2
    rows, labels, story_idx = [], [], []
    for s, (story, enc) in enumerate(zip(stories, tok.encode_batch(stories, add_special_tokens=False))):
        mentions = list(pattern.finditer(story))
        if not mentions:
            continue
        # token -> the mention it belongs to (-1: none); a token overlaps a mention's characters
        # (byte-level BPE never merges across a word's edge, so a mention owns whole tokens)
        starts = np.array([a for a, _ in enc.offsets])
        ends = np.array([b for _, b in enc.offsets])
        owner_of = np.full(len(enc.ids), -1)
        for i, m in enumerate(mentions):
            owner_of[(starts < m.end()) & (ends > m.start())] = i
        kind = [owner[m.group(0).lower()] for m in mentions]
        for w in words:
            if w not in kind:
                continue
            asked = kind.index(w)
            ids, last = [], -1
            for t, i in zip(enc.ids, owner_of):
                if i < 0:
                    ids.append(t)
                elif i != last:  # a mention's first token: one special token for the whole mention
                    ids.append(MASK_ID if i == asked else UNK_ID)
                last = i
            at = ids.index(MASK_ID)
            left = ids[max(0, at - half):at]
            right = ids[at:at + body - half]
            # never end a window inside a word: a cut "seek" would leave a piece that reads "see"
            while len(right) > 1 and at + len(right) < len(ids) and not starts_word(ids[at + len(right)]):
                right = right[:-1]
            row = [CLS_ID] + [PAD_ID] * (half - len(left)) + left + right
            rows.append(row + [PAD_ID] * (seq_len - len(row)))
            labels.append(words.index(w))
            story_idx.append(s)
    return (torch.tensor(rows, dtype=torch.long).view(-1, seq_len), np.array(labels, dtype=np.int64),
            np.array(story_idx, dtype=np.int64))


def _balanced(labels: np.ndarray, n_classes: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of a subsample with exactly as many examples of every class as the rarest has."""
    n = min(int((labels == c).sum()) for c in range(n_classes))
    return np.sort(np.concatenate([rng.choice(np.flatnonzero(labels == c), n, replace=False)
                                   for c in range(n_classes)]))


@dataclass
class MaskedWordData(ProbeData):
    """A probe whose question is about one position: the readout pools only the features at the
    [MASK] of each input (``layer_features(..., select=data.select(split))``), the place where a
    contextual encoder must hold what the hidden word is. ``story[split]`` is each example's story
    (its index in the training or the held-out file)."""
    story: dict[str, np.ndarray] = field(default_factory=dict)

    def select(self, split: str) -> torch.Tensor:
        return self.inputs[split] == MASK_ID

    def limit_train(self, n: int, seed: int = 0) -> "MaskedWordData":
        """ProbeData.limit_train, keeping ``story`` aligned with the examples."""
        if not n or n >= self.n("train"):
            return self
        keep = np.sort(train_test_split(np.arange(self.n("train")), train_size=n, random_state=seed,
                                        stratify=self.labels["train"])[0])
        pick = lambda d: {**d, "train": d["train"][keep]}  # noqa: E731
        return dataclasses.replace(self, inputs=pick(self.inputs), labels=pick(self.labels), raw=pick(self.raw),
                                   story=pick(self.story),
                                   note=(self.note + "; " if self.note else "") + f"training set limited to {n}")


def masked_word_task(tok: Tokenizer, seq_len: int, root=None, seed: int = 0, per_pos: int = 4,
                     val_fraction: float = 0.2, max_stories: int | None = None, min_examples: int = 1,
                     candidates=None) -> MaskedWordData:
    """"Which word is hidden here": the contextual probe of issue 14, and the better primary evidence
    for text. The concept task asks what a story is about, which its bag of tokens answers about as
    well as any encoder; this one asks for one word at one position, from its context.

    Classes: ``masked_word_vocabulary`` of the (first ``max_stories``) training stories, 4 nouns,
    4 verbs and 4 adjectives by default. Examples: ``masked_word_windows`` (the answer never in the
    input). Splits: train/val from the training stories, split BY STORY (a story's examples share
    its text) with a stratified group split; test from the held-out ("valid") stories, never fitted.
    Words with fewer than ``min_examples`` examples in a split are dropped (reported in ``counts``);
    then every split is subsampled to its rarest class, so chance = majority = 1 / len(classes).
    Raw baseline: the bag of the window's tokens (special tokens, hence the hidden words, excluded).

    The readout pools the [MASK] position (``MaskedWordData.select``). data2vec 1.0 pretrains on
    exactly such inputs (BERT's [MASK]); data2vec 2.0's student never encodes masked tokens (it drops
    them), so there the [MASK] embedding is untrained and what the probe reads is how the encoder
    contextualises an unknown token."""
    forms = word_forms(candidates)
    train_stories = load_stories("train", root)[:max_stories]
    words = masked_word_vocabulary(train_stories, per_pos, candidates)
    x_tr, y_tr, s_tr = masked_word_windows(train_stories, tok, seq_len, words, forms)
    x_te, y_te, s_te = masked_word_windows(load_stories("valid", root), tok, seq_len, words, forms)
    if len(set(s_tr)) < 2 or len(y_te) == 0:
        raise ValueError(f"too few stories with the words {words} for a probe")
    folds = StratifiedGroupKFold(n_splits=max(2, round(1 / val_fraction)), shuffle=True, random_state=seed)
    tr, va = next(folds.split(x_tr, y_tr, groups=s_tr))
    parts = {"train": (x_tr[tr], y_tr[tr], s_tr[tr]), "val": (x_tr[va], y_tr[va], s_tr[va]),
             "test": (x_te, y_te, s_te)}
    before = {k: {w: int((p[1] == i).sum()) for i, w in enumerate(words)} for k, p in parts.items()}
    kept = [i for i, w in enumerate(words) if all(before[k][w] >= min_examples for k in parts)]
    if len(kept) < 2:
        raise ValueError(f"too few examples per word for a probe: {before}")
    remap = np.full(len(words), -1)
    remap[kept] = np.arange(len(kept))
    rng = np.random.default_rng(seed)
    x, y, story = {}, {}, {}
    for k, (xs, ys, ss) in parts.items():
        sel = np.flatnonzero(remap[ys] >= 0)
        keep = sel[_balanced(remap[ys[sel]], len(kept), rng)]
        x[k], y[k], story[k] = xs[keep], remap[ys[keep]], ss[keep]
    vocab = tok.get_vocab_size()
    counts = {"vocabulary": list(words), "examples_before_balancing": before,
              "examples_per_class": {k: len(v) // len(kept) for k, v in y.items()},
              "stories": {k: len(set(v.tolist())) for k, v in story.items()}}
    return MaskedWordData("tinystories_masked_word", "text", tuple(words[i] for i in kept), x, y,
                          {k: _bag_of_tokens(v, vocab) for k, v in x.items()},
                          "a word's first mention is [MASK], every other mention of a class word [UNK]; "
                          "balanced classes; features at the [MASK]", counts, story)
