"""Concepts shared across modalities: CIFAR-10 classes, the words that name them in stories, and
the spoken words that name them in Speech Commands / FSDD.

Used by the text "who is it about" probe (``probe.py``) and by the cross-modal pairing (``align.py``).
"""
from __future__ import annotations

import re
from functools import lru_cache

# CIFAR-10 class -> the words a children's story uses for it (singular forms)
CONCEPT_WORDS: dict[str, tuple[str, ...]] = {
    "airplane": ("airplane", "plane", "aeroplane"),
    "automobile": ("car", "automobile"),
    "bird": ("bird", "birdie"),
    "cat": ("cat", "kitten", "kitty"),
    "deer": ("deer", "fawn"),
    "dog": ("dog", "puppy", "doggy", "doggie", "pup"),
    "frog": ("frog", "froggy"),
    "horse": ("horse", "pony", "foal"),
    "ship": ("ship", "boat", "sailboat"),
    "truck": ("truck",),
}
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def _forms(word: str) -> list[str]:
    """The word and its regular plural (puppy -> puppies, deer stays deer)."""
    if word == "deer":
        return [word]
    return [word, word[:-1] + "ies" if word.endswith("y") else word + "s"]


@lru_cache(maxsize=None)
def concept_pattern(concept: str) -> re.Pattern:
    """Whole-word, case-insensitive regex for every form of every word of ``concept``."""
    forms = sorted({f for w in CONCEPT_WORDS.get(concept, (concept,)) for f in _forms(w)}, key=len, reverse=True)
    return re.compile(r"\b(?:" + "|".join(map(re.escape, forms)) + r")\b", re.IGNORECASE)


@lru_cache(maxsize=None)
def _any_concept_pattern(concepts: tuple[str, ...]) -> tuple[re.Pattern, dict[str, str]]:
    """One regex for every form of every concept, and form -> concept: one scan of a text instead of
    one per concept (the full TinyStories has 2.1M stories)."""
    owner: dict[str, str] = {}
    for c in concepts:
        for form in {f for w in CONCEPT_WORDS.get(c, (c,)) for f in _forms(w)}:
            if owner.setdefault(form.lower(), c) != c:
                raise ValueError(f"{form!r} names both {owner[form.lower()]!r} and {c!r}")
    forms = sorted(owner, key=len, reverse=True)
    return re.compile(r"\b(?:" + "|".join(map(re.escape, forms)) + r")\b", re.IGNORECASE), owner


def first_mentions(text: str, concepts=tuple(CONCEPT_WORDS)) -> dict[str, re.Match]:
    """concept -> its first mention in ``text`` (the same match ``concept_pattern(c).search`` gives:
    every form is a whole word, so one scan finds each occurrence of every concept exactly once)."""
    pattern, owner = _any_concept_pattern(tuple(concepts))
    first: dict[str, re.Match] = {}
    for m in pattern.finditer(text):
        first.setdefault(owner[m.group(0).lower()], m)
    return first


def concepts_in(text: str, concepts=tuple(CONCEPT_WORDS)) -> list[str]:
    """The concepts a text mentions (in ``concepts`` order)."""
    found = first_mentions(text, concepts)
    return [c for c in concepts if c in found]


def mask_concept(text: str, concept: str, mask_token: str = "[MASK]") -> str:
    """Replace every mention of ``concept`` (with the space before it) by the mask token, so the model
    sees a [MASK] token where the word's token was, as in pretraining."""
    return re.sub(r"\s?" + concept_pattern(concept).pattern, mask_token, text, flags=re.IGNORECASE)
