"""Integration: the real shared data (D2V_LAB_DATA) has exactly the counts its README states.
These tests FAIL when the data is missing (see the shared_root fixture): CI must not pass vacuously."""
from __future__ import annotations

import json
from collections import Counter

import numpy as np

from d2v_lab.cli import main
from d2v_lab.data import load_cifar10, load_fsdd, load_speech_commands, load_stories
from d2v_lab.data.tinystories import read_stories


def test_cifar10_counts(shared_root):
    train, test = load_cifar10("train", shared_root), load_cifar10("test", shared_root)
    assert train.images.shape == (10_000, 3, 32, 32) and test.images.shape == (2_000, 3, 32, 32)
    assert Counter(train.labels.tolist()) == {c: 1000 for c in range(10)}
    assert Counter(test.labels.tolist()) == {c: 200 for c in range(10)}
    assert train.classes == ("airplane", "automobile", "bird", "cat", "deer",
                             "dog", "frog", "horse", "ship", "truck")


def test_tinystories_counts(shared_root):
    folder = shared_root / "TinyStories"
    expected = {"TinyStories-train.txt": 462, "TinyStories-valid.txt": 75,
                "TinyStories-train-lowercase.txt": 2033, "TinyStories-valid-lowercase.txt": 500}
    for name, n in expected.items():
        assert len(read_stories(folder / name)) == n, name
    assert len(load_stories("train", shared_root)) == 2495
    assert len(load_stories("valid", shared_root)) == 575
    first = read_stories(folder / "TinyStories-train.txt")[0]
    assert first.startswith("One day, a little girl named Lily found a needle in her room")


KEYWORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")


def test_speech_commands_v002_counts(shared_root):
    """v0.02 (the README's section 5) is what the loaders read by default."""
    splits = {s: load_speech_commands(s, shared_root) for s in ("training", "validation", "testing")}
    assert {s: len(c) for s, c in splits.items()} == {"training": 2469, "validation": 434, "testing": 559}
    assert len(splits["training"].classes) == 35 and "visual" in splits["training"].classes
    per_word = Counter(w for c in splits.values() for w in (c.classes[i] for i in c.labels))
    assert sum(per_word.values()) == 3462
    assert (per_word["yes"], per_word["down"], per_word["left"]) == (343, 304, 321)
    assert sum(per_word[k] for k in KEYWORDS) == 3136
    assert (per_word["bird"], per_word["cat"], per_word["dog"]) == (8, 8, 6)
    speakers = {s: set(c.speakers) for s, c in splits.items()}
    assert {s: len(v) for s, v in speakers.items()} == {"training": 127, "validation": 26, "testing": 27}
    assert not (speakers["training"] & speakers["testing"]) and not (speakers["training"] & speakers["validation"])
    assert not (speakers["validation"] & speakers["testing"])
    waves = splits["validation"].subset(range(0, 434, 40)).waveforms(progress=False)
    assert waves.shape == (11, 16000) and np.isfinite(waves).all() and np.abs(waves).max() <= 1.0


def test_speech_commands_v001_counts(shared_root):
    """v0.01 stays readable beside v0.02 (its bird/cat/dog clips feed the cross-modal pairs)."""
    splits = {s: load_speech_commands(s, shared_root, version="v0.01") for s in ("training", "validation", "testing")}
    assert {s: len(c) for s, c in splits.items()} == {"training": 175, "validation": 22, "testing": 42}
    assert len(splits["training"].classes) == 30
    per_word = Counter(w for c in splits.values() for w in (c.classes[i] for i in c.labels))
    assert (per_word["bird"], per_word["cat"], per_word["dog"]) == (7, 9, 7)
    assert sum(per_word.values()) == 239
    # the official lists are speaker-disjoint
    speakers = {s: set(c.speakers) for s, c in splits.items()}
    assert not (speakers["training"] & speakers["testing"]) and not (speakers["training"] & speakers["validation"])
    assert len(set().union(*speakers.values())) == 27
    waves = splits["testing"].waveforms(progress=False)
    assert waves.shape == (42, 16000) and np.isfinite(waves).all() and np.abs(waves).max() <= 1.0


def test_speech_commands_versions_share_no_speaker_across_splits(shared_root):
    """The README: no speaker is in two splits even when v0.01 and v0.02 are pooled."""
    pooled = {s: set(load_speech_commands(s, shared_root, version="v0.01").speakers)
              | set(load_speech_commands(s, shared_root, version="v0.02").speakers)
              for s in ("training", "validation", "testing")}
    assert not (pooled["training"] & pooled["testing"]) and not (pooled["training"] & pooled["validation"])
    assert not (pooled["validation"] & pooled["testing"])


def test_fsdd_counts(shared_root):
    clips = load_fsdd("all", shared_root)
    assert len(clips) == 2500
    assert sorted(set(clips.speakers)) == ["george", "jackson", "nicolas", "theo", "yweweler"]
    assert Counter(clips.labels.tolist()) == {d: 250 for d in range(10)}
    test = load_fsdd("test", shared_root)
    assert set(test.speakers) == {"yweweler"} and len(test) == 500
    waves = test.subset(range(0, 500, 50)).waveforms(progress=False)
    assert waves.shape == (10, 16000) and np.isfinite(waves).all()


def test_cli_data_info_json_matches_readme(shared_root, capsys):
    assert main(["data", "info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert {k: info["cifar10"][k] for k in ("train", "test")} == {"train": 10_000, "test": 2_000}
    assert (info["tinystories"]["train"], info["tinystories"]["valid"]) == (2495, 575)
    sc = info["speechcommands"]
    assert (sc["version"], sc["training"], sc["validation"], sc["testing"], len(sc["words"])) == \
        ("v0.02", 2469, 434, 559, 35)
    rows = {v: (s["training"], s["validation"], s["testing"], s["speakers"], len(s["words"]))
            for v, s in sc["versions"].items()}
    assert rows == {"v0.02": (2469, 434, 559, 180, 35), "v0.01": (175, 22, 42, 27, 30)}
    assert list(sc["versions"]) == ["v0.02", "v0.01"]          # newest first: the one read by default
    assert info["fsdd"]["clips"] == 2500 and len(info["fsdd"]["speakers"]) == 5
    assert "missing" not in info
