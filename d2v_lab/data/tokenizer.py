"""A byte-level BPE tokenizer for TinyStories, trained with Hugging Face ``tokenizers`` and cached.

The tokenizer is trained on the training stories only, lower-cases its input by default (the shared
data mixes cased and lower-cased stories; one vocabulary for both doubles what the model sees), and is
cached as JSON in the user cache (``$D2V_LAB_CACHE``, else ``$XDG_CACHE_HOME/d2v_lab``, else
``~/.cache/d2v_lab``), in a subfolder per data root; never in the data folder itself. The cache key
holds the vocabulary size, the case setting and a fingerprint of the training files, so new data
retrains it and the same data reuses it.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from .root import DataError, cache_dir_for, cache_not_writable, data_root, writable_cache_dir
from .tinystories import find_tinystories, read_stories, story_files

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID = range(len(SPECIAL_TOKENS))


def train_bpe(stories: list[str], vocab_size: int = 4096, lowercase: bool = True) -> Tokenizer:
    """Train a byte-level BPE on ``stories``; the special tokens get ids 0..4 in SPECIAL_TOKENS order."""
    if vocab_size <= len(SPECIAL_TOKENS) + 256:
        raise ValueError(f"vocab_size must exceed {len(SPECIAL_TOKENS) + 256} "
                         f"(special tokens + the 256-byte alphabet), got {vocab_size}")
    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    norms = [normalizers.NFKC()] + ([normalizers.Lowercase()] if lowercase else [])
    tok.normalizer = normalizers.Sequence(norms)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(stories, trainer=trainer, length=len(stories))
    return tok


def _fingerprint(files: list[Path]) -> str:
    """Cheap content fingerprint: names, sizes and the first MiB of each file (the full V1 train
    file is 1.9 GB; hashing it all on every load would cost more than training the tokenizer)."""
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode())
        h.update(str(p.stat().st_size).encode())
        with open(p, "rb") as f:
            h.update(f.read(1 << 20))
    return h.hexdigest()[:12]


def load_tokenizer(root=None, vocab_size: int = 4096, lowercase: bool = True,
                   max_stories: int = 200_000) -> Tokenizer:
    """The cached tokenizer for the training stories under ``root``, trained on first use."""
    folder = find_tinystories(root)
    files = story_files(folder)["train"]
    if not files:
        raise DataError(f"{folder}: no TinyStories training file to train a tokenizer on; "
                        f"add TinyStories-train.txt from the official download")
    case = "lc" if lowercase else "cased"
    name = f"tokenizer-bpe{vocab_size}-{case}-{max_stories}-{_fingerprint(files)}.json"
    path = cache_dir_for(data_root(root)) / name  # per data root, in the user cache (see root.py)
    if path.is_file():
        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises a bare Exception for unreadable or invalid JSON
            raise DataError(f"{path}: cached tokenizer is unreadable ({e}); "
                            f"delete it and it is retrained at the next use") from e
    else:
        # check the cache can be written BEFORE training: on the full data training takes minutes
        cache = writable_cache_dir(data_root(root))
        stories = [s for p in files for s in read_stories(p)][:max_stories]
        tok = train_bpe(stories, vocab_size, lowercase)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        try:
            tok.save(str(tmp))
            os.replace(tmp, path)  # atomic: a concurrent reader never sees half a file
        except Exception as e:  # tokenizers raises a bare Exception for I/O errors (a full disk, ...)
            tmp.unlink(missing_ok=True)
            raise cache_not_writable(cache, str(e)) from e
    if [tok.token_to_id(t) for t in SPECIAL_TOKENS] != list(range(len(SPECIAL_TOKENS))):
        raise DataError(f"{path}: cached tokenizer lacks the special tokens {SPECIAL_TOKENS}; "
                        f"delete it and it is retrained at the next use")
    return tok


def pack_windows(stories: list[str], tok: Tokenizer, seq_len: int) -> torch.Tensor:
    """Pretraining sequences: all stories as one token stream (separated by [SEP]), cut into windows
    of ``seq_len`` that each start with [CLS] (RoBERTa's "full sentences" packing: no padding)."""
    stream: list[int] = []
    for enc in tok.encode_batch(stories, add_special_tokens=False):
        stream.extend(enc.ids)
        stream.append(SEP_ID)
    body = seq_len - 1
    n = len(stream) // body
    if n == 0:
        raise DataError(f"{len(stream)} tokens are fewer than one window of {seq_len}")
    windows = torch.tensor(stream[: n * body], dtype=torch.long).view(n, body)
    return torch.cat([torch.full((n, 1), CLS_ID, dtype=torch.long), windows], dim=1)


def padded_row(ids: list[int], seq_len: int) -> list[int]:
    """One model input: [CLS] + the first ``seq_len - 1`` of ``ids``, padded with [PAD] to ``seq_len``."""
    row = [CLS_ID] + list(ids[: seq_len - 1])
    return row + [PAD_ID] * (seq_len - len(row))


def encode_padded(texts: list[str], tok: Tokenizer, seq_len: int) -> torch.Tensor:
    """One sequence per text: [CLS] + tokens, truncated to ``seq_len``, padded with [PAD]."""
    rows = [padded_row(enc.ids, seq_len) for enc in tok.encode_batch(texts, add_special_tokens=False)]
    return torch.tensor(rows, dtype=torch.long).view(-1, seq_len)
