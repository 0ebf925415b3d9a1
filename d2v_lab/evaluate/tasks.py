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
  tinystories_masked_word  "Which word is hidden here": one of 12 frequent words, [MASK]ed, every other
                           class word hidden too; also read out at the [MASK], where a bag of tokens is weak.
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
from d2v_lab.data.tokenizer import CLS_ID, MASK_ID, PAD_ID, SEP_ID, SPECIAL_TOKENS, UNK_ID, padded_row
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
    # the same examples as an encoder with its own preprocessing reads them (``evaluate.hf``), where
    # ``inputs`` are not that: audio = the clips (a ClipSet per split, read on demand), text = the
    # masked story texts (an object array per split). Images need none: the pixels are the input.
    originals: dict = field(default_factory=dict)

    def n(self, split: str) -> int:
        return len(self.labels[split])

    def limit_train(self, n: int, seed: int = 0) -> "ProbeData":
        """The same task with a stratified subset of ``n`` training examples (val and test unchanged)."""
        if not n or n >= self.n("train"):
            return self
        keep = np.sort(train_test_split(np.arange(self.n("train")), train_size=n, random_state=seed,
                                        stratify=self.labels["train"])[0])
        pick = lambda d: {**d, "train": d["train"][keep]} if d else d  # noqa: E731
        originals = {**self.originals, "train": _subset(self.originals["train"], keep)} if self.originals else {}
        return dataclasses.replace(self, inputs=pick(self.inputs), labels=pick(self.labels), raw=pick(self.raw),
                                   originals=originals,
                                   note=(self.note + "; " if self.note else "") + f"training set limited to {n}")


def _subset(examples, keep: np.ndarray):
    return examples.subset(keep) if hasattr(examples, "subset") else examples[keep]


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
                     note=note, counts=counts, originals=dict(parts))


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


def concept_windows(stories: list[str], tok: Tokenizer, seq_len: int, concepts=tuple(CONCEPT_WORDS),
                    texts: list | None = None):
    """Stories that mention exactly one concept, every mention replaced by [MASK], as (ids, labels).
    Long stories are cut to a window of ``seq_len`` that starts a little before the first mention.
    ``texts``, when given a list, receives the masked stories, in the order of the rows."""
    picked = [(story, found[0]) for story in stories if len(found := concepts_in(story, concepts)) == 1]
    masked = [mask_concept(story, c) for story, c in picked]
    if texts is not None:
        texts.extend(masked)
    encoded = tok.encode_batch(masked, add_special_tokens=False)
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
    t_tr, t_te = [], []
    x_tr, y_tr = concept_windows(load_stories("train", root)[:max_stories], tok, seq_len, texts=t_tr)
    x_te, y_te = concept_windows(load_stories("valid", root), tok, seq_len, texts=t_te)
    t_tr, t_te = np.array(t_tr, dtype=object), np.array(t_te, dtype=object)
    names = list(CONCEPT_WORDS)
    counts = {c: [int((y_tr == i).sum()), int((y_te == i).sum())] for i, c in enumerate(names)}
    kept = [i for i, c in enumerate(names) if counts[c][0] >= min_train and counts[c][1] >= 1]
    if len(kept) < 2:
        raise ValueError(f"too few stories per concept for a probe: {counts}")
    remap = {old: new for new, old in enumerate(kept)}
    sel_tr, sel_te = np.isin(y_tr, kept), np.isin(y_te, kept)
    x_tr, y_tr, t_tr = x_tr[sel_tr], np.array([remap[v] for v in y_tr[sel_tr]]), t_tr[sel_tr]
    x_te, y_te, t_te = x_te[sel_te], np.array([remap[v] for v in y_te[sel_te]]), t_te[sel_te]
    tr, va = _stratified_split(len(y_tr), y_tr, val_fraction, seed)
    x = {"train": x_tr[tr], "val": x_tr[va], "test": x_te}
    y = {"train": y_tr[tr], "val": y_tr[va], "test": y_te}
    vocab = tok.get_vocab_size()
    return ProbeData("tinystories_concepts", "text", tuple(names[i] for i in kept), x, y,
                     {k: _bag_of_tokens(v, vocab) for k, v in x.items()},
                     "stories naming exactly one concept; every mention replaced by [MASK]",
                     {"train_test_stories_per_concept": counts},
                     originals={"train": t_tr[tr], "val": t_tr[va], "test": t_te})


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


def _single_token_forms(tok: Tokenizer, forms: dict[str, tuple[str, ...]]) -> dict[int, str]:
    """token id -> word, for every form that is one token of its own (" play" -> "Ġplay"): a word the
    BPE starts with that token ("player", "playtime", "goal") carries the answer's own token id."""
    ids = {}
    for w, fs in forms.items():
        for f in fs:
            for variant in {f, f.lower(), f.capitalize(), f.upper()}:
                enc = tok.encode(" " + variant, add_special_tokens=False).ids
                if len(enc) == 1:
                    ids[enc[0]] = w
    return ids


def _hide_mentions(story: str, enc, pattern: re.Pattern, owner: dict[str, str], form_ids: dict[int, str]):
    """A story's tokens with every mention of a class word collapsed into ONE placeholder: (ids,
    spans, mentions), where a placeholder is the id ``-1 - i`` of mention i, spans are the characters
    each token covers, and mentions[i] = (word, askable). Mentions are the regex's whole-word forms
    (askable) and any word whose first token is a form's own token ("player": never asked)."""
    ids, spans = enc.ids, enc.offsets
    owner_of = np.full(len(ids), -1)
    mentions: list[tuple[str, bool]] = []
    starts, ends = np.array([a for a, _ in spans]), np.array([b for _, b in spans])
    for m in pattern.finditer(story):
        # a mention owns the tokens that overlap its characters (byte-level BPE never merges across a
        # word's edge) and the space before it: a rare word can be "Ġ" + pieces, not "Ġpiece" + pieces
        start = m.start() - (m.start() > 0 and story[m.start() - 1] == " ")
        owner_of[(starts < m.end()) & (ends > start)] = len(mentions)
        mentions.append((owner[m.group(0).lower()], True))
    k = 0
    while k < len(ids):
        if owner_of[k] < 0 and ids[k] in form_ids:
            j = k + 1
            while j < len(ids) and _inside_word(story, spans[j - 1], spans[j]):
                j += 1
            owner_of[k:j] = len(mentions)
            mentions.append((form_ids[ids[k]], False))
            k = j
        else:
            k += 1
    out_ids, out_spans = [], []
    for k, (t, i) in enumerate(zip(ids, owner_of)):
        if i < 0:
            out_ids.append(t)
            out_spans.append(spans[k])
        elif k == 0 or owner_of[k - 1] != i:   # a mention's first token: its placeholder
            out_ids.append(-1 - int(i))
            out_spans.append(spans[k])
        else:                                   # later tokens of the mention widen its span
            out_spans[-1] = (out_spans[-1][0], spans[k][1])
    return out_ids, out_spans, mentions


def _inside_word(text: str, before: tuple[int, int], after: tuple[int, int]) -> bool:
    """Do two adjacent tokens of ``text`` (character spans) split a word between them?"""
    a = after[0]
    return before[1] == a and 0 < a < len(text) and text[a - 1].isalnum() and text[a].isalnum()


def masked_word_windows(stories: list[str], tok: Tokenizer, seq_len: int, words: tuple[str, ...],
                        forms: dict[str, tuple[str, ...]] | None = None):
    """One example per (story, word of ``words`` the story mentions), as (ids, labels, story index).

    The word's FIRST mention becomes one [MASK]: the position the probe asks about. Every other
    mention of it and of every other word of ``words`` (any form, any case), and every word the BPE
    starts with such a word's own token ("player" starts with " play"), becomes one [UNK]. So no
    input holds its answer's tokens, there is exactly one [MASK] per input, a word's length in tokens
    does not show, and the visible text does not depend on which word is asked: a bag of tokens cannot
    rule out the class words it sees (it never sees one) and can only guess from the topic.

    The inputs are cut, as in pretraining (``pack_windows``), from ``stories`` as one stream, each
    story followed by [SEP]; every input is [CLS] + ``seq_len - 1`` tokens of that stream with the
    [MASK] at the same index, ``(seq_len - 1) // 2 + 1``. So neither the [MASK]'s position embedding
    nor how much text surrounds it tells where in its story the word is first mentioned ("a little
    girl" opens many stories); only the text does (a [SEP] before "once upon a time"). Windows cut
    from a single story instead told it: centred where the story allows, the [MASK]'s position gave
    a random encoder's layer 0 (the [MASK] embedding and its position, nothing else) 23% on 12 words;
    with the [MASK] at a fixed index and [PAD] around, the amount of text gave a bag of tokens 21%
    (17% here). [PAD] remains only before the first and after the last story, and where a window's
    edge would cut a word: its visible part is dropped (a cut "hide-and-seek" reads "hide-and-see").
    Pass the stories of ONE split: the stream's other stories appear in its windows.

    Each story is tokenized as it is and a mention's tokens (found by their character offsets) are
    replaced: writing "[MASK]" into the text instead would make the byte-level BPE start the text
    after it anew, with a stray "Ġ" token before punctuation that pretraining never saw."""
    forms = word_forms() if forms is None else forms
    pattern, owner = _forms_regex({w: forms[w] for w in words})
    form_ids = _single_token_forms(tok, {w: forms[w] for w in words})
    stream: list[int] = []                      # token ids; a placeholder -1 - i for mention i
    where: list[tuple[int, int, int] | None] = []   # (story, start, end) characters; None for [SEP]
    asks: list[tuple[int, int, int]] = []       # (stream position, mention, story) of each example
    labels = []
    n_mentions = 0
    for s, (story, enc) in enumerate(zip(stories, tok.encode_batch(stories, add_special_tokens=False))):
        ids, spans, mentions = _hide_mentions(story, enc, pattern, owner, form_ids)
        first = {}
        for k, t in enumerate(ids):
            if t < 0 and mentions[-1 - t][1]:
                first.setdefault(mentions[-1 - t][0], (len(stream) + k, n_mentions - 1 - t))
        for w in words:
            if w in first:
                asks.append((*first[w], s))
                labels.append(words.index(w))
        stream += [t if t >= 0 else t - n_mentions for t in ids] + [SEP_ID]
        where += [(s, a, b) for a, b in spans] + [None]
        n_mentions += len(mentions)

    def cuts_word(p: int) -> bool:  # does the boundary before stream position p split a word?
        a, b = where[p - 1], where[p]
        return a is not None and b is not None and a[0] == b[0] and _inside_word(stories[a[0]], a[1:], b[1:])

    body = seq_len - 1
    half = body // 2
    rows = []
    for at, mention, _ in asks:
        lo, hi = max(0, at - half), min(len(stream), at + body - half)
        while lo < at and lo > 0 and cuts_word(lo):
            lo += 1
        while hi > at + 1 and hi < len(stream) and cuts_word(hi):
            hi -= 1
        ids = [MASK_ID if t == -1 - mention else UNK_ID if t < 0 else t for t in stream[lo:hi]]
        rows.append([CLS_ID] + [PAD_ID] * (lo - (at - half)) + ids + [PAD_ID] * (at + body - half - hi))
    return (torch.tensor(rows, dtype=torch.long).view(-1, seq_len), np.array(labels, dtype=np.int64),
            np.array([s for *_, s in asks], dtype=np.int64))


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
    # split BY STORY before cutting windows: a window shows its neighbours in the stream, and they
    # must be stories of its own split. Stratified on the words each story mentions.
    pattern, owner = _forms_regex({w: forms[w] for w in words})
    mentioned = [(s, words.index(w)) for s, story in enumerate(train_stories)
                 for w in sorted({owner[m.group(0).lower()] for m in pattern.finditer(story)}, key=words.index)]
    groups = np.array([s for s, _ in mentioned], dtype=np.int64)
    if len(set(groups.tolist())) < 2:
        raise ValueError(f"too few stories with the words {words} for a probe")
    folds = StratifiedGroupKFold(n_splits=max(2, round(1 / val_fraction)), shuffle=True, random_state=seed)
    _, va = next(folds.split(groups, np.array([c for _, c in mentioned]), groups))
    val_stories = set(groups[va].tolist())
    parts = {}
    for k, idx in (("train", [i for i in range(len(train_stories)) if i not in val_stories]),
                   ("val", sorted(val_stories))):
        xs, ys, ss = masked_word_windows([train_stories[i] for i in idx], tok, seq_len, words, forms)
        parts[k] = (xs, ys, np.array(idx, dtype=np.int64)[ss])
    parts["test"] = masked_word_windows(load_stories("valid", root), tok, seq_len, words, forms)
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
                          "a word's first mention is [MASK], every other mention of a class word [UNK], in "
                          "windows of the split's story stream; balanced classes; features at the [MASK]",
                          counts, story=story)
