"""The masked-word text probe (issue 14): the vocabulary rule, inputs that never contain their answer,
exact example counts, story-disjoint splits, balanced classes, the bag-of-tokens baseline, and the
readout at the [MASK] position."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from d2v_lab.data import load_stories
from d2v_lab.data.tokenizer import CLS_ID, MASK_ID, PAD_ID, SEP_ID, load_tokenizer, train_bpe
from d2v_lab.evaluate import probe as probe_mod
from d2v_lab.evaluate.features import layer_features
from d2v_lab.evaluate.tasks import (
    MASKED_WORD_CANDIDATES,
    MaskedWordData,
    masked_word_task,
    masked_word_vocabulary,
    masked_word_windows,
    word_forms,
)
from d2v_lab.train.checkpoint import build_model
from d2v_lab.train.loop import pretrain
from d2v_lab.train.profiles import get_profile

from builders import write_stories, write_tinystories

# A small candidate pool, so every count below can be worked out by hand.
POOL = {"noun": {"ball": ("ball", "balls"), "tree": ("tree", "trees"), "park": ("park", "parks")},
        "adjective": {"happy": ("happy", "happily", "happiness"), "sad": ("sad", "sadly")}}
TRAIN = (
    [f"Tom kicked the ball. The ball was red. Tom was happy. Story {i}." for i in range(10)]          # ball, happy
    + [f"The tree was tall. Sam sat under the trees and felt sad. Story {i}." for i in range(10, 18)]  # tree, sad
    + [f"Mia went to the park with a ball. She sadly said bye. Story {i}." for i in range(18, 24)]     # ball, sad
    + [f"A bird sang a song. Story {i}." for i in range(24, 30)]                                       # none
)
VALID = (
    [f"The ball rolled to the tree. Story {i}." for i in range(3)]        # ball, tree
    + [f"Happy Sam saw a BALL. Story {i}." for i in range(3, 5)]          # happy, ball (any case)
    + [f"She was sad. Story {i}." for i in range(5, 9)]                   # sad
    + ["Nothing to see. Story 9."]                                        # none
)
# stories per word: train ball 10 + 6, tree 8, sad 8 + 6, happy 10, park 6; test ball 5, tree 3, happy 2, sad 4
SEQ = 128   # these stories are at most 37 tokens: a window holds the whole story it asks about
VOCABULARY = ("ball", "tree", "sad", "happy")   # per part of speech, by stories: ball 16 > tree 8 > park 6; sad 14 > happy 10


@pytest.fixture
def word_root(tmp_path, monkeypatch):
    root = tmp_path / "data"
    write_stories(root / "TinyStories" / "TinyStories-train.txt", TRAIN)
    write_stories(root / "TinyStories" / "TinyStories-valid.txt", VALID)
    monkeypatch.setenv("D2V_LAB_DATA", str(root))
    return root


@pytest.fixture(scope="module")
def tok():
    return train_bpe(TRAIN + VALID, vocab_size=300)


def any_form(words, forms) -> re.Pattern:
    return re.compile(r"\b(?:" + "|".join(f for w in words for f in forms[w]) + r")\b", re.IGNORECASE)


def own_story(tok, row) -> str:
    """The text of the story a window asks about: between the [SEP]s (or [PAD]s) around its [MASK]."""
    ids = row.tolist()
    at = ids.index(MASK_ID)
    lo = max(i for i in range(at) if ids[i] in (CLS_ID, SEP_ID, PAD_ID)) + 1
    hi = min([i for i in range(at, len(ids)) if ids[i] in (SEP_ID, PAD_ID)] + [len(ids)])
    return tok.decode(ids[lo:hi], skip_special_tokens=False).strip()


def story_number(tok, row) -> int:
    return int(re.search(r"story (\d+)\.$", own_story(tok, row)).group(1))


def test_vocabulary_rule_takes_the_most_frequent_words_of_each_part_of_speech():
    assert masked_word_vocabulary(TRAIN, per_pos=2, candidates=POOL) == VOCABULARY
    assert masked_word_vocabulary(TRAIN, per_pos=1, candidates=POOL) == ("ball", "sad")
    # ties go alphabetically; a word in no story still ranks (the task drops it for lack of examples)
    assert masked_word_vocabulary(["nothing here"], per_pos=2, candidates=POOL) == ("ball", "park", "happy", "sad")
    # the default pool: 4 words of each of the 3 parts of speech, every form owned by one word only
    default = masked_word_vocabulary(TRAIN)
    assert len(default) == 12 and default[:4] == ("ball", "tree", "park", "dad")
    forms = word_forms()
    assert sum(len(f) for f in forms.values()) == len({f for fs in forms.values() for f in fs})
    with pytest.raises(ValueError, match="form of both"):
        word_forms({"noun": {"saw": ("saw",)}, "verb": {"see": ("see", "saw")}})


def test_windows_hide_every_form_of_every_word_and_mask_exactly_the_first_mention(tok):
    forms = word_forms(POOL)
    x, y, story = masked_word_windows(TRAIN, tok, SEQ, VOCABULARY, forms)
    # exact counts: one example per (story, vocabulary word it mentions)
    assert np.bincount(y, minlength=4).tolist() == [16, 8, 14, 10]
    assert len(set(story.tolist())) == 24                               # the 6 stories without a word: none
    hidden = any_form(VOCABULARY, forms)
    for row, s in zip(x, story):
        text = tok.decode(row.tolist(), skip_special_tokens=False)
        assert row[0] == CLS_ID and (row == MASK_ID).sum() == 1         # one question per input
        assert not hidden.search(text), text                            # no answer, and no other class word
        assert story_number(tok, row) == s
    # "the ball ... the ball ... happy": ball's first mention is [MASK], its second and "happy" are [UNK]
    assert y[0] == 0 and own_story(tok, x[0]) == "tom kicked the[MASK]. the[UNK] was red. tom was[UNK]. story 0."
    assert y[1] == 3 and own_story(tok, x[1]) == "tom kicked the[UNK]. the[UNK] was red. tom was[MASK]. story 0."
    # the visible text does not depend on which word is asked: the same story's inputs differ only in
    # where the [MASK] is (so a bag of tokens can only guess from the story's other words)
    for s in np.unique(story):
        texts = {own_story(tok, r).replace("[MASK]", "[UNK]") for r in x[story == s]}
        assert len(texts) == 1


def test_windows_are_cut_from_the_story_stream_with_the_mask_at_one_index():
    """As in pretraining, the stories form one [SEP]-separated stream; the [MASK] sits at the same
    index in every window, so neither its position nor the amount of text says where in its story the
    word is; [PAD] only before the first story and after the last."""
    filler = "Sam sat down on the red mat. " * 12
    stories = ["The ball was red.", filler, "A tree. " + filler, filler + "The end, said the ball."]
    tok = train_bpe(stories * 10, vocab_size=400)                      # every word one token: no edge cuts a word
    x, y, story = masked_word_windows(stories, tok, 33, ("ball", "tree"), word_forms(POOL))
    assert y.tolist() == [0, 1, 0] and story.tolist() == [0, 2, 3]
    assert (x[:, 17] == MASK_ID).all()                                  # [CLS] + 16 tokens before it
    assert (x[0, 1:16] == PAD_ID).all() and (x[0, 16:] != PAD_ID).all()  # nothing before "the" [MASK]
    assert (x[1] != PAD_ID).all() and (x[1] == SEP_ID).sum() == 1       # a full window across a [SEP]
    assert (x[2, :18] != PAD_ID).all() and (x[2, -12:] == PAD_ID).all()  # nothing after the last story
    # so an encoder's layer 0 (the [MASK] embedding plus its position) is the same for every input
    model = build_model(get_profile("text", "ci")).student
    layer0 = layer_features(model, x, select=x == MASK_ID)["mean"][0]
    assert np.allclose(layer0, layer0[0])


def test_windows_never_end_inside_a_word():
    """A window's edge that would cut a word drops the word's visible part ([PAD] instead), so no
    fragment such as "hide-and-see" (of "hide-and-seek") shows: every word in a window is a whole
    word of the stories."""
    story = "The ball and the abracadabra hullabaloo of supercalifragilistic kangaroos. "
    stories = [" ".join([story] * (i % 3 + 1)) + "Then the ball bounced." for i in range(12)]
    tok = train_bpe(stories, vocab_size=270)                            # few merges: long words are many tokens
    assert len(tok.encode(" supercalifragilistic", add_special_tokens=False).ids) > 3
    x, _, story = masked_word_windows(stories, tok, 40, ("ball",), word_forms(POOL))
    whole = set(re.findall(r"[a-z]+", " ".join(stories).lower()))
    for row in x:
        text = tok.decode(row.tolist(), skip_special_tokens=True)
        assert set(re.findall(r"[a-z]+", text)) <= whole, text
    # [PAD] away from the stream's ends: a word's visible part was dropped at an edge
    middle = (story > 0) & (story < len(stories) - 1)
    assert (x[torch.from_numpy(middle)] == PAD_ID).any()


def test_words_that_begin_with_a_class_words_token_are_hidden_too():
    """"player" is " play" + "er" to the BPE: the answer's own token. Such words are hidden ([UNK],
    never asked), so no input holds the token of any form of a class word."""
    stories = ["Tom likes to play. The player won. Playtime is fun. We played ball."]
    tok = train_bpe(["We play and play, play."] * 20 + stories, vocab_size=270)   # few merges: " play"+"er"
    play = tok.token_to_id("Ġplay")
    assert play is not None and tok.encode(" player", add_special_tokens=False).ids[0] == play
    forms = {"play": ("play", "plays", "played"), "ball": ("ball",)}
    x, y, _ = masked_word_windows(stories, tok, 64, ("play", "ball"), forms)
    assert y.tolist() == [0, 1]
    assert own_story(tok, x[0]) == "tom likes to[MASK]. the[UNK] won.[UNK] is fun. we[UNK][UNK]."
    own = [tok.encode(" " + f, add_special_tokens=False).ids for fs in forms.values() for f in fs]
    assert not (set(x.flatten().tolist()) & {ids[0] for ids in own if len(ids) == 1})


def test_masked_word_task_counts_splits_and_balance(word_root, tok):
    data = masked_word_task(tok, SEQ, word_root, candidates=POOL, per_pos=2)
    assert isinstance(data, MaskedWordData) and data.task == "tinystories_masked_word"
    assert data.classes == VOCABULARY
    before = data.counts["examples_before_balancing"]
    assert before["test"] == {"ball": 5, "tree": 3, "sad": 4, "happy": 2}
    assert {w: before["train"][w] + before["val"][w] for w in VOCABULARY} == {"ball": 16, "tree": 8, "sad": 14,
                                                                                 "happy": 10}
    # balanced: every split subsampled to its rarest class, so chance = majority = 1/4
    for split in ("train", "val", "test"):
        n = min(before[split].values())
        assert np.bincount(data.labels[split], minlength=4).tolist() == [n] * 4
        assert data.counts["examples_per_class"][split] == n
        assert len(data.inputs[split]) == len(data.raw[split]) == len(data.story[split]) == 4 * n
    assert data.n("test") == 8
    # split by story: train and val share no story (a story's examples share its text); test is the other file
    assert not set(data.story["train"]) & set(data.story["val"])
    for split in ("train", "val", "test"):
        assert [story_number(tok, r) for r in data.inputs[split]] == data.story[split].tolist()
    # ... and the other stories a window shows (its neighbours in the stream) are of its split too
    shown = {split: {int(n) for r in data.inputs[split]
                     for n in re.findall(r"story (\d+)", tok.decode(r.tolist(), skip_special_tokens=False))}
             for split in ("train", "val")}
    assert set(data.story["val"].tolist()) <= shown["val"] and not shown["train"] & shown["val"]
    # the answer is never in the input, nor any other class word; [MASK] marks the asked position
    hidden = any_form(VOCABULARY, word_forms(POOL))
    for split in ("train", "val", "test"):
        assert data.select(split).sum(1).tolist() == [1] * data.n(split)
        for row in data.inputs[split]:
            assert not hidden.search(tok.decode(row.tolist(), skip_special_tokens=False))
    # the raw baseline: the bag of the window's tokens, special tokens ([MASK], [UNK], [PAD]) left out
    assert data.raw["test"].shape == (8, tok.get_vocab_size()) and data.raw["test"][:, :5].sum() == 0
    np.testing.assert_array_equal(data.raw["test"].sum(1), (data.inputs["test"] >= 5).sum(1).numpy())


def test_masked_word_task_drops_words_without_examples_and_reads_only_max_stories(word_root, tok):
    # park is picked with per_pos=3 but no held-out story mentions it: dropped, and reported
    data = masked_word_task(tok, SEQ, word_root, candidates=POOL, per_pos=3)
    assert data.counts["vocabulary"] == ["ball", "tree", "park", "sad", "happy"]
    assert data.counts["examples_before_balancing"]["test"]["park"] == 0 and "park" not in data.classes
    # the first 18 training stories mention only ball, happy, tree and sad: the rule sees no other
    capped = masked_word_task(tok, SEQ, word_root, candidates=POOL, per_pos=2, max_stories=18)
    before = capped.counts["examples_before_balancing"]
    assert {w: before["train"][w] + before["val"][w] for w in VOCABULARY} == {"ball": 10, "tree": 8, "sad": 8,
                                                                                 "happy": 10}
    assert capped.counts["examples_before_balancing"]["test"] == {"ball": 5, "tree": 3, "sad": 4, "happy": 2}
    with pytest.raises(ValueError, match="too few"):
        masked_word_task(tok, SEQ, word_root, candidates=POOL, per_pos=2, min_examples=4)


def test_limit_train_keeps_the_stories_aligned(word_root, tok):
    data = masked_word_task(tok, SEQ, word_root, candidates=POOL, per_pos=2)
    small = data.limit_train(4)
    assert isinstance(small, MaskedWordData) and small.n("train") == 4
    assert [story_number(tok, r) for r in small.inputs["train"]] == small.story["train"].tolist()
    assert small.n("test") == data.n("test")


def test_probe_backbone_reads_the_features_at_the_mask(word_root, tok, monkeypatch):
    """run_probe's readout offers a masked-word task the [MASK] position as one more pool ("masked"),
    next to the window pools every task has: layer_features(select=inputs == [MASK])."""
    data = masked_word_task(tok, 64, word_root, candidates=POOL, per_pos=2)
    cfg = get_profile("text", "ci")
    model = build_model(cfg).eval()
    seen = {}
    monkeypatch.setattr(probe_mod, "probe_features", lambda feats, labels, k: seen.update(feats) or {})
    probe_mod.probe_backbone(model.student, data, progress=False)
    for split in ("train", "val", "test"):
        expected = layer_features(model.student, data.inputs[split], select=data.select(split))
        np.testing.assert_allclose(seen[split]["masked"], expected["mean"], rtol=1e-5, atol=1e-6)
        whole = layer_features(model.student, data.inputs[split])
        np.testing.assert_allclose(seen[split]["mean"], whole["mean"], rtol=1e-5, atol=1e-6)
        assert not np.allclose(seen[split]["masked"], whole["mean"])


def test_run_probe_of_a_text_run_reports_the_masked_word_task(tmp_path):
    """A text run's probe: the concept task first, then the masked-word task, with its three feature
    sources and balanced classes (chance = majority)."""
    root = tmp_path / "data"
    write_tinystories(root)
    cfg = get_profile("text", "ci").with_overrides(["train.steps=2", "train.eval_every=0", "train.log_every=1",
                                                    "train.checkpoint_every=100", "train.device=cpu"])
    pretrain(cfg, tmp_path / "run", progress=False, root=root)
    result = probe_mod.run_probe(tmp_path / "run", root, supervised=False, progress=False)
    assert [r.task for r in (result.main, *result.extra)] == ["tinystories_concepts", "tinystories_masked_word"]
    r = result.extra[0]
    assert len(r.classes) >= 2 and r.chance == r.majority == pytest.approx(1 / len(r.classes))
    assert r.n_test == len(r.classes) * r.counts["examples_per_class"]["test"]
    assert all(0.0 <= getattr(r.linear, k) <= 1.0 for k in ("pretrained", "random_init", "raw_input"))


@pytest.mark.integration
def test_masked_word_windows_on_real_stories_never_show_the_answer(shared_root):
    """On the held-out stories, with the text profile's tokenizer size: no window shows a form of any
    class word, as text or as a form's own token, and none ends inside a word."""
    tok = load_tokenizer(shared_root, 4096)
    stories = load_stories("valid", shared_root)
    words = masked_word_vocabulary(load_stories("train", shared_root))
    assert len(words) == 12 and set(MASKED_WORD_CANDIDATES) == {"noun", "verb", "adjective"}
    forms = word_forms()
    x, y, _ = masked_word_windows(stories, tok, 128, words, forms)
    assert len(y) > 1000 and set(np.unique(y)) == set(range(len(words)))
    assert ((x == MASK_ID).sum(1) == 1).all() and (x[:, 64] == MASK_ID).all()
    own = [tok.encode(" " + f, add_special_tokens=False).ids for w in words for f in forms[w]]
    assert not set(x.flatten().tolist()) & {ids[0] for ids in own if len(ids) == 1}
    hidden = any_form(words, forms)
    whole = set(re.findall(r"\w+", " ".join(stories).lower()))
    for row in x:
        text = tok.decode(row.tolist(), skip_special_tokens=False)
        assert not hidden.search(text), text
        assert set(re.findall(r"\w+", tok.decode(row.tolist(), skip_special_tokens=True))) <= whole
