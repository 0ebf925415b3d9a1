"""Model-ready tensors from the datasets: what each modality's adapter eats.

image: uint8 (N, 3, 32, 32) pixels;  text: int64 (N, seq_len) BPE ids;  audio: float (N, 64, 100) log-mel.
Pretraining uses training splits only; each modality also gets a held-out set for the held-out
masked-prediction loss (never used for any update): CIFAR-10 test images, TinyStories "valid" stories,
and for audio Speech Commands' testing clips plus FSDD's held-out speaker.

Audio pretrains on every audio training clip there is: the training split of each Speech Commands
version (v0.02 and v0.01) and FSDD's training speakers, each distinct recording once (SHA-256 of the
file bytes), and nothing of a validation or testing split, nor of a speaker the probes test on.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer
from tqdm.auto import tqdm

from d2v_lab.data import ClipSet, LogMelConfig, load_cifar10, load_fsdd, load_speech_commands, load_stories, log_mel
from d2v_lab.data.fsdd import find_fsdd
from d2v_lab.data.root import DatasetNotFound
from d2v_lab.data.speech_commands import versions_found
from d2v_lab.data.tokenizer import CLS_ID, SPECIAL_TOKENS, load_tokenizer, pack_windows

from .config import RunConfig


@dataclass
class PretrainData:
    train: torch.Tensor
    heldout: torch.Tensor
    tokenizer: Tokenizer | None = None
    sources: dict = field(default_factory=dict)   # what went in, for the run's record


def image_inputs(split: str, root=None) -> tuple[torch.Tensor, np.ndarray]:
    s = load_cifar10(split, root)
    return torch.from_numpy(s.images), s.labels


def audio_inputs(clips: ClipSet, progress: bool = True, cfg: LogMelConfig = LogMelConfig(),
                 chunk: int = 512) -> torch.Tensor:
    """(N, n_mels, n_frames) log-mel features of every clip, read and transformed ``chunk`` clips at a
    time: only one chunk of waveforms is ever in memory (the full Speech Commands is 4 GB of float32
    audio at 16 kHz; its log-mels are 1.7 GB)."""
    parts = [torch.zeros(0, cfg.n_mels, cfg.n_frames)]
    with tqdm(total=len(clips), desc="reading wavs -> log-mel", disable=not progress, leave=False) as bar:
        for start in range(0, len(clips), chunk):
            part = clips.subset(np.arange(start, min(start + chunk, len(clips))))
            parts.append(log_mel(torch.from_numpy(part.waveforms(progress=False)), cfg))
            bar.update(len(part))
    return torch.cat(parts)


def _has_fsdd(root) -> bool:
    try:
        find_fsdd(root)
        return True
    except DatasetNotFound:
        return False


HELDOUT_CLIPS = 512   # the held-out loss reads at most this many inputs (every modality)


def file_digest(path) -> str:
    """SHA-256 of a file's bytes: the same recording saved under two names has one digest."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def fsdd_speaker_splits(root=None) -> dict[str, list[str]]:
    """FSDD's speakers by role, one rule for pretraining and the probe (so they cannot disagree):
    test = the held-out speaker (``load_fsdd``'s, the alphabetically last), val = the last of the
    others (the probe's validation voice), train = the rest."""
    test = sorted(set(load_fsdd("test", root).speakers))
    others = sorted(set(load_fsdd("train", root).speakers))
    if len(others) < 2:
        raise ValueError(f"FSDD needs >= 3 speakers (train, validation and test voices), found {others} + {test}")
    return {"train": others[:-1], "val": others[-1:], "test": test}


def _speaker_subset(clips: ClipSet, speakers) -> ClipSet:
    return clips.subset([i for i, s in enumerate(clips.speakers) if s in set(speakers)])


@dataclass
class AudioClips:
    """What audio pretraining reads, before any wav is decoded: named parts of the training and the
    held-out clips, and the record of how they were chosen (``PretrainData.sources``)."""
    train: list[tuple[str, ClipSet]]
    heldout: list[tuple[str, ClipSet]]
    record: dict


def _spread(n: int, m: int) -> np.ndarray:
    """min(n, m) distinct indices in [0, n), evenly spread (every part of a concatenation is sampled)."""
    return np.arange(n) if n <= m else (np.arange(m) * n) // m


def audio_pretraining_clips(root=None, use_fsdd: bool = True, max_heldout: int = HELDOUT_CLIPS) -> AudioClips:
    """Training clips: the training split of every Speech Commands version found (v0.02, then v0.01)
    and, with ``use_fsdd``, FSDD's training speakers (not the probe's validation or test voice).
    Held-out clips (the held-out loss only): the newest version's testing split and FSDD's test speaker,
    at most ``max_heldout`` spread over both.

    Left out of training, and counted in ``record["dropped"]``:
      duplicate          a byte-identical copy of a clip already taken (v0.02 has 37 in its training
                         split; a clip in two versions is taken once, from the newest);
      copy_of_held_out   byte-identical to a validation or testing clip of any version, or to a clip
                         of FSDD's validation or test speaker;
      held_out_speaker   a Speech Commands speaker who has a clip in any version's validation or
                         testing split: the keyword probe's speakers stay unseen in pretraining.
    """
    versions = versions_found(root) or [None]            # none found: the loader says where it looked
    held_digests, held_speakers = set(), set()
    for v in versions:
        for split in ("validation", "testing"):
            clips = load_speech_commands(split, root, version=v)
            held_digests.update(file_digest(p) for p in clips.paths)
            held_speakers.update(clips.speakers)
    candidates = [(f"speechcommands_{v}/training", load_speech_commands("training", root, version=v))
                  for v in versions]
    heldout = [(f"speechcommands_{versions[0]}/testing", load_speech_commands("testing", root, version=versions[0]))]
    fsdd = use_fsdd and _has_fsdd(root)
    if fsdd:
        roles, clips = fsdd_speaker_splits(root), load_fsdd("all", root)
        for role in ("val", "test"):
            held_digests.update(file_digest(p) for p in _speaker_subset(clips, roles[role]).paths)
        candidates.append(("fsdd/train speakers", _speaker_subset(clips, roles["train"])))
        heldout.append(("fsdd/test speaker", _speaker_subset(clips, roles["test"])))

    seen, dropped, train = set(), {"duplicate": 0, "copy_of_held_out": 0, "held_out_speaker": 0}, []
    for name, clips in candidates:
        keep = []
        for i, (path, speaker) in enumerate(zip(clips.paths, clips.speakers)):
            digest = file_digest(path)
            reason = ("copy_of_held_out" if digest in held_digests else
                      "held_out_speaker" if name.startswith("speechcommands") and speaker in held_speakers else
                      "duplicate" if digest in seen else None)
            if reason:
                dropped[reason] += 1
            else:
                seen.add(digest)
                keep.append(i)
        train.append((name, clips.subset(keep)))

    # held-out: distinct clips only (v0.02's testing split holds 21 copies), then an even spread
    distinct, seen_held = [], set()
    for name, clips in heldout:
        keep = []
        for i, path in enumerate(clips.paths):
            digest = file_digest(path)
            if digest not in seen_held:
                seen_held.add(digest)
                keep.append(i)
        distinct.append((name, clips.subset(keep)))
    sizes = np.cumsum([0] + [len(c) for _, c in distinct])
    pick = _spread(int(sizes[-1]), max_heldout)
    heldout = [(name, clips.subset(pick[(pick >= lo) & (pick < hi)] - lo))
               for (name, clips), lo, hi in zip(distinct, sizes[:-1], sizes[1:])]
    record = {"train": " + ".join(name for name, _ in train),
              "heldout": " + ".join(name for name, _ in heldout),
              "train_clips": {name: len(c) for name, c in train},
              "heldout_clips": {name: len(c) for name, c in heldout},
              "dropped": dropped}
    if fsdd:
        record["fsdd_speakers"] = roles
    return AudioClips(train, heldout, record)


def pretraining_data(cfg: RunConfig, root=None, progress: bool = True) -> PretrainData:
    """Training and held-out inputs of ``cfg``'s modality; ``sources`` records what went in.
    ``cfg.data.max_examples`` keeps the first N training examples (audio: before any wav is read)."""
    if cfg.modality == "image":
        train, _ = image_inputs("train", root)
        heldout, _ = image_inputs("test", root)
        data = PretrainData(train, heldout[:HELDOUT_CLIPS], sources={"train": "cifar10/train", "heldout": "cifar10/test"})
    elif cfg.modality == "text":
        tok = load_tokenizer(root, cfg.data.vocab_size, max_stories=cfg.data.max_stories)
        train = pack_windows(load_stories("train", root)[: cfg.data.max_stories], tok, cfg.data.seq_len)
        heldout = pack_windows(load_stories("valid", root), tok, cfg.data.seq_len)
        data = PretrainData(train, heldout[:HELDOUT_CLIPS], tok,
                            {"train": "tinystories/train", "heldout": "tinystories/valid"})
    else:
        clips = audio_pretraining_clips(root, cfg.data.use_fsdd)
        parts, budget = [], cfg.data.max_examples or sum(len(c) for _, c in clips.train)
        for _, c in clips.train:              # the first max_examples clips, without reading the rest
            parts.append(c.subset(np.arange(min(len(c), budget))))
            budget -= len(parts[-1])
        train = torch.cat([audio_inputs(c, progress) for c in parts])
        heldout = torch.cat([audio_inputs(c, progress) for _, c in clips.heldout])
        data = PretrainData(train, heldout, sources=clips.record)
    if cfg.data.max_examples:
        data.train = data.train[: cfg.data.max_examples]
    data.sources.update(n_train=len(data.train), n_heldout=len(data.heldout))
    return data


def example_samples(root=None, vocab_size: int = 1024, seq_len: int = 64, index: int = 0) -> dict:
    """One real sample per modality for the masking pictures: a CIFAR-10 test image, the log-mel of a
    Speech Commands test clip, and the first tokens of a held-out story (ids and token strings)."""
    cifar = load_cifar10("test", root)
    clips = load_speech_commands("testing", root)
    logmel = audio_inputs(clips.subset([index % len(clips)]), progress=False)[0]
    tok = load_tokenizer(root, vocab_size)
    story = load_stories("valid", root)[index]
    ids = [CLS_ID] + tok.encode(story, add_special_tokens=False).ids[: seq_len - 1]
    return {"image": cifar.images[index], "audio": logmel,
            "text": (torch.tensor(ids), [tok.id_to_token(i) for i in ids]),
            "labels": {"image": cifar.classes[int(cifar.labels[index])],
                       "audio": clips.classes[int(clips.labels[index % len(clips)])]}}


def synthetic_batch(cfg: RunConfig, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """A random batch shaped like ``cfg``'s real input (uint8 images, log-mel-like audio, BPE ids
    starting with [CLS]): for timing and checking the model without loading data."""
    if cfg.modality == "image":
        return torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8, generator=generator)
    if cfg.modality == "audio":
        return torch.randn(batch, 64, 100, generator=generator)
    x = torch.randint(len(SPECIAL_TOKENS), cfg.data.vocab_size, (batch, cfg.data.seq_len), generator=generator)
    x[:, 0] = CLS_ID
    return x
