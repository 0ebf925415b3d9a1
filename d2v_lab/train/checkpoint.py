"""Build a model from its RunConfig; save and load checkpoints safely.

A checkpoint (``DIR/checkpoint.pt``) holds the config, the step, the model (student, EMA teacher,
head/decoder) and the optimizer state: everything a resumed run needs to continue exactly. It is
written atomically (temp file + rename, so a crash never leaves half a file) and read with
``torch.load(weights_only=True)`` (no pickled code runs). The text tokenizer is saved beside it.

It also holds a SHA-256 checksum of the model's and the optimizer's tensors, checked on every read:
torch's zip format does not check its own CRCs, so flipped bytes in a weight (a bad disk, a bad copy)
used to load and be probed without a word. Checkpoints saved before the checksum existed load as before.
"""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import torch
from tokenizers import Tokenizer

from d2v_lab.model.data2vec import Data2Vec
from d2v_lab.model.modalities import AudioAdapter, ImageAdapter, TextAdapter
from d2v_lab.model.transformer import Encoder

from .config import RunConfig, config_diff
from .runs import CHECKPOINT, TOKENIZER, write_failure

FORMAT = 1
# settings that may change when a run is resumed: they do not change what is computed (grad_accum only
# changes how the same gradient is summed, up to float rounding: a run may resume on a smaller GPU)
RESUMABLE_CHANGES = ("train.log_every", "train.eval_every", "train.checkpoint_every", "train.device",
                     "train.threads", "train.compile", "train.grad_accum")


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


def state_checksum(state: dict) -> str:
    """SHA-256 of ``state["model"]`` and ``state["optimizer"]``: every tensor's name, dtype, shape and
    bytes, and every other value's repr, in a fixed (sorted) order, so the same state always gives the
    same digest wherever its tensors live."""
    digest = hashlib.sha256()

    def feed(x) -> None:
        if isinstance(x, torch.Tensor):
            t = x.detach().cpu().contiguous().reshape(-1)
            digest.update(f"tensor {t.dtype} {tuple(x.shape)}:".encode())
            digest.update(t.view(torch.uint8).numpy())   # the raw bytes, whatever the dtype (bf16 too)
        elif isinstance(x, dict):
            digest.update(b"{")
            for key in sorted(x, key=repr):
                digest.update(repr(key).encode() + b":")
                feed(x[key])
            digest.update(b"}")
        elif isinstance(x, (list, tuple)):
            digest.update(b"[")
            for item in x:
                feed(item)
            digest.update(b"]")
        else:
            digest.update(repr(x).encode() + b",")

    feed(state.get("model"))
    feed(state.get("optimizer"))
    return digest.hexdigest()


def temp_path(path: Path, pid: int | None = None) -> Path:
    """Where process ``pid`` writes ``path`` before renaming it into place: a hidden sibling."""
    return path.with_name(f".{path.name}.tmp{os.getpid() if pid is None else pid}")


def save_checkpoint(path: Path, cfg: RunConfig, step: int, model: Data2Vec,
                    optimizer: torch.optim.Optimizer | None = None, extra: dict | None = None) -> None:
    """Write the checkpoint atomically. When the write fails (a full disk, a folder that became
    read-only), the previous checkpoint is left as it was and a CheckpointError of one line says why."""
    state = {"format": FORMAT, "modality": cfg.modality, "config": cfg.to_dict(), "step": step,
             "model": model.state_dict(), "optimizer": optimizer.state_dict() if optimizer else None,
             **(extra or {})}
    state["checksum"] = state_checksum(state)
    tmp = temp_path(path)
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)  # atomic on POSIX: readers see the old file or the new one, never half
    except (OSError, RuntimeError) as e:  # a full disk shows as "RuntimeError: [enforce fail at ...]"
        kept = "; the previous checkpoint there is intact" if path.is_file() else ""
        raise CheckpointError(write_failure(path.parent, f"{path.name} (step {step})", e) + kept) from e
    finally:
        tmp.unlink(missing_ok=True)


def remove_stale_tmp(path: Path) -> list[Path]:
    """Remove the temp files of ``path`` left by saves that were killed (their process is gone): they
    are never renamed into place and would stay in the run folder for good. Returns those removed."""
    removed = []
    for tmp in path.parent.glob(f".{path.name}.tmp*"):
        pid = re.fullmatch(rf"\.{re.escape(path.name)}\.tmp(\d+)", tmp.name)
        if pid and not _alive(int(pid.group(1))):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False   # this process saves nothing while it starts a run: a leftover of an earlier one
    try:
        os.kill(pid, 0)    # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True        # exists, but belongs to another user
    except OSError:
        return True        # cannot tell: keep the file
    return True


def read_checkpoint(path: Path, map_location="cpu") -> dict:
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint there (run `d2v-lab pretrain` first)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated file, not a torch file, or unsafe content
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]   # torch's can be a page long
        raise CheckpointError(f"{path}: not a readable d2v_lab checkpoint ({reason}); delete it and retrain, "
                              f"or restore a copy") from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a d2v_lab checkpoint of format {FORMAT}")
    if "checksum" in state and state_checksum(state) != state["checksum"]:   # older ones have none
        raise CheckpointError(f"{path}: checksum mismatch: the file is corrupt; delete it and retrain, "
                              f"or restore a copy")
    return state


def saved_config(state: dict, path: Path) -> RunConfig:
    """The RunConfig a checkpoint was made with; a CheckpointError naming the file when it is not one
    this version accepts (a newer d2v_lab's, or a setting now refused)."""
    try:
        return RunConfig.from_dict(state["config"])
    except (ValueError, TypeError, KeyError) as e:
        raise CheckpointError(f"{path}: its saved config is not valid here ({e})") from e


def check_compatible(state: dict, cfg: RunConfig, path: Path) -> None:
    """Refuse to continue a checkpoint with another modality or a config that changes the run. A
    setting added after the checkpoint was made takes its default, which is what the code did before."""
    if state["modality"] != cfg.modality:
        raise CheckpointError(f"{path} is a {state['modality']} checkpoint; cannot resume it as {cfg.modality}")
    saved = saved_config(state, path).to_dict()
    diff = [d for d in config_diff(saved, cfg.to_dict())
            if not d.startswith(RESUMABLE_CHANGES) and not d.startswith("profile")]
    if diff:   # one line, like every error the CLI prints
        raise CheckpointError(f"{path} was made with a different config; resuming would not continue the "
                              f"same run. Differences (checkpoint != now): {'; '.join(diff)}. Resume with the "
                              f"checkpoint's settings, or start a new run in another --out")


def load_run(run_dir: str | os.PathLike, modality: str | None = None,
             device: str = "cpu") -> tuple[Data2Vec, RunConfig, Tokenizer | None]:
    """A trained model (eval mode), its config and (text) its tokenizer, from a pretraining run folder."""
    run_dir = Path(run_dir)
    state = read_checkpoint(run_dir / CHECKPOINT, device)
    if modality is not None and state["modality"] != modality:
        raise CheckpointError(f"{run_dir}: holds a {state['modality']} model, not {modality}")
    cfg = saved_config(state, run_dir / CHECKPOINT)
    model = build_model(cfg)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise CheckpointError(f"{run_dir}: weights do not fit the saved config ({e})") from e
    tok = Tokenizer.from_file(str(run_dir / TOKENIZER)) if cfg.modality == "text" else None
    return model.to(device).eval(), cfg, tok
