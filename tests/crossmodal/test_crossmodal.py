"""Cross-modal comparison: concept pairing, the verdict on synthetic spaces whose answer is known
(shared / separate but alignable / unrelated), RSA's null, the written conclusion, the concept
features of each modality, and the concept-level InfoNCE heads."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from d2v_lab.crossmodal import pairing as crossmodal
from d2v_lab.crossmodal.controls import concept_info_nce, train_joint_heads
from d2v_lab.crossmodal.experiment import compare
from d2v_lab.crossmodal.metrics import rsa_null
from d2v_lab.crossmodal.pairing import IMAGE_CONCEPTS, SPOKEN_CONCEPTS, ConceptFeatures, concept_pairs
from d2v_lab.crossmodal.results import AlignmentResult, PairResult, SkippedPair
from d2v_lab.crossmodal.verdict import conclusion, verdict
from d2v_lab.data import load_cifar10, load_fsdd, load_speech_commands, load_stories
from d2v_lab.data.concepts import concept_pattern, concepts_in
from d2v_lab.data.tokenizer import CLS_ID, PAD_ID
from d2v_lab.evaluate.probe import layer_features
from d2v_lab.train.checkpoint import build_model, load_run
from d2v_lab.train.inputs import audio_inputs
from d2v_lab.train.loop import pretrain
from d2v_lab.train.profiles import get_profile

from builders import pair_result, write_cifar, write_tinystories


def feats(modality: str, counts: dict[str, int], layers: int = 2, dim: int = 4, seed: int = 0) -> ConceptFeatures:
    labels = np.array([c for c, n in counts.items() for _ in range(n)])
    x = np.random.default_rng(seed).normal(size=(layers, len(labels), dim))
    return ConceptFeatures(modality, x, labels, f"{modality}-source")


# --- pairing ------------------------------------------------------------------------------------------

def test_concept_pairs_counts_labels_and_dropped_concepts():
    fa = feats("a", {"dog": 10, "cat": 3, "ship": 7, "frog": 9, "only_a": 8})
    fb = feats("b", {"dog": 4, "cat": 8, "ship": 12, "frog": 9, "only_b": 8})
    ia, ib, y = concept_pairs(fa, fb, per_concept=6, min_per_concept=5)
    # dog: min(10, 4, 6) = 4 < 5 and cat: 3 < 5 are dropped; ship and frog: min(., ., 6) = 6
    assert {c: int((y == c).sum()) for c in np.unique(y)} == {"frog": 6, "ship": 6}
    np.testing.assert_array_equal(fa.concepts[ia], y)
    np.testing.assert_array_equal(fb.concepts[ib], y)
    assert len(set(ia)) == len(ia) and len(set(ib)) == len(ib)        # no sample used twice
    _, _, y2 = concept_pairs(fa, fb, per_concept=100, min_per_concept=4)
    assert {c: int((y2 == c).sum()) for c in np.unique(y2)} == {"dog": 4, "frog": 9, "ship": 7}
    with pytest.raises(ValueError, match="no concept"):
        concept_pairs(fa, feats("b", {"only_b": 20}))
    with pytest.raises(ValueError, match="no concept"):
        concept_pairs(fa, fb, min_per_concept=10)


# --- compare() on spaces whose answer is known ------------------------------------------------------

N_CONCEPTS, PER = 6, 20


def clustered(seed: int, dim: int, spread: float = 0.3, layers: int = 3, noise_only: bool = False) -> np.ndarray:
    """(layers, N_CONCEPTS * PER, dim): concept clusters around random centres (or pure noise)."""
    rng = np.random.default_rng(seed)
    idx = np.repeat(np.arange(N_CONCEPTS), PER)
    out = []
    for _ in range(layers):
        centres = rng.normal(size=(N_CONCEPTS, dim))
        noise = rng.normal(size=(len(idx), dim))
        out.append(noise if noise_only else centres[idx] + spread * noise)
    return np.stack(out)


LABELS = np.repeat([f"concept{i}" for i in range(N_CONCEPTS)], PER)


def pct(v: float) -> str:
    return f"{100 * v:.1f}%"


def check_verdict_quotes_numbers(r: PairResult) -> None:
    text = r.verdict.text
    raw, assoc = r.retrieval_raw, r.association
    assert pct(raw.observed) in text[0] and pct(raw.chance) in text[0]
    assert pct(max(raw.permutation_p95, raw.rotation_p95)) in text[0]
    assert text[0].startswith("shared space: " + r.verdict.shared_space_call.upper() + ":")
    assert pct(assoc.retrieval) in text[1] and pct(assoc.null_p95) in text[1]
    assert pct(r.procrustes.retrieval_after) in text[1]
    assert f"{r.mutual_knn.best:.3f}" in text[2] and f"{r.cka.observed:.3f}" in text[2]


def test_compare_identical_paired_features_share_one_space():
    """Pairs are formed by concept only (a random same-concept partner), so 'identical' here means: b's
    row paired with a's row i IS a's row i. compare() draws the pairs with the same seed, so building b
    from those indices puts identical vectors on both sides of every pair."""
    fa = ConceptFeatures("a", clustered(1, 12), LABELS, "a")
    ia, ib, _ = concept_pairs(fa, ConceptFeatures("b", fa.layers * 0, LABELS, "b"), per_concept=100, seed=0)
    layers_b = np.empty_like(fa.layers)
    layers_b[:, ib] = fa.layers[:, ia]
    r = compare(fa, ConceptFeatures("b", layers_b, LABELS, "b"), n_shuffles=30)
    assert r.mutual_knn.best == 1.0
    assert r.cka.observed == pytest.approx(1.0, abs=1e-9)
    # CKA is reported raw and after platonic-rep's preprocessing, each with its own shuffled-pairs null
    assert r.cka.platonic_observed == pytest.approx(1.0, abs=1e-9) and r.cka.platonic_null_p95 < 0.5
    assert {"observed", "null_p95", "platonic_observed", "platonic_null_p95"} <= set(r.to_json()["cka"])
    assert r.retrieval_raw.observed == 1.0
    assert r.n_pairs == N_CONCEPTS * PER and r.concepts == {c: PER for c in np.unique(LABELS)}
    v = r.verdict
    assert v.shared_space and v.alignable and v.structure == {"mutual_knn": True, "cka": True, "rsa": True}
    check_verdict_quotes_numbers(r)


def test_compare_independent_clustered_spaces_are_alignable_not_shared():
    fa = ConceptFeatures("image", clustered(2, 12), LABELS, "a")
    fb = ConceptFeatures("text", clustered(3, 20), LABELS, "b")      # other width, unrelated centres
    r = compare(fa, fb, n_shuffles=30)
    v = r.verdict
    assert r.pair == "image-text"
    assert not v.shared_space
    raw = r.retrieval_raw
    assert raw.observed <= max(raw.permutation_p95, raw.rotation_p95)
    assert v.alignable and r.association.retrieval > 0.9 > r.association.null_p95
    assert v.structure["mutual_knn"]                               # both group by concept: second order
    assert r.mutual_knn.best > 3 * r.mutual_knn.chance
    check_verdict_quotes_numbers(r)


def test_compare_pure_noise_is_neither_shared_nor_alignable():
    fa = ConceptFeatures("a", clustered(4, 12, noise_only=True), LABELS, "a")
    fb = ConceptFeatures("b", clustered(5, 20, noise_only=True), LABELS, "b")
    r = compare(fa, fb, n_shuffles=30)
    v = r.verdict
    assert not v.shared_space and not v.alignable
    assert not v.structure["mutual_knn"] and not v.structure["cka"]
    assert abs(r.association.retrieval - r.association.chance) < 0.2
    check_verdict_quotes_numbers(r)


def test_align_json_without_the_platonic_cka_fields_still_loads():
    r = pair_result(cka={"observed": 0.4, "null_p95": 0.1})       # the layout written before they existed
    assert r.cka.observed == 0.4 and r.cka.platonic_observed is None and r.cka.platonic_null_p95 is None


def test_verdict_flags_follow_the_numbers():
    base = dict(retrieval_raw={"observed": 0.5, "chance": 0.2, "permutation_p95": 0.3, "rotation_p95": 0.6},
                association={"retrieval": 0.7, "null_p95": 0.3, "n_fit": 40, "n_eval": 100},
                procrustes={"retrieval_after": 0.4},
                mutual_knn={"best": 0.2, "null_p95": 0.25}, cka={"observed": 0.4, "null_p95": 0.1},
                rsa={"observed": 0.9, "p95": 0.5, "n_concepts": 4, "interpretable": False})
    v = verdict(pair_result(n_pairs=200, **base))
    # 0.5 on 200 pairs: Wilson interval 43.1-56.9%, wholly below the ROTATION null's 60%
    assert v.shared_space_call == "no" and not v.shared_space
    assert v.intervals["retrieval_raw"] == pytest.approx([0.4314, 0.5686], abs=1e-4)
    assert v.alignable_call == "yes" and v.alignable and v.structure == {"mutual_knn": False, "cka": True, "rsa": False}
    assert v.text[0].startswith("shared space: NO:") and "43.1-56.9%" in v.text[0] and "200 pairs" in v.text[0]
    assert "too few concepts" in v.text[2] and "50.0%" in v.text[0] and "60.0%" in v.text[0]
    assert "inside the null band" in v.text[0] and "100 held-out pairs" in v.text[1]
    base["retrieval_raw"]["rotation_p95"] = 0.40
    base["rsa"].update(n_concepts=6, interpretable=True)
    v2 = verdict(pair_result(n_pairs=200, **base))
    assert v2.shared_space_call == "yes" and v2.shared_space and v2.structure["rsa"]
    assert "above the null band" in v2.text[0] and v2.text != v.text
    # the same 50% on 20 pairs: the interval (29.9-70.1%) straddles 45%: inconclusive, not YES
    base["retrieval_raw"]["rotation_p95"] = 0.45
    v3 = verdict(pair_result(n_pairs=20, **base))
    assert v3.shared_space_call == "inconclusive" and not v3.shared_space
    assert v3.text[0].startswith("shared space: INCONCLUSIVE:") and "too few pairs to tell" in v3.text[0]
    # an association score above its null on 11 held-out pairs is inconclusive too
    base["association"].update(retrieval=8 / 11, null_p95=0.636, n_eval=11)
    v4 = verdict(pair_result(n_pairs=20, **base))
    assert v4.alignable_call == "inconclusive" and not v4.alignable


# --- RSA null -----------------------------------------------------------------------------------------

def test_rsa_null_same_geometry_is_above_its_null():
    rng = np.random.default_rng(0)
    for n_concepts, interpretable in ((7, True), (4, False)):   # 4 concepts: too few for the null to beat
        labels = np.repeat([f"c{i}" for i in range(n_concepts)], 15)
        centres = rng.normal(size=(n_concepts, 10))
        idx = np.repeat(np.arange(n_concepts), 15)
        q, _ = np.linalg.qr(rng.normal(size=(10, 10)))
        a = centres[idx] + 0.2 * rng.normal(size=(len(idx), 10))
        b = centres[idx] @ q + 0.2 * rng.normal(size=(len(idx), 10))  # same geometry, rotated coordinates
        r = rsa_null(a, b, labels, n_shuffles=50)
        assert r.observed > 0.9 and r.n_shuffles == 50
        if interpretable:
            assert r.observed > r.p95
    # unrelated geometry (independent centres): not above the null
    labels = np.repeat([f"c{i}" for i in range(7)], 15)
    idx = np.repeat(np.arange(7), 15)
    a = rng.normal(size=(7, 10))[idx] + 0.2 * rng.normal(size=(len(idx), 10))
    b = rng.normal(size=(7, 10))[idx] + 0.2 * rng.normal(size=(len(idx), 10))
    r = rsa_null(a, b, labels, n_shuffles=50)
    assert r.observed <= r.p95


# --- the conclusion paragraph -----------------------------------------------------------------------

def concluded(shared: bool, alignable: bool, raw: float, chance: float, assoc: float, knn: bool,
              cka: bool) -> PairResult:
    return pair_result(n_pairs=200, retrieval_raw={"observed": raw, "chance": chance},
                       association={"retrieval": assoc},
                       verdict={"shared_space": shared, "alignable": alignable,
                                "structure": {"mutual_knn": knn, "cka": cka, "rsa": False}})


def alignment(pairs: dict) -> AlignmentResult:
    return AlignmentResult({}, {}, pairs)


def test_conclusion_is_computed_from_the_numbers():
    separate = alignment({"image-text_word": concluded(False, True, 0.125, 0.1, 0.625, True, False),
                          "audio-text_word": concluded(False, False, 0.333, 0.3333, 0.35, False, False),
                          "audio-image": SkippedPair("audio-image", "no concept")})
    text = conclusion(separate)
    assert "lies inside the null band for 2 of 2 pairs" in text
    assert "one objective, separate spaces" in text
    for v in ("12.5%", "10.0%", "62.5%", "33.3%", "35.0%"):
        assert v in text
    assert "confidently above its null for 1 of 2 pairs" in text
    assert "Some relational structure is shared (image-text_word:" in text

    one_shared = alignment({"image-text_word": concluded(True, True, 0.875, 0.1, 0.95, True, True),
                            "audio-text_word": concluded(False, True, 0.2, 0.25, 0.45, False, False)})
    text2 = conclusion(one_shared)
    assert "inside the null band for 1 of 2 pairs, above it for image-text_word" in text2
    assert "separate spaces" not in text2
    assert "87.5%" in text2 and "95.0%" in text2 and "45.0%" in text2
    assert "confidently above its null for 2 of 2 pairs" in text2

    unsure = alignment({"image-text_word": concluded(False, True, 0.2, 0.1, 0.9, False, False),
                        "audio-image": pair_result(n_pairs=23, verdict={"shared_space_call": "inconclusive"})})
    text3 = conclusion(unsure)
    assert "inside the null band for 1 of 2 pairs, and straddles it for audio-image (too few pairs" in text3
    assert "need more paired concepts to decide" in text3

    flat = alignment({"a-b": concluded(False, False, 0.1, 0.1, 0.1, False, False)})
    assert "Neither mutual kNN nor CKA rises above its null" in conclusion(flat)
    assert conclusion(alignment({"a-b": SkippedPair("a-b", "x")})).startswith("No modality pair")


# --- concept features of each modality -----------------------------------------------------------

class Spy:
    """Wraps layer_features inside crossmodal and keeps what it was given."""

    def __init__(self):
        self.x, self.select = None, None

    def __call__(self, backbone, x, **kw):
        self.x, self.select = x, kw.get("select")
        return layer_features(backbone, x, **kw)


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tmp = tmp_path_factory.mktemp("text_run")
        root = tmp / "data"
        write_tinystories(root)
        cfg = get_profile("text", "ci").with_overrides([
            "train.steps=2", "train.batch_size=4", "train.eval_every=0", "train.log_every=1",
            "train.checkpoint_every=100", "train.device=cpu"])
        pretrain(cfg, tmp / "run", progress=False, root=root)
        model, cfg, tok = load_run(tmp / "run", "text")
        return model, cfg, tok, root
    finally:
        torch.set_num_threads(n)


def test_text_features_word_mode_selects_the_concept_word(text_run, monkeypatch):
    model, cfg, tok, root = text_run
    spy = Spy()
    monkeypatch.setattr(crossmodal, "layer_features", spy)
    f = crossmodal.text_features(model, tok, cfg.data.seq_len, root, per_concept=3)
    stories = load_stories("train", root) + load_stories("valid", root)
    concepts = IMAGE_CONCEPTS + crossmodal.DIGIT_WORDS
    hits = {c: sum(c in concepts_in(s, concepts) for s in stories) for c in concepts}
    assert f.counts() == {c: min(n, 3) for c, n in hits.items() if n}
    assert {"bird", "cat", "dog", "frog", "truck", "one"} <= set(f.counts())   # "birds", "One day"
    assert f.layers.shape == (cfg.encoder.depth + 1, len(f.concepts), cfg.encoder.dim)
    for row, sel, concept in zip(spy.x, spy.select, f.concepts):
        assert row[0] == CLS_ID and sel.any() and not sel[0]
        word = tok.decode(row[sel].tolist()).strip()
        assert concept_pattern(concept).fullmatch(word), (concept, word)  # e.g. "birds" for bird, "one" for "One"
        assert concept_pattern(concept).search(tok.decode(row.tolist()))  # the word is NOT masked


def test_text_features_story_mode_selects_every_real_token(text_run, monkeypatch):
    model, cfg, tok, root = text_run
    spy = Spy()
    monkeypatch.setattr(crossmodal, "layer_features", spy)
    f = crossmodal.text_features(model, tok, cfg.data.seq_len, root, concepts=("cat", "frog"), per_concept=4,
                                 mode="story")
    assert f.counts() == {"cat": 4, "frog": 4} and "story" in f.source
    positions = torch.arange(spy.x.shape[1])[None]
    assert torch.equal(spy.select, (spy.x != PAD_ID) & (positions > 0))
    assert (spy.x == PAD_ID).any()                                    # short stories: padding is left out


def test_image_features_sample_test_images_per_class(tmp_path, monkeypatch):
    root = tmp_path / "data"
    write_cifar(root, n_train_batches=1, per_batch=10, n_test=30)
    spy = Spy()
    monkeypatch.setattr(crossmodal, "layer_features", spy)
    torch.manual_seed(0)
    model = build_model(get_profile("image", "ci"))
    f = crossmodal.image_features(model, root, per_concept=2)
    test = load_cifar10("test", root)
    assert f.counts() == {c: 2 for c in test.classes} and f.source == "cifar10/test"
    assert f.layers.shape == (3, 20, 64)
    label_of = {im.tobytes(): test.classes[lab] for im, lab in zip(test.images, test.labels)}
    assert [label_of[im.numpy().tobytes()] for im in spy.x] == f.concepts.tolist()   # rows keep their labels
    assert len({im.numpy().tobytes() for im in spy.x}) == 20


def test_audio_features_spoken_concepts_with_their_clips(fake_root, monkeypatch):
    spy = Spy()
    monkeypatch.setattr(crossmodal, "layer_features", spy)
    torch.manual_seed(0)
    model = build_model(get_profile("audio", "ci"))
    f = crossmodal.audio_features(model, fake_root, per_concept=4, progress=False)
    # fake data: FSDD has 6 clips per digit, Speech Commands 4 of "cat" and of "dog" ("yes" is no concept)
    assert f.counts() == {**{d: 4 for d in crossmodal.DIGIT_WORDS}, "cat": 4, "dog": 4}
    assert set(f.concepts) <= set(SPOKEN_CONCEPTS) and f.source == "fsdd + speechcommands"
    # each row's input is a clip of its own word: match every row to the nearest candidate clip
    sets = [load_speech_commands(s, fake_root) for s in ("training", "validation", "testing")]
    sets.append(load_fsdd("all", fake_root))
    ref = torch.cat([audio_inputs(c, progress=False) for c in sets]).flatten(1)
    words = np.concatenate([np.array(c.classes)[c.labels] for c in sets])
    nearest = torch.cdist(spy.x.flatten(1), ref).argmin(1).numpy()
    assert words[nearest].tolist() == f.concepts.tolist()


# --- concept-level InfoNCE and the joint heads -----------------------------------------------------

def test_concept_info_nce_matches_manual_computation():
    za = F.normalize(torch.tensor([[1.0, 0.2], [0.1, 1.0], [-1.0, 0.5]]), dim=1)
    zb = F.normalize(torch.tensor([[0.9, 0.1], [1.0, -0.3], [0.0, 1.0], [0.5, 0.5]]), dim=1)
    la, lb = torch.tensor([0, 1, 2]), torch.tensor([0, 0, 1, 3])
    t = 0.5
    logits = (za @ zb.T / t).double()

    def soft_ce(rows, targets):
        return float(np.mean([-(tg * torch.log_softmax(r, 0)).sum() for r, tg in zip(rows, targets)]))
    # a -> b: a0 has positives b0, b1; a1 has b2; a2 (concept 2) has none in b: no anchor
    a2b = soft_ce(logits[:2], [torch.tensor([0.5, 0.5, 0, 0]), torch.tensor([0.0, 0, 1, 0])])
    # b -> a: b0, b1 -> a0; b2 -> a1; b3 (concept 3): no anchor
    b2a = soft_ce(logits.T[:3], [torch.tensor([1.0, 0, 0]), torch.tensor([1.0, 0, 0]), torch.tensor([0.0, 1, 0])])
    assert float(concept_info_nce(za, la, zb, lb, t)) == pytest.approx((a2b + b2a) / 2, rel=1e-5)
    # skipped rows are no anchors but stay negatives for the others (columns b3 and a2 above): moving
    # them changes the loss, which is what the manual computation with all columns encodes
    moved = za.clone()
    moved[2] = F.normalize(torch.tensor([0.9, 0.2]), dim=0)
    assert float(concept_info_nce(moved, la, zb, lb, t)) != pytest.approx(float(concept_info_nce(za, la, zb, lb, t)))
    assert float(concept_info_nce(za, la, zb, lb + 10, t)) == 0.0     # no shared concept at all


def test_train_joint_heads_pull_same_concepts_together():
    rng = np.random.default_rng(0)
    k, n = 5, 40
    idx = np.repeat(np.arange(k), n)
    names = np.array([f"c{i}" for i in range(k)])
    ca, cb = rng.normal(size=(k, 12)), rng.normal(size=(k, 20))      # unrelated spaces, other widths
    draw = lambda c, s: c[idx] + 0.5 * np.random.default_rng(s).normal(size=(len(idx), c.shape[1]))  # noqa: E731
    heads = train_joint_heads({"a": (draw(ca, 1), names[idx]), "b": (draw(cb, 2), names[idx])},
                              dim=16, steps=80, batch_size=64, hidden=64)
    za, zb = heads["a"](draw(ca, 3)), heads["b"](draw(cb, 4))         # fresh samples
    assert np.allclose(np.linalg.norm(za, axis=1), 1.0, atol=1e-5)
    cos = za @ zb.T
    same = idx[:, None] == idx[None, :]
    assert cos[same].mean() > cos[~same].mean() + 0.5
