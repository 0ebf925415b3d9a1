"""Audio pretraining data: every training clip of every source exactly once, and nothing of a
validation or testing split (by path, by content or by speaker); the held-out set; the record."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from d2v_lab.data import load_fsdd, load_speech_commands
from d2v_lab.train.inputs import (
    audio_inputs,
    audio_pretraining_clips,
    file_digest,
    fsdd_speaker_splits,
    pretraining_data,
)
from d2v_lab.train.profiles import get_profile

from builders import write_wav

V2, V1 = "speech_commands_v0.02", "speech_commands_v0.01"


class Clips:
    """Writes clips that are all different (a new tone and length for each) unless copied on purpose."""

    def __init__(self, root):
        self.root, self.n = root, 0

    def write(self, rel: str, rate: int = 16000):
        self.n += 1
        return write_wav(self.root / rel, seconds=0.3 + 0.01 * self.n, rate=rate, freq=150.0 + 37.0 * self.n)

    def copy(self, src: str, dst: str):
        (self.root / dst).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.root / src, self.root / dst)


def lists(clips: Clips, version: str, validation: list[str], testing: list[str]):
    folder = clips.root / "SpeechCommands" / version
    (folder / "validation_list.txt").write_text("".join(f"{c}\n" for c in validation))
    (folder / "testing_list.txt").write_text("".join(f"{c}\n" for c in testing))


@pytest.fixture
def audio_root(tmp_path, monkeypatch):
    """Two Speech Commands versions and FSDD, with every kind of clip pretraining must leave out.

    v0.02  training: aaa, bbb x (yes, no, cat) = 6 clips + 1 byte-identical copy (yes/aaa take 1);
           validation: ccc x 3; testing: ddd x 3.
    v0.01  training: eee x (yes, no) = 2 new clips; aaa's yes = a copy of v0.02's (another version,
           same bytes); fff's yes = a copy of v0.02 testing's ddd yes (a test clip under another name);
           ddd's no = a new recording of a speaker who is in v0.02's testing split;
           validation: ggg cat; testing: hhh cat.
    FSDD   alice, bob, carol x 10 digits x 2 takes, all different: train = alice, the probe's
           validation voice = bob, test = carol.
    Expected pretraining set: 6 + 2 + 20 = 28 clips; dropped: 1 duplicate in v0.02, 1 duplicate
    across versions, 1 copy of a held-out clip, 1 clip of a held-out speaker.
    """
    root = tmp_path / "data"
    c = Clips(root)
    sc2, sc1 = f"SpeechCommands/{V2}", f"SpeechCommands/{V1}"
    for speaker in ("aaa", "bbb", "ccc", "ddd"):
        for word in ("yes", "no", "cat"):
            c.write(f"{sc2}/{word}/{speaker}_nohash_0.wav")
    c.copy(f"{sc2}/yes/aaa_nohash_0.wav", f"{sc2}/yes/aaa_nohash_1.wav")
    lists(c, V2, [f"{w}/ccc_nohash_0.wav" for w in ("cat", "no", "yes")],
          [f"{w}/ddd_nohash_0.wav" for w in ("cat", "no", "yes")])
    c.write(f"{sc1}/yes/eee_nohash_0.wav")
    c.write(f"{sc1}/no/eee_nohash_0.wav")
    c.copy(f"{sc2}/yes/aaa_nohash_0.wav", f"{sc1}/yes/aaa_nohash_0.wav")
    c.copy(f"{sc2}/yes/ddd_nohash_0.wav", f"{sc1}/yes/fff_nohash_0.wav")
    c.write(f"{sc1}/no/ddd_nohash_0.wav")
    c.write(f"{sc1}/cat/ggg_nohash_0.wav")
    c.write(f"{sc1}/cat/hhh_nohash_0.wav")
    lists(c, V1, ["cat/ggg_nohash_0.wav"], ["cat/hhh_nohash_0.wav"])
    for speaker in ("alice", "bob", "carol"):
        for digit in range(10):
            for take in range(2):
                c.write(f"FSDD/recordings/{digit}_{speaker}_{take}.wav", rate=8000)
    monkeypatch.setenv("D2V_LAB_DATA", str(root))
    return root


def held_out_clips(root):
    """Every clip of a validation or testing split and of FSDD's validation and test speakers."""
    paths = [p for v in (V2, V1) for split in ("validation", "testing")
             for p in load_speech_commands(split, root, version=v).paths]
    fsdd = load_fsdd("all", root)
    return paths + [p for p, s in zip(fsdd.paths, fsdd.speakers) if s in ("bob", "carol")]


def test_audio_pretraining_takes_every_training_clip_once_and_nothing_held_out(audio_root):
    clips = audio_pretraining_clips(audio_root)
    names = {name: sorted(f"{p.parent.name}/{p.name}" for p in c.paths) for name, c in clips.train}
    assert names == {
        "speechcommands_v0.02/training": sorted(f"{w}/{s}_nohash_0.wav" for w in ("yes", "no", "cat") for s in ("aaa", "bbb")),
        "speechcommands_v0.01/training": ["no/eee_nohash_0.wav", "yes/eee_nohash_0.wav"],
        "fsdd/train speakers": sorted(f"recordings/{d}_alice_{t}.wav" for d in range(10) for t in range(2)),
    }
    assert clips.record["train_clips"] == {"speechcommands_v0.02/training": 6, "speechcommands_v0.01/training": 2,
                                           "fsdd/train speakers": 20}
    assert clips.record["dropped"] == {"duplicate": 2, "copy_of_held_out": 1, "held_out_speaker": 1}
    assert clips.record["fsdd_speakers"] == {"train": ["alice"], "val": ["bob"], "test": ["carol"]}
    taken = [p for _, c in clips.train for p in c.paths]
    digests = [file_digest(p) for p in taken]
    assert len(set(digests)) == len(digests) == 28                    # each recording once
    held = held_out_clips(audio_root)
    assert not set(taken) & set(held)                                  # no held-out file ...
    assert not set(digests) & {file_digest(p) for p in held}           # ... nor its bytes under another name
    # held-out loss: v0.02 testing + FSDD's test speaker, distinct recordings
    assert {name: len(c) for name, c in clips.heldout} == {"speechcommands_v0.02/testing": 3, "fsdd/test speaker": 20}
    small = audio_pretraining_clips(audio_root, max_heldout=5)
    assert {name: len(c) for name, c in small.heldout} == {"speechcommands_v0.02/testing": 1, "fsdd/test speaker": 4}
    without = audio_pretraining_clips(audio_root, use_fsdd=False)
    assert without.record["train_clips"] == {"speechcommands_v0.02/training": 6, "speechcommands_v0.01/training": 2}
    assert [name for name, _ in without.heldout] == ["speechcommands_v0.02/testing"]


def test_pretraining_data_audio_is_the_log_mel_of_exactly_those_clips(audio_root):
    cfg = get_profile("audio", "ci").with_overrides(["data.max_examples=0"])
    data = pretraining_data(cfg, audio_root, progress=False)
    clips = audio_pretraining_clips(audio_root)
    assert data.train.shape == (28, 64, 100) and data.heldout.shape == (23, 64, 100)
    expected = torch.cat([audio_inputs(c, progress=False) for _, c in clips.train])
    assert torch.equal(data.train, expected)
    # no row of the training tensor is the log-mel of a held-out clip
    held = load_speech_commands("testing", audio_root, version="v0.02")
    held_rows = {r.numpy().tobytes() for r in audio_inputs(held, progress=False)}
    assert not {r.numpy().tobytes() for r in data.train} & held_rows
    assert data.sources["n_train"] == 28 and data.sources["n_heldout"] == 23
    assert data.sources["dropped"]["duplicate"] == 2
    capped = pretraining_data(cfg.with_overrides(["data.max_examples=7"]), audio_root, progress=False)
    assert torch.equal(capped.train, expected[:7])                      # the first 7, as for every modality


def test_fsdd_speaker_splits_follow_load_fsdd(audio_root):
    roles = fsdd_speaker_splits(audio_root)
    assert roles["test"] == sorted(set(load_fsdd("test", audio_root).speakers)) == ["carol"]
    assert roles["train"] + roles["val"] == sorted(set(load_fsdd("train", audio_root).speakers))


def test_audio_pretraining_clips_on_the_shared_data(shared_root):
    """README section 5: v0.02 training holds 37 byte-identical copies; v0.01's training clips share
    no bytes with v0.02's; FSDD's training speakers are 3 x 500 clips."""
    clips = audio_pretraining_clips(shared_root)
    assert clips.record["train_clips"] == {"speechcommands_v0.02/training": 2469 - 37,
                                           "speechcommands_v0.01/training": 175, "fsdd/train speakers": 1500}
    assert clips.record["dropped"] == {"duplicate": 37, "copy_of_held_out": 0, "held_out_speaker": 0}
    assert clips.record["fsdd_speakers"] == {"train": ["george", "jackson", "nicolas"], "val": ["theo"],
                                             "test": ["yweweler"]}
    assert sum(len(c) for _, c in clips.heldout) == 512
    assert np.all([len(c) > 200 for _, c in clips.heldout])           # both held-out sources are sampled
