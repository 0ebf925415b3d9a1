"""Build a model from its RunConfig; save and load checkpoints safely.

A checkpoint (``DIR/checkpoint.pt``) holds the config, the step, the model (student, EMA teacher,
head/decoder) and the optimizer state: everything a resumed run needs to continue exactly. It is
written atomically (temp file + rename, so a crash never leaves half a file) and read with
``torch.load(weights_only=True)`` (no pickled code runs). The text tokenizer is saved beside it.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from tokenizers import Tokenizer

from d2v_lab.model.data2vec import Data2Vec
from d2v_lab.model.modalities import AudioAdapter, ImageAdapter, TextAdapter
from d2v_lab.model.transformer import Encoder

from .config import RunConfig, config_diff
from .runs import CHECKPOINT, TOKENIZER

FORMAT = 1
# settings that may change when a run is resumed: they do not change what is computed
RESUMABLE_CHANGES = ("train.log_every", "train.eval_every", "train.checkpoint_every", "train.device",
                     "train.threads", "train.compile")


class CheckpointError(Exception):
    """A checkpoint cannot be used for what was asked (other modality, other config, bad file)."""


def build_model(cfg: RunConfig) -> Data2Vec:
    dim, cls = cfg.encoder.dim, cfg.d2v.cls_loss > 0
    if cfg.modality == "image":
        adapter = ImageAdapter(dim, cfg.mask, cls_token=cls)
    elif cfg.modality == "text":  # text always starts with its [CLS] input token
        adapter = TextAdapter(dim, cfg.mask, cfg.data.vocab_size, cfg.data.seq_len)
    else:
        adapter = AudioAdapter(dim, cfg.mask, cls_token=cls, freq_warp=cfg.data.freq_warp,
                               time_stretch=cfg.data.time_stretch)
    return Data2Vec(adapter, Encoder(cfg.encoder), cfg.d2v)


def save_checkpoint(path: Path, cfg: RunConfig, step: int, model: Data2Vec,
                    optimizer: torch.optim.Optimizer | None = None, extra: dict | None = None) -> None:
    state = {"format": FORMAT, "modality": cfg.modality, "config": cfg.to_dict(), "step": step,
             "model": model.state_dict(), "optimizer": optimizer.state_dict() if optimizer else None,
             **(extra or {})}
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)  # atomic on POSIX: readers see the old file or the new one, never half
    finally:
        tmp.unlink(missing_ok=True)


def read_checkpoint(path: Path, map_location="cpu") -> dict:
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint there (run `d2v-lab pretrain` first)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated file, not a torch file, or unsafe content
        raise CheckpointError(f"{path}: not a readable d2v_lab checkpoint ({e})") from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a d2v_lab checkpoint of format {FORMAT}")
    return state


def check_compatible(state: dict, cfg: RunConfig, path: Path) -> None:
    """Refuse to continue a checkpoint with another modality or a config that changes the run. A
    setting added after the checkpoint was made takes its default, which is what the code did before."""
    if state["modality"] != cfg.modality:
        raise CheckpointError(f"{path} is a {state['modality']} checkpoint; cannot resume it as {cfg.modality}")
    saved = RunConfig.from_dict(state["config"]).to_dict()
    diff = [d for d in config_diff(saved, cfg.to_dict())
            if not d.startswith(RESUMABLE_CHANGES) and not d.startswith("profile")]
    if diff:
        raise CheckpointError(f"{path} was made with a different config; resuming would not continue the "
                              f"same run. Differences (checkpoint != now):\n  " + "\n  ".join(diff))


def load_run(run_dir: str | os.PathLike, modality: str | None = None,
             device: str = "cpu") -> tuple[Data2Vec, RunConfig, Tokenizer | None]:
    """A trained model (eval mode), its config and (text) its tokenizer, from a pretraining run folder."""
    run_dir = Path(run_dir)
    state = read_checkpoint(run_dir / CHECKPOINT, device)
    if modality is not None and state["modality"] != modality:
        raise CheckpointError(f"{run_dir}: holds a {state['modality']} model, not {modality}")
    cfg = RunConfig.from_dict(state["config"])
    model = build_model(cfg)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{run_dir}: weights do not fit the saved config ({e})") from e
    tok = Tokenizer.from_file(str(run_dir / TOKENIZER)) if cfg.modality == "text" else None
    return model.to(device).eval(), cfg, tok
