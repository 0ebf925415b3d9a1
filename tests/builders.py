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


# --- result objects with neutral numbers, for tests of what reads them ------------------------------

def task_result(task="cifar10", modality="image", chance=0.1, linear=(0.5, 0.3, 0.3), knn=(0.4, 0.2, 0.2),
                supervised=None, n_test=100, note="", layer=2, pool="mean"):
    """A TaskResult: ``linear`` / ``knn`` = (pretrained, random_init, raw_input); ``supervised`` an
    accuracy, from which the discrimination check follows as run_probe computes it."""
    from d2v_lab.evaluate.results import Scores, TaskResult, discrimination
    discriminates, margin = discrimination(supervised, linear[1])
    return TaskResult(modality=modality, task=task, checkpoint="run", n_train=10 * n_test, n_val=n_test,
                      n_test=n_test, chance=chance, majority=chance, classes=["a", "b"], linear=Scores(*linear),
                      knn=Scores(*knn), knn_k=10, supervised=None if supervised is None else {"accuracy": supervised,
                                                                                             "epochs": 1},
                      selected={"pretrained": {"layer": layer, "pool": pool}}, per_layer=[], pool=pool, note=note,
                      discriminates=discriminates, discrimination_margin=margin)


def pair_result(**sections):
    """A PairResult with neutral numbers; each keyword replaces fields of one section, e.g.
    ``pair_result(retrieval_raw={"observed": 0.5}, verdict={"shared_space": True, ...})``."""
    from d2v_lab.crossmodal.results import pair_from_json
    base = {"pair": "a-b", "sources": ["a", "b"], "n_pairs": 200, "concepts": {"c": 200},
            "mutual_knn": {"best": 0.1, "best_layers": [0, 0], "null_p95": 0.2, "chance": 0.05, "k": 10,
                           "all_layer_pairs": [[0.1]]},
            "cka": {"observed": 0.1, "null_p95": 0.2},
            "retrieval_raw": {"observed": 0.1, "chance": 0.1, "permutation_p95": 0.2, "rotation_p95": 0.2,
                              "common_dim": 32},
            "procrustes": {"retrieval_before": 0.1, "retrieval_after": 0.1, "pair_cosine_before": 0.0,
                           "pair_cosine_after": 0.0, "chance": 0.1, "n_fit": 100.0, "n_eval": 100.0, "null_p95": 0.2},
            "association": {"retrieval": 0.1, "retrieval_baseline": 0.1, "pair_cosine": 0.0, "chance": 0.1,
                            "final_loss": 1.0, "n_fit": 100.0, "n_eval": 100.0, "null_p95": 0.2},
            "rsa": {"observed": 0.0, "p95": 0.5, "n_concepts": 5, "interpretable": True},
            "verdict": {"shared_space": False, "alignable": False,
                        "structure": {"mutual_knn": False, "cka": False, "rsa": False}, "text": []}}
    merged = ("mutual_knn", "cka", "retrieval_raw", "procrustes", "association", "rsa", "verdict")
    for key, value in sections.items():
        base[key] = {**base[key], **value} if key in merged and value is not None else value
    return pair_from_json(base)
