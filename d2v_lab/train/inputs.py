"""Model-ready tensors from the datasets: what each modality's adapter eats.

image: uint8 (N, 3, 32, 32) pixels;  text: int64 (N, seq_len) BPE ids;  audio: float (N, 64, 100) log-mel.
Pretraining uses training splits only; each modality also gets a held-out set for the held-out
masked-prediction loss (never used for any update): CIFAR-10 test images, TinyStories "valid" stories,
and for audio Speech Commands' testing clips plus FSDD's held-out speaker.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from tokenizers import Tokenizer
from tqdm.auto import tqdm

from d2v_lab.data import ClipSet, LogMelConfig, load_cifar10, load_fsdd, load_speech_commands, load_stories, log_mel
from d2v_lab.data.fsdd import find_fsdd
from d2v_lab.data.root import DatasetNotFound
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


def pretraining_data(cfg: RunConfig, root=None, progress: bool = True) -> PretrainData:
    if cfg.modality == "image":
        train, _ = image_inputs("train", root)
        heldout, _ = image_inputs("test", root)
        data = PretrainData(train, heldout[:512], sources={"train": "cifar10/train", "heldout": "cifar10/test"})
    elif cfg.modality == "text":
        tok = load_tokenizer(root, cfg.data.vocab_size, max_stories=cfg.data.max_stories)
        train = pack_windows(load_stories("train", root)[: cfg.data.max_stories], tok, cfg.data.seq_len)
        heldout = pack_windows(load_stories("valid", root), tok, cfg.data.seq_len)
        data = PretrainData(train, heldout[:512], tok, {"train": "tinystories/train", "heldout": "tinystories/valid"})
    else:
        parts = [load_speech_commands("training", root), load_speech_commands("validation", root)]
        held = [load_speech_commands("testing", root)]
        names = ["speechcommands/training+validation"]
        if cfg.data.use_fsdd and _has_fsdd(root):
            parts.append(load_fsdd("train", root))
            held.append(load_fsdd("test", root))
            names.append("fsdd/train speakers")
        train = torch.cat([audio_inputs(c, progress) for c in parts])
        heldout = torch.cat([audio_inputs(c, progress) for c in held])
        data = PretrainData(train, heldout[:512], sources={"train": " + ".join(names),
                                                           "heldout": "speechcommands/testing + fsdd/test speaker"})
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
