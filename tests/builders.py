"""Builders of tiny datasets in each dataset's canonical on-disk layout, for unit tests."""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import soundfile as sf

CIFAR_CLASSES = [b"airplane", b"automobile", b"bird", b"cat", b"deer",
                 b"dog", b"frog", b"horse", b"ship", b"truck"]


def write_cifar(root: Path, n_train_batches=2, per_batch=20, n_test=10, seed=0) -> Path:
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": CIFAR_CLASSES, b"num_cases_per_batch": per_batch, b"num_vis": 3072}, f)

    def batch(n, name):
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [int(i % 10) for i in range(n)]
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": data, b"labels": labels, b"batch_label": name.encode(),
                         b"filenames": [b"x.png"] * n}, f)
    for i in range(1, n_train_batches + 1):
        batch(per_batch, f"data_batch_{i}")
    batch(n_test, "test_batch")
    return folder


def write_stories(path: Path, stories: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{s}\n<|endoftext|>\n" for s in stories), encoding="utf-8")
    return path


ANIMAL_STORIES = [
    "Once upon a time, a little dog named Max liked to run in the park. Max barked at the birds.",
    "Lily had a cat. The cat was soft and white. It liked to sleep in the sun and purr.",
    "A big red truck drove down the road. Tom waved at the truck and smiled.",
    "One day, a frog jumped into the pond. The frog said ribbit and swam away happily.",
]


def write_tinystories(root: Path, n_train=40, n_valid=8) -> Path:
    folder = root / "TinyStories"
    train = [f"{ANIMAL_STORIES[i % 4]} This is story number {i}." for i in range(n_train)]
    valid = [f"{ANIMAL_STORIES[i % 4]} A held-out story {i}." for i in range(n_valid)]
    write_stories(folder / "TinyStories-train.txt", train)
    write_stories(folder / "TinyStories-valid.txt", valid)
    return folder


def write_wav(path: Path, seconds=0.5, rate=16000, freq=440.0, subtype="PCM_16", channels=1):
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    x = 0.3 * np.sin(2 * np.pi * freq * t)
    if channels > 1:
        x = np.stack([x] * channels, axis=1)
    sf.write(str(path), x, rate, subtype=subtype)
    return path


def write_speech_commands(root: Path, words=("cat", "dog", "yes"), speakers=("aaa", "bbb", "ccc", "ddd"),
                          version="speech_commands_v0.01") -> Path:
    folder = root / "SpeechCommands" / version
    for wi, w in enumerate(words):
        for si, s in enumerate(speakers):
            write_wav(folder / w / f"{s}_nohash_0.wav", seconds=0.6 + 0.1 * si, freq=200 + 100 * wi)
    write_wav(folder / "_background_noise_" / "white_noise.wav", seconds=1.5)
    # speaker ccc is validation, ddd is testing (speaker-disjoint, as the official lists are)
    (folder / "validation_list.txt").write_text("".join(f"{w}/ccc_nohash_0.wav\n" for w in words))
    (folder / "testing_list.txt").write_text("".join(f"{w}/ddd_nohash_0.wav\n" for w in words))
    return folder


def write_fsdd(root: Path, speakers=("alice", "bob", "carol"), takes=2) -> Path:
    folder = root / "FSDD" / "recordings"
    for d in range(10):
        for s in speakers:
            for t in range(takes):
                write_wav(folder / f"{d}_{s}_{t}.wav", seconds=0.3 + 0.05 * d, rate=8000, freq=300 + 50 * d)
    return folder
