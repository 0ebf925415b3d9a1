"""Probes: the logistic regression matches scikit-learn, C / layer / pooling are chosen on validation
only (the test split is scored, never fitted or tuned on), k-NN, per-layer features (padding and
``select``), the probe tasks and their splits, the masked concept windows, and a whole run_probe."""
from __future__ import annotations

import inspect
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from d2v_lab.cli import main
from d2v_lab.data import load_cifar10, load_fsdd, load_stories
from d2v_lab.data.concepts import CONCEPT_WORDS, concept_pattern, concepts_in
from d2v_lab.data.root import data_root
from d2v_lab.data.tokenizer import CLS_ID, MASK_ID, PAD_ID, load_tokenizer, train_bpe
from d2v_lab.evaluate import probe as probe_mod
from d2v_lab.evaluate.features import POOLS, READOUT, SEGMENTS
from d2v_lab.evaluate.probe import fit_logistic, knn_accuracy, layer_features, linear_probe, probe_features, run_probe
from d2v_lab.evaluate.results import DISCRIMINATION_MARGIN, ProbeResult, discrimination
from d2v_lab.evaluate.tasks import (
    KEYWORDS,
    cifar_task,
    concept_task,
    concept_windows,
    fsdd_task,
    keyword_clips,
    keyword_task,
)
from d2v_lab.train.checkpoint import CHECKPOINT, build_model
from d2v_lab.train.loop import pretrain
from d2v_lab.train.profiles import get_profile, preset

from builders import task_result, write_cifar, write_speech_commands, write_stories


def features_fp32(backbone, x, **kw):
    """layer_features in fp32 (where it has a precision switch), so comparisons can be tight."""
    if "precision" in inspect.signature(layer_features).parameters:
        kw.setdefault("precision", "fp32")
    return layer_features(backbone, x, **kw)


def clusters(n: int, d: int = 6, k: int = 3, noise: float = 1.0, scale: float = 2.0, seed: int = 0,
             centres: np.ndarray | None = None):
    """n points, balanced labels 0..k-1, Gaussian clusters around (given or random) centres."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d)) * scale if centres is None else centres
    y = np.arange(n) % k
    return (centres[y] + noise * rng.normal(size=(n, d))).astype(np.float32), y


def standardise(train, *others):
    """What the probe promises: standardise with the TRAINING mean and (population) std only."""
    t = np.asarray(train, dtype=np.float64)
    mean, std = t.mean(0), t.std(0)
    return [torch.as_tensor((np.asarray(a, dtype=np.float64) - mean) / std, dtype=torch.float32)
            for a in (train, *others)]


class FitSpy:
    """Wraps probe.fit_logistic and records every call (what was fitted, on what)."""

    def __init__(self):
        self.calls = []

    def __call__(self, x, y, n_classes, C=1.0, max_iter=200, init=None):
        W, b = fit_logistic(x, y, n_classes, C, max_iter, init)
        self.calls.append({"x": x.clone(), "y": y.clone(), "n_classes": n_classes, "C": C, "W": W, "b": b})
        return W, b


def accuracy(W, b, x, y) -> float:
    return float(((x @ W + b).argmax(1) == torch.as_tensor(y)).float().mean())


# --- logistic regression ----------------------------------------------------------------------------

@pytest.mark.parametrize("C", [0.05, 1.0])
def test_fit_logistic_matches_sklearn(C):
    x, y = clusters(90, d=4, k=3, noise=1.5, scale=1.0, seed=1)   # overlapping classes: finite optimum
    W, b = fit_logistic(torch.from_numpy(x), torch.from_numpy(y), 3, C)
    ref = LogisticRegression(C=C, solver="lbfgs", tol=1e-10, max_iter=10_000).fit(x.astype(np.float64), y)
    assert np.abs(W.numpy().T - ref.coef_).max() < 1e-3
    assert np.abs(b.numpy() - ref.intercept_).max() < 1e-3
    assert np.abs(ref.coef_).max() > 0.1                              # a real fit, not two zero matrices
    pred = (torch.from_numpy(x) @ W + b).argmax(1).numpy()
    np.testing.assert_array_equal(pred, ref.predict(x))


# --- linear probe -----------------------------------------------------------------------------------

def test_linear_probe_separable_features_score_perfectly():
    centres = np.random.default_rng(5).normal(size=(3, 6)) * 3
    parts = [clusters(n, centres=centres, noise=0.05, seed=s) for n, s in ((60, 1), (30, 2), (30, 3))]
    fit = linear_probe(*(v for p in parts for v in p))
    assert fit.test_acc == 1.0 and fit.val_acc == 1.0
    assert fit.C in probe_mod.C_GRID


def test_linear_probe_on_noise_is_at_chance():
    # Labels independent of everything the probe sees: the test accuracy is Binomial(600, 1/4) / 600,
    # sd = sqrt(.25 * .75 / 600) = 0.018; 0.08 is 4.5 sd, so a correct probe fails this ~1e-5 of the time
    # (and the data are seeded), while fitting on the test labels would push it far above chance.
    rng = np.random.default_rng(0)
    split = lambda n: (rng.normal(size=(n, 10)).astype(np.float32), rng.integers(0, 4, n))  # noqa: E731
    fit = linear_probe(*split(200), *split(100), *split(600))
    assert abs(fit.test_acc - 0.25) < 0.08


def test_linear_probe_chooses_C_on_validation_and_refits_on_train_plus_val(monkeypatch):
    centres = np.random.default_rng(3).normal(size=(3, 8)) * 0.8
    (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = (clusters(n, d=8, centres=centres, noise=1.0, seed=s)
                                                 for n, s in ((45, 11), (60, 12), (60, 13)))
    spy = FitSpy()
    monkeypatch.setattr(probe_mod, "fit_logistic", spy)
    fit = linear_probe(x_tr, y_tr, x_va, y_va, x_te, y_te)
    s_tr, s_va, s_te = standardise(x_tr, x_va, x_te)

    *grid, final = spy.calls
    assert sorted(c["C"] for c in grid) == sorted(probe_mod.C_GRID)
    for c in grid:                                                   # grid fits: the training rows only
        torch.testing.assert_close(c["x"], s_tr)
        assert torch.equal(c["y"], torch.as_tensor(y_tr))
    val = {c["C"]: accuracy(c["W"], c["b"], s_va, y_va) for c in grid}
    assert len(set(val.values())) > 1, "the data must make C matter for this test to mean anything"
    best = max(val.values())
    assert fit.C == min(C for C, v in val.items() if v == best)      # best validation accuracy, ties: smaller C
    assert fit.val_acc == pytest.approx(best)
    # the final model: the chosen C refitted on train + val (never the test rows), scored once on test
    assert final["C"] == fit.C
    torch.testing.assert_close(final["x"], torch.cat([s_tr, s_va]))
    assert torch.equal(final["y"], torch.as_tensor(np.concatenate([y_tr, y_va])))
    assert fit.test_acc == pytest.approx(accuracy(final["W"], final["b"], s_te, y_te))


def test_linear_probe_test_split_never_changes_the_fit():
    """Shuffled test labels, or test features replaced by noise: C and val_acc exactly unchanged, and
    (binary task) flipping every test label gives exactly 1 - accuracy: the predictions do not move."""
    centres = np.array([[1.0, 0.0, 0.5], [-1.0, 0.3, 0.0]])
    (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = (clusters(n, d=3, k=2, centres=centres, noise=1.0, seed=s)
                                                 for n, s in ((60, 1), (40, 2), (80, 3)))
    ref = linear_probe(x_tr, y_tr, x_va, y_va, x_te, y_te)
    rng = np.random.default_rng(0)
    shuffled = linear_probe(x_tr, y_tr, x_va, y_va, x_te, rng.permutation(y_te))
    noise = linear_probe(x_tr, y_tr, x_va, y_va, rng.normal(size=x_te.shape).astype(np.float32), y_te)
    flipped = linear_probe(x_tr, y_tr, x_va, y_va, x_te, 1 - y_te)
    for other in (shuffled, noise, flipped):
        assert (other.C, other.val_acc) == (ref.C, ref.val_acc)
    assert 0.5 < ref.test_acc < 1.0                                    # informative but not trivial
    assert flipped.test_acc == pytest.approx(1.0 - ref.test_acc, abs=1e-6)
    # the validation split IS used: the same corruption of it changes what is chosen / measured there
    bad_val = linear_probe(x_tr, y_tr, x_va, 1 - y_va, x_te, y_te)
    assert (bad_val.C, bad_val.val_acc) != (ref.C, ref.val_acc)


def test_final_fit_uses_validation_rows():
    """1-D case where the validation rows move the boundary: with them (train + val) the test points
    are classified right; a train-only fit would get every one of them wrong."""
    x_tr = np.array([[-3.0], [-2.5], [-2.0], [2.0], [2.5], [3.0]], dtype=np.float32)
    y_tr = np.array([0, 0, 0, 1, 1, 1])
    x_va = np.array([[0.8], [1.0], [1.2], [0.9], [1.1], [3.5]], dtype=np.float32)
    y_va = np.array([0, 0, 0, 0, 0, 1])
    x_te = np.array([[0.3], [0.4], [0.5]], dtype=np.float32)
    y_te = np.array([0, 0, 0])
    fit = linear_probe(x_tr, y_tr, x_va, y_va, x_te, y_te, Cs=(10.0,))
    s_tr, s_te = standardise(x_tr, x_te)
    W, b = fit_logistic(s_tr, torch.as_tensor(y_tr), 2, 10.0)
    assert accuracy(W, b, s_te, y_te) == 0.0                          # train only: all wrong
    assert fit.test_acc == 1.0                                        # train + val: all right


def test_number_of_classes_comes_from_train_and_val_not_test(monkeypatch):
    """What is fitted may not depend on the test labels at all, not even through the number of
    classes: a test label the probe never trained on must not add a class to the model."""
    (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = (clusters(n, d=4, k=3, seed=s) for n, s in ((30, 1), (15, 2), (15, 3)))
    runs = []
    for labels in (y_te, np.where(np.arange(len(y_te)) == 0, 5, y_te)):   # one test row of an unseen class 5
        spy = FitSpy()
        monkeypatch.setattr(probe_mod, "fit_logistic", spy)
        linear_probe(x_tr, y_tr, x_va, y_va, x_te, labels)
        runs.append(spy.calls)
    assert [c["n_classes"] for c in runs[0]] == [3] * len(runs[0])
    assert [c["n_classes"] for c in runs[1]] == [c["n_classes"] for c in runs[0]]
    for a, b in zip(*runs):
        assert torch.equal(a["W"], b["W"]) and torch.equal(a["b"], b["b"])


def test_probe_features_selects_layer_on_validation_never_on_test():
    """Two equally informative layers; spoiling layer 0's VALIDATION features moves the choice to
    layer 1, spoiling its TEST features (or shuffling the test labels) changes no choice at all."""
    centres = np.random.default_rng(4).normal(size=(3, 5)) * 1.5
    rng = np.random.default_rng(9)
    feats, labels = {}, {}
    for split, n, seed in (("train", 45, 1), ("val", 30, 2), ("test", 30, 3)):
        x, y = clusters(n, d=5, centres=centres, noise=0.8, seed=seed)
        feats[split] = {"mean": np.stack([x, x + 0.01 * rng.normal(size=x.shape).astype(np.float32)])}
        labels[split] = y

    def with_noise(split):
        out = {s: {"mean": f["mean"].copy()} for s, f in feats.items()}
        out[split]["mean"][0] = rng.normal(size=out[split]["mean"][0].shape)
        return out
    choice = lambda r: [(row["pool"], row["layer"], row["C"], row["val"]) for row in r["rows"]]  # noqa: E731
    ref = probe_features(feats, labels, k=5)
    assert ref["selected"]["layer"] == 0 and ref["selected"]["val"] > 0.8

    bad_test = probe_features(with_noise("test"), labels, k=5)
    shuffled = probe_features(feats, {**labels, "test": rng.permutation(labels["test"])}, k=5)
    for other in (bad_test, shuffled):
        assert choice(other) == choice(ref)
        assert {k: other["selected"][k] for k in ("pool", "layer", "C", "val")} == \
               {k: ref["selected"][k] for k in ("pool", "layer", "C", "val")}
    assert bad_test["rows"][0]["test"] < ref["rows"][0]["test"] - 0.3  # the test score did see the damage

    bad_val = probe_features(with_noise("val"), labels, k=5)
    assert bad_val["selected"]["layer"] == 1


# --- k-NN ---------------------------------------------------------------------------------------------

def test_knn_on_separated_clusters_is_perfect():
    centres = np.eye(4, 8, dtype=np.float32) * 5
    x_tr, y_tr = clusters(80, d=8, k=4, centres=centres, noise=0.3, seed=1)
    x_te, y_te = clusters(40, d=8, k=4, centres=centres, noise=0.3, seed=2)
    assert knn_accuracy(x_tr, y_tr, x_te, y_te, k=10) == 1.0
    assert knn_accuracy(x_tr, y_tr, x_te, (y_te + 1) % 4, k=10) == 0.0


@pytest.mark.parametrize("k", [0, -1, 7])
def test_knn_k_out_of_range_raises(k):
    x, y = clusters(6, seed=0)
    with pytest.raises(ValueError, match="k must be"):
        knn_accuracy(x, y, x, y, k=k)
    assert 0.0 <= knn_accuracy(x, y, x, y, k=6) <= 1.0                # k = len(train) is allowed


def test_knn_ties_are_broken_by_similarity_then_deterministically():
    q = np.array([[1.0, 0.0]], dtype=np.float32)
    near, far = [1.0, 0.1], [1.0, 0.5]                                  # cosine 0.995 vs 0.894
    x = np.array([near, far], dtype=np.float32)
    # a 1-1 vote: the more similar neighbour's class wins, whichever class and row order that is
    assert knn_accuracy(x, np.array([0, 1]), q, np.array([0]), k=2) == 1.0
    assert knn_accuracy(x, np.array([1, 0]), q, np.array([1]), k=2) == 1.0
    assert knn_accuracy(x[::-1].copy(), np.array([1, 0]), q, np.array([0]), k=2) == 1.0
    # the majority beats a more similar minority
    x3 = np.array([near, far, far], dtype=np.float32)
    assert knn_accuracy(x3, np.array([0, 1, 1]), q, np.array([1]), k=3) == 1.0
    # an exact tie (same point, two labels): the same answer every time and for either row order
    same = np.array([near, near], dtype=np.float32)
    answers = {knn_accuracy(same, lab, q, np.array([0]), k=2) for lab in (np.array([0, 1]), np.array([1, 0]))
               for _ in range(3)}
    assert len(answers) == 1


def test_knn_near_tie_goes_to_the_more_similar_class():
    """A 10-10 vote where class 1's neighbours are more similar in sum (by 1e-4 in cosine): the
    documented tie-break ("ties broken by summed similarity") must pick class 1, not the lower index."""
    q = np.array([[1.0, 0.0]], dtype=np.float32)
    angles = np.full(20, 0.45)
    angles[10] = 0.4498                                                 # cosine larger by ~9e-5
    x = np.stack([np.cos(angles), np.sin(angles)], 1).astype(np.float32)
    y = np.repeat([0, 1], 10)
    assert knn_accuracy(x, y, q, np.array([1]), k=20) == 1.0
    assert knn_accuracy(x, 1 - y, q, np.array([0]), k=20) == 1.0


# --- per-layer features ----------------------------------------------------------------------------

@pytest.mark.parametrize("modality,x", [
    ("image", lambda g: torch.randint(0, 256, (5, 3, 32, 32), generator=g, dtype=torch.uint8)),
    ("audio", lambda g: torch.randn(5, 64, 100, generator=g)),
    ("text", lambda g: torch.randint(5, 1024, (5, 64), generator=g)),
])
def test_layer_features_shapes(modality, x):
    torch.manual_seed(0)
    cfg = get_profile(modality, "ci")
    model = build_model(cfg)
    feats = features_fp32(model.student, x(torch.Generator().manual_seed(0)), batch_size=2)
    L, D = cfg.encoder.depth, cfg.encoder.dim
    assert set(feats) == ({"mean", "segments", "cls"} if modality == "text" else {"mean", "segments"})
    for name, f in feats.items():
        width = SEGMENTS * D if name == "segments" else D
        assert f.shape == (L + 1, 5, width) and np.isfinite(f).all()
    assert not np.allclose(feats["mean"][0], feats["mean"][-1])        # layer 0 is the input, not a copy


def text_model():
    torch.manual_seed(0)
    return build_model(get_profile("text", "ci")).student


def test_mean_pooling_ignores_padding():
    backbone = text_model()
    ids = torch.randint(5, 1024, (3, 20), generator=torch.Generator().manual_seed(1))
    ids[:, 0] = CLS_ID
    plain = features_fp32(backbone, ids)
    padded = features_fp32(backbone, torch.cat([ids, torch.full((3, 12), PAD_ID)], 1))
    for pool in ("mean", "cls"):
        np.testing.assert_allclose(padded[pool], plain[pool], atol=2e-5, rtol=0)
    # a padded row next to an unpadded one in the same batch: still the same features
    mixed = torch.cat([ids, torch.full((3, 12), PAD_ID)], 1)
    mixed[1, 20:] = 7
    np.testing.assert_allclose(features_fp32(backbone, mixed)["mean"][:, [0, 2]], plain["mean"][:, [0, 2]],
                               atol=2e-5, rtol=0)


@torch.no_grad()
def test_select_averages_exactly_the_selected_positions():
    backbone = text_model().eval()
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(5, 1024, (5, 24), generator=g)
    ids[:, 0] = CLS_ID
    ids[3, 15:] = PAD_ID
    select = torch.rand(5, 24, generator=g) < 0.3
    select[:, 2] = True
    select[3, 16] = True                                               # a padding position, asked for explicitly
    feats = features_fp32(backbone, ids, select=select, batch_size=2)["mean"]   # chunks of 2: select follows x
    pad = backbone.adapter.padding_mask(ids)
    tokens = backbone.adapter(ids)
    layers = [tokens] + backbone.encoder(tokens, pad, return_layers=True).hidden
    for layer, h in enumerate(layers):
        for i in range(5):
            np.testing.assert_allclose(feats[layer, i], h[i, select[i]].mean(0).numpy(), atol=1e-5, rtol=1e-4)


# --- tasks --------------------------------------------------------------------------------------------

@pytest.fixture
def cifar_root(tmp_path, monkeypatch):
    """CIFAR with 20 training images per class (the shared fake_root has 4, too few for a stratified
    validation tenth over 10 classes) and 3 test images per class."""
    root = tmp_path / "data"
    write_cifar(root, n_train_batches=2, per_batch=100, n_test=30)
    monkeypatch.setenv("D2V_LAB_DATA", str(root))
    return root


def _rows(images: np.ndarray) -> set[bytes]:
    return {im.tobytes() for im in images}


def test_cifar_task_splits_are_disjoint_stratified_and_test_is_test_batch(cifar_root):
    data = cifar_task(cifar_root)
    train, test = load_cifar10("train", cifar_root), load_cifar10("test", cifar_root)
    tr, va = data.inputs["train"].numpy(), data.inputs["val"].numpy()
    assert len(tr) + len(va) == len(train.images) == 200
    assert not (_rows(tr) & _rows(va))                                # disjoint
    assert _rows(tr) | _rows(va) == _rows(train.images)               # together: the training split
    assert np.bincount(data.labels["val"], minlength=10).tolist() == [2] * 10
    assert np.bincount(data.labels["train"], minlength=10).tolist() == [18] * 10
    np.testing.assert_array_equal(data.inputs["test"].numpy(), test.images)
    np.testing.assert_array_equal(data.labels["test"], test.labels)
    # labels travel with their images; the raw baseline is read out of the inputs by the probe
    lookup = {im.tobytes(): lab for im, lab in zip(train.images, train.labels)}
    assert all(lookup[im.tobytes()] == lab for im, lab in zip(va, data.labels["val"]))
    assert data.raw == {}

    capped = cifar_task(cifar_root, max_train=100)
    assert capped.n("train") + capped.n("val") == 100
    assert np.bincount(np.concatenate([capped.labels["train"], capped.labels["val"]])).tolist() == [10] * 10
    assert not (_rows(capped.inputs["train"].numpy()) & _rows(capped.inputs["val"].numpy()))


@pytest.mark.parametrize("max_train", [157, 190, 100])
def test_cifar_task_max_train_keeps_exactly_max_train(cifar_root, max_train):
    data = cifar_task(cifar_root, max_train=max_train)
    assert data.n("train") + data.n("val") == max_train


def test_fsdd_task_is_speaker_disjoint_with_the_held_out_speaker_as_test(fake_root):
    data = fsdd_task(progress=False)
    spk = data.counts
    assert set(spk) == {"train", "val", "test"}
    assert all(not (set(spk[a]) & set(spk[b])) for a, b in (("train", "val"), ("train", "test"), ("val", "test")))
    held_out = sorted(set(load_fsdd("test").speakers))
    assert spk["test"] == held_out == ["carol"]                      # the alphabetically last speaker
    assert spk["val"] == ["bob"] and spk["train"] == ["alice"]
    np.testing.assert_array_equal(data.labels["test"], load_fsdd("test").labels)
    assert data.inputs["train"].shape == (20, 64, 100) and data.n("val") == 20 and data.n("test") == 20


def keyword_root(root: Path) -> Path:
    """v0.02 with three keywords and two other words (speakers aaa, bbb train; ccc val; ddd test),
    and a v0.01 folder beside it that the keyword task must not read."""
    write_speech_commands(root, words=("yes", "no", "up", "cat", "dog"), version="speech_commands_v0.02")
    write_speech_commands(root, words=("yes", "bed"), version="speech_commands_v0.01")
    return root


def test_keyword_task_has_eleven_classes_with_every_other_word_unknown(tmp_path):
    root = keyword_root(tmp_path / "data")
    data = keyword_task(root, progress=False)
    assert data.task == "speechcommands_keywords" and data.modality == "audio"
    assert data.classes == KEYWORDS + ("unknown",) and len(data.classes) == 11
    one = [1, 1, 1] + [0] * 7
    assert data.counts["clips_per_class"] == {"train": [2 * n for n in one] + [4], "val": one + [2],
                                              "test": one + [2]}
    assert data.counts["version"] == "v0.02" and data.counts["speakers"] == {"train": 2, "val": 1, "test": 1}
    assert data.inputs["train"].shape == (10, 64, 100) and data.n("val") == data.n("test") == 5
    # each label is its clip's word (a keyword) or "unknown", and the splits are the official lists
    clips = keyword_clips(root)
    for split, c in clips.items():
        np.testing.assert_array_equal(data.labels[split], c.labels)
        words = [p.parent.name for p in c.paths]
        assert [data.classes[i] for i in c.labels] == [w if w in KEYWORDS else "unknown" for w in words]
        assert {p.parent.parent.name for p in c.paths} == {"speech_commands_v0.02"}
    speakers = {split: set(c.speakers) for split, c in clips.items()}
    assert speakers == {"train": {"aaa", "bbb"}, "val": {"ccc"}, "test": {"ddd"}}


def test_keyword_clips_on_the_shared_data(shared_root):
    """README section 5: the keywords have 2,225 / 389 / 522 clips and the other 25 words 244 / 45 / 37
    in training / validation / testing, from 127 / 26 / 27 speakers, no speaker in two splits."""
    clips = keyword_clips(shared_root)
    counts = {split: np.bincount(c.labels, minlength=11) for split, c in clips.items()}
    assert {split: (int(n[:10].sum()), int(n[10])) for split, n in counts.items()} == \
        {"train": (2225, 244), "val": (389, 45), "test": (522, 37)}
    assert counts["train"][:10].tolist() == [249, 218, 218, 213, 233, 219, 216, 214, 220, 225]
    assert counts["test"][:10].tolist() == [53, 55, 53, 51, 54, 49, 50, 52, 56, 49]
    speakers = {split: set(c.speakers) for split, c in clips.items()}
    assert [len(speakers[s]) for s in ("train", "val", "test")] == [127, 26, 27]
    assert not (speakers["train"] & speakers["val"] or speakers["train"] & speakers["test"]
                or speakers["val"] & speakers["test"])


def test_audio_probe_tasks_keywords_first_then_fsdd(fake_root):
    cfg = get_profile("audio", "ci")
    tasks = probe_mod.probe_tasks("audio", cfg, root=fake_root, max_train=10, progress=False)
    assert [t.task for t in tasks] == ["speechcommands_keywords", "fsdd_digits"]
    assert [t.n("train") for t in tasks] == [6, 10]                    # the cap applies to both (6 < 10 < 20)


def test_run_probe_reads_every_source_through_the_same_readout(image_run, monkeypatch):
    """Pretrained, random init and raw input: the same layer_features, the same pools, the same
    selection (probe_features); only the raw input has a single layer and no weights."""
    run, root, cfg, _, _ = image_run
    seen, chosen = [], []

    def spy_features(backbone, x, **kw):
        feats = layer_features(backbone, x, **kw)
        seen.append((type(backbone).__name__, sorted(feats), feats["mean"].shape[0]))
        return feats

    def spy_probe(feats, labels, k=20):
        chosen.append(sorted(feats["train"]))
        return probe_features(feats, labels, k)
    monkeypatch.setattr(probe_mod, "layer_features", spy_features)
    monkeypatch.setattr(probe_mod, "probe_features", spy_probe)
    result = run_probe(run, root, supervised=False, progress=False)
    L = cfg.encoder.depth + 1
    assert seen == [("Backbone", ["mean", "segments"], L)] * 6 + [("RawInput", ["mean", "segments"], 1)] * 3
    assert chosen == [["mean", "segments"]] * 3
    selected = result.main.selected
    assert set(selected) == {"pretrained", "random_init", "raw_input"}
    assert selected["raw_input"]["layer"] == 0 and selected["raw_input"]["pool"] in POOLS
    assert result.main.linear.raw_input == selected["raw_input"]["test"]
    assert result.probe_config["readout"] == READOUT


CONCEPT_TRAIN = (
    [f"Lily had a cat named Tom number {i}. The cat liked milk and naps." for i in range(9)]
    + ["Once there was a girl who liked to play. " * 25 + "One day she found a little kitten in the garden."]
    + [f"A green frog number {i} jumped in the pond. Frogs love water." for i in range(10)]
    + [f"The pony number {i} ran on the farm." for i in range(3)]              # horse: too few
    + [f"A red truck number {i} drove to town." for i in range(10)]             # truck: no test story
    + [f"The dog number {i} chased a bird in the garden." for i in range(5)]    # two concepts: excluded
    + ["Sam went to school and read a book."] * 4                                # no concept
)
CONCEPT_VALID = (["Anna saw a cat on the wall.", "The kittens slept."]
                 + ["The frog sat on a log.", "Two frogs sang."]
                 + ["The horse ate hay.", "A dog and a cat played."])


@pytest.fixture
def story_root(tmp_path, monkeypatch):
    root = tmp_path / "data"
    write_stories(root / "TinyStories" / "TinyStories-train.txt", CONCEPT_TRAIN)
    write_stories(root / "TinyStories" / "TinyStories-valid.txt", CONCEPT_VALID)
    monkeypatch.setenv("D2V_LAB_DATA", str(root))
    return root


def test_concept_task_drops_rare_concepts_and_reports_counts(story_root):
    tok = train_bpe(CONCEPT_TRAIN, vocab_size=300)
    data = concept_task(tok, 48, story_root)
    counts = data.counts["train_test_stories_per_concept"]
    assert counts["cat"] == [10, 2] and counts["frog"] == [10, 2]
    assert counts["horse"] == [3, 1] and counts["truck"] == [10, 0]   # too few / no test story
    assert counts["dog"] == [0, 0] and counts["bird"] == [0, 0]       # two-concept stories are excluded
    assert data.classes == ("cat", "frog")
    assert data.n("train") + data.n("val") == 20 and data.n("test") == 4
    for split in ("train", "val", "test"):
        assert set(np.unique(data.labels[split])) <= set(range(len(data.classes)))
        assert data.inputs[split].shape[1] == 48
    assert np.bincount(data.labels["val"]).tolist() == [2, 2]          # stratified 20% validation
    assert np.bincount(data.labels["test"]).tolist() == [2, 2]
    # every window: [CLS] first, a [MASK] where the concept was, and no form of its concept left
    for split in ("train", "val", "test"):
        for row, lab in zip(data.inputs[split], data.labels[split]):
            assert row[0] == CLS_ID and (row == MASK_ID).any()
            assert not concept_pattern(data.classes[lab]).search(tok.decode(row.tolist(), skip_special_tokens=False))
    # the raw baseline is a bag of tokens without the special tokens
    assert data.raw["train"].shape == (data.n("train"), tok.get_vocab_size())
    assert data.raw["train"][:, :5].sum() == 0
    with pytest.raises(ValueError, match="too few"):
        concept_task(tok, 48, story_root, min_train=11)


def test_concept_task_reads_at_most_max_stories_training_stories(story_root):
    tok = train_bpe(CONCEPT_TRAIN, vocab_size=300)
    full = concept_task(tok, 48, story_root, min_train=1)
    capped = concept_task(tok, 48, story_root, min_train=1, max_stories=12)
    _, expected = concept_windows(load_stories("train", story_root)[:12], tok, 48)
    counts, full_counts = capped.counts["train_test_stories_per_concept"], full.counts["train_test_stories_per_concept"]
    assert [counts[c][0] for c in CONCEPT_WORDS] == np.bincount(expected, minlength=len(CONCEPT_WORDS)).tolist()
    assert sum(counts[c][0] for c in CONCEPT_WORDS) < sum(full_counts[c][0] for c in CONCEPT_WORDS)
    assert [counts[c][1] for c in CONCEPT_WORDS] == [full_counts[c][1] for c in CONCEPT_WORDS]  # test untouched


def test_concept_windows_on_real_stories_hide_the_concept(shared_root):
    tok = load_tokenizer(shared_root, 1024)
    stories = load_stories("valid", shared_root)
    x, y = concept_windows(stories, tok, 64)
    names = list(CONCEPT_WORDS)
    single = [s for s in stories if len(concepts_in(s)) == 1]
    assert len(x) == len(y) == len(single) > 50                      # stories naming two concepts are left out
    assert np.bincount(y, minlength=len(names)).tolist() == \
        np.bincount([names.index(concepts_in(s)[0]) for s in single], minlength=len(names)).tolist()
    for row, lab in zip(x, y):
        text = tok.decode(row.tolist(), skip_special_tokens=False)
        assert not concept_pattern(names[lab]).search(text), text
        assert row[0] == CLS_ID and (row == MASK_ID).any()


PROBES = preset("ci").probe


# --- a whole probe run ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    """An image ci model pretrained for 3 steps on tiny CIFAR, and its run_probe result."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        tmp = tmp_path_factory.mktemp("probe_run")
        root = tmp / "data"
        write_cifar(root, n_train_batches=2, per_batch=100, n_test=30)
        cfg = get_profile("image", "ci").with_overrides([
            "train.steps=3", "train.batch_size=16", "train.eval_every=0", "train.log_every=1",
            "train.checkpoint_every=100", "train.device=cpu"])
        pretrain(cfg, tmp / "run", progress=False, root=root)
        with threadpool_limits(limits=1):
            result = run_probe(tmp / "run", root, progress=False)
        files = {name: (tmp / "run" / name).read_bytes() for name in ("probe.json",)}
        return tmp / "run", root, cfg, result, files
    finally:
        torch.set_num_threads(n)


def test_run_probe_writes_documented_results(image_run):
    _, _, cfg, result, files = image_run
    r = result.main
    assert result.extra == [] and result.probe_config["knn_k"] == PROBES.knn_k
    assert (r.modality, r.task) == ("image", "cifar10")
    assert r.n_train == 200 and r.n_val == 20 and r.n_test == 30
    assert r.chance == pytest.approx(1 / len(r.classes)) == pytest.approx(0.1)
    assert r.knn_k == PROBES.knn_k
    accs = [getattr(s, k) for s in (r.linear, r.knn) for k in ("pretrained", "random_init", "raw_input")]
    assert all(0.0 <= a <= 1.0 for a in accs)
    assert [p["layer"] for p in r.per_layer] == list(range(cfg.encoder.depth + 1))
    sel = r.selected["pretrained"]
    assert r.linear.pretrained == sel["test"] == r.per_layer[sel["layer"]]["pretrained"]
    assert sel["val"] == max(p["pretrained_val"] for p in r.per_layer)
    assert r.supervised["epochs"] == PROBES.supervised_epochs["image"]
    assert 0.0 <= r.supervised_accuracy <= 1.0 and r.supervised["n_train"] == 180
    written = json.loads(files["probe.json"])
    assert written == json.loads(json.dumps(result.to_json()))       # as written by run_probe
    assert {"modality", "task", "n_train", "n_test", "chance", "linear", "knn", "per_layer", "extra_tasks"} <= set(written)
    assert set(written["linear"]) == {"pretrained", "random_init", "raw_input"}
    assert written["knn"]["k"] == PROBES.knn_k
    assert ProbeResult.from_json(written) == result                   # the JSON round-trips


def test_discrimination_needs_supervised_15_points_above_random_init():
    assert discrimination(0.60, 0.45) == (True, pytest.approx(0.15))   # exactly 15 points: enough
    assert discrimination(0.60, 0.46)[0] is False
    assert discrimination(0.30, 0.50) == (False, pytest.approx(-0.20))
    assert discrimination(None, 0.50) == (None, None)                  # no supervised reference: unknown
    assert DISCRIMINATION_MARGIN == 0.15


def test_probe_json_of_older_runs_still_reads(image_run):
    """probe.json only gained keys: a file without them (written before the check) reads back with
    the check unknown, and a new file round-trips with it."""
    _, _, _, result, files = image_run
    written = json.loads(files["probe.json"])
    assert {"discriminates", "discrimination_margin"} <= set(written)
    old = {k: v for k, v in written.items() if k not in ("discriminates", "discrimination_margin")}
    old["selected"] = {k: v for k, v in old["selected"].items() if k != "raw_input"}
    old["probe_config"] = {k: v for k, v in old["probe_config"].items() if k != "readout"}
    back = ProbeResult.from_json(old)
    assert back.main.discriminates is None and back.main.discrimination_margin is None
    assert back.main.linear == result.main.linear
    r = result.main
    assert (r.discriminates, r.discrimination_margin) == discrimination(r.supervised_accuracy, r.linear.random_init)


def test_cli_probe_prints_whether_each_task_discriminates(image_run, capsys, monkeypatch):
    run, root, _, _, _ = image_run
    monkeypatch.setenv("D2V_LAB_DATA", str(root))
    assert main(["probe", "--checkpoint", str(run)]) == 0
    out = capsys.readouterr().out
    result = ProbeResult.from_json(json.loads((run / "probe.json").read_text())).main
    line = next(line for line in out.splitlines() if "discriminates:" in line)
    margin = f"{100 * result.discrimination_margin:+.1f} points"
    assert margin in line and ("yes" in line if result.discriminates else "NO" in line and "not evidence" in line)
    assert main(["probe", "--checkpoint", str(run), "--no-supervised"]) == 0
    assert "discriminates: not measured (no supervised reference)" in capsys.readouterr().out


def test_cli_probe_json_prints_one_object(image_run, capsys, monkeypatch):
    run, root, _, r, _ = image_run
    monkeypatch.setenv("D2V_LAB_DATA", str(root))
    assert main(["probe", "--checkpoint", str(run), "--json", "--no-supervised"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["supervised"] is None and out["task"] == "cifar10"
    assert out["linear"] == pytest.approx(vars(r.main.linear))       # the same run measures the same numbers
    assert json.loads((run / "probe.json").read_text())["supervised"] is None
    assert (run / "probe.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # the CLI draws the figure


def test_a_checkpoint_trained_on_a_gpu_is_probed_on_the_cpu_here(image_run, tmp_path, monkeypatch):
    import shutil
    run, root, _, r, _ = image_run
    gpu_run = tmp_path / "gpu_run"
    shutil.copytree(run, gpu_run)
    state = torch.load(gpu_run / CHECKPOINT, weights_only=False)
    state["config"]["train"]["device"] = "cuda"                      # as if it had been trained on a GPU
    torch.save(state, gpu_run / CHECKPOINT)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = run_probe(gpu_run, root, supervised=False, progress=False)
    assert result.main.linear == r.main.linear                        # same model, same numbers, on the CPU


def test_cli_probe_supervised_epochs_overrides_the_profile(image_run, capsys, monkeypatch):
    run, root, _, r, _ = image_run
    monkeypatch.setenv("D2V_LAB_DATA", str(root))
    assert PROBES.supervised_epochs["image"] != 2
    assert main(["probe", "--checkpoint", str(run), "--json", "--supervised-epochs", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["supervised"]["epochs"] == 2 and out["supervised"]["n_train"] == 180
    assert out["linear"] == pytest.approx(vars(r.main.linear))
    with pytest.raises(ValueError, match="supervised_epochs"):
        run_probe(run, root, supervised_epochs=-1, progress=False)
    assert main(["probe", "--checkpoint", str(run), "--supervised-epochs", "-1"]) == 2
    assert "supervised_epochs must be >= 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):      # argparse: the two flags contradict each other
        main(["probe", "--checkpoint", str(run), "--no-supervised", "--supervised-epochs", "2"])


def test_cached_probe_reuses_only_when_newer_than_checkpoint(tmp_path, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    (run / CHECKPOINT).write_bytes(b"weights")
    (run / "config.json").write_text(json.dumps({"modality": "image", "profile": "ci"}))
    epochs = PROBES.supervised_epochs["image"]
    cached = ProbeResult([task_result(supervised=0.5)], {"readout": READOUT}, str(data_root()))
    cached.main.supervised["epochs"] = epochs
    (run / "probe.json").write_text(json.dumps(cached.to_json()))
    calls = []
    monkeypatch.setattr(probe_mod, "run_probe", lambda d, root=None, **kw: calls.append(Path(d)) or {"fresh": True})
    t = 1_700_000_000
    os.utime(run / CHECKPOINT, (t, t))
    os.utime(run / "probe.json", (t + 10, t + 10))
    logs = []
    assert probe_mod.cached_probe(run, log=logs.append) == cached and calls == []
    assert "reusing" in logs[0]
    os.utime(run / "probe.json", (t, t))                               # same age: still valid
    assert probe_mod.cached_probe(run, log=logs.append) == cached and calls == []
    os.utime(run / CHECKPOINT, (t + 20, t + 20))                       # retrained after the probe
    assert probe_mod.cached_probe(run, log=logs.append) == {"fresh": True} and calls == [run]
    # a probe made without the supervised reference (probe --no-supervised), or with other epochs
    # (probe --supervised-epochs), is not reused by the tour
    for other in (None, {"epochs": epochs + 1}):
        (run / "probe.json").write_text(json.dumps({**cached.to_json(), "supervised": other}))
        os.utime(run / "probe.json", (t + 30, t + 30))
        calls.clear()
        assert probe_mod.cached_probe(run, log=logs.append) == {"fresh": True} and calls == [run]
    # a probe made with another readout (e.g. before every source shared one) is not reused either
    for config in ({}, {"readout": {**READOUT, "segments": SEGMENTS + 1}}):
        (run / "probe.json").write_text(json.dumps({**cached.to_json(), "probe_config": config}))
        os.utime(run / "probe.json", (t + 30, t + 30))
        calls.clear()
        assert probe_mod.cached_probe(run, log=logs.append) == {"fresh": True} and calls == [run]


def test_knn_in_chunks_equals_knn_at_once():
    g = np.random.default_rng(3)
    x_tr, x_te = g.normal(size=(300, 16)), g.normal(size=(257, 16))
    y_tr, y_te = g.integers(0, 5, 300), g.integers(0, 5, 257)
    at_once = knn_accuracy(x_tr, y_tr, x_te, y_te, k=7, chunk=10_000)
    assert knn_accuracy(x_tr, y_tr, x_te, y_te, k=7, chunk=16) == at_once  # 257 = 16 chunks + 1 point
    assert knn_accuracy(x_tr, y_tr, x_te, y_te, k=7, chunk=1) == at_once
