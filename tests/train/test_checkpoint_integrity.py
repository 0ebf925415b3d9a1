"""Checkpoints that cannot be trusted, or cannot be written: flipped bytes are caught by the checksum,
old checkpoints without one still load, a full disk mid-save keeps the previous checkpoint and says
so in one line, and the temp file of a killed save does not stay for good."""
from __future__ import annotations

import errno
import os
import subprocess
import sys

import pytest
import torch

from d2v_lab.cli import main
from d2v_lab.train.checkpoint import (
    CHECKPOINT,
    CheckpointError,
    build_model,
    load_run,
    read_checkpoint,
    remove_stale_tmp,
    save_checkpoint,
    state_checksum,
    temp_path,
)
from d2v_lab.train.inputs import pretraining_data
from d2v_lab.train.loop import make_optimizer, pretrain
from d2v_lab.train.profiles import get_profile


def tiny(*extra: str):
    return get_profile("image", "ci").with_overrides([
        "train.steps=4", "train.batch_size=8", "train.log_every=1", "train.eval_every=0",
        "train.checkpoint_every=2", "train.device=cpu", *extra])


def saved(tmp_path, step=1):
    """A checkpoint of the ci image model, with optimizer state, in tmp_path/run."""
    cfg, out = get_profile("image", "ci"), tmp_path / "run"
    out.mkdir()
    model = build_model(cfg)
    optimizer = make_optimizer(model, cfg.train)
    for p in model.parameters():
        p.grad = torch.zeros_like(p) if p.requires_grad else None
    optimizer.step()                                       # so that Adam has state to save
    save_checkpoint(out / CHECKPOINT, cfg, step, model, optimizer)
    return cfg, out


# --- the checksum ----------------------------------------------------------------------------------------

def flip_a_weight_byte(path, state):
    """Flip one byte inside the stored bytes of a trained weight (a bad disk sector, a bad copy)."""
    weight = state["model"]["student.encoder.blocks.0.attn.qkv.weight"]
    raw = bytearray(path.read_bytes())
    at = bytes(raw).find(weight.numpy().tobytes()[:64])
    assert at > 0
    raw[at + 17] ^= 0x10
    path.write_bytes(bytes(raw))


def test_flipped_bytes_in_a_weight_are_caught_by_the_checksum(tmp_path):
    cfg, out = saved(tmp_path)
    path = out / CHECKPOINT
    state = read_checkpoint(path)
    assert len(state["checksum"]) == 64
    flip_a_weight_byte(path, state)
    message = (rf"^{path}: checksum mismatch: the file is corrupt; delete it and retrain, or restore a copy$")
    with pytest.raises(CheckpointError, match=message):
        read_checkpoint(path)
    with pytest.raises(CheckpointError, match=message):
        load_run(out)                                      # what probe and align read
    with pytest.raises(CheckpointError, match=message):
        pretrain(cfg, out, resume=True, progress=False)


def test_the_checksum_covers_the_optimizer_state_and_every_dtype(tmp_path):
    _, out = saved(tmp_path)
    state = read_checkpoint(out / CHECKPOINT)
    assert state_checksum(state) == state["checksum"]
    moment = next(iter(state["optimizer"]["state"].values()))["exp_avg"]
    moment.view(-1)[0] += 1.0
    assert state_checksum(state) != state["checksum"]
    bf16 = {"model": {"w": torch.ones(3, dtype=torch.bfloat16)}, "optimizer": None}  # no numpy dtype
    assert state_checksum(bf16) != state_checksum({"model": {"w": torch.ones(3)}, "optimizer": None})


def test_a_checkpoint_from_before_the_checksum_still_loads(fake_root, tmp_path):
    cfg, out = saved(tmp_path)
    state = read_checkpoint(out / CHECKPOINT)
    del state["checksum"]
    torch.save(state, out / CHECKPOINT)
    assert read_checkpoint(out / CHECKPOINT)["step"] == 1
    assert load_run(out)[1] == cfg


def test_unreadable_checkpoint_is_one_line_with_a_fix(tmp_path, capsys):
    _, out = saved(tmp_path)
    raw = (out / CHECKPOINT).read_bytes()
    (out / CHECKPOINT).write_bytes(raw[: len(raw) // 3])
    assert main(["probe", "--checkpoint", str(out), "--no-supervised"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a readable d2v_lab checkpoint" in err and "restore a copy" in err, err


# --- a failed save ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("error", [
    RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 4288 vs 4180\nframe #0: ..."),
    OSError(errno.ENOSPC, "No space left on device"),
])
def test_a_full_disk_mid_save_keeps_the_previous_checkpoint_and_says_so(fake_root, tmp_path, monkeypatch,
                                                                         capsys, error):
    out = tmp_path / "run"
    args = ["pretrain", "--modality", "image", "--profile", "ci", "--out", str(out), "--set", "train.steps=4",
            "--set", "train.batch_size=8", "--set", "train.checkpoint_every=2", "--set", "train.device=cpu"]
    real_save = torch.save

    def full_after_the_first(obj, f, *a, **k):
        if obj["step"] > 2:
            with open(f, "wb") as fh:           # torch.save had written part of the file
                fh.write(b"PK\x03\x04 part of a checkpoint")
            raise error
        return real_save(obj, f, *a, **k)
    monkeypatch.setattr("d2v_lab.train.checkpoint.torch.save", full_after_the_first)
    assert main(args) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("d2v-lab")]
    assert len(err) == 1, err
    assert err[0].startswith(f"d2v-lab: error: {out}: cannot write checkpoint.pt (step 4) there (")
    assert "the disk may be full (" in err[0] and "MiB free there): free some space" in err[0]
    assert err[0].endswith("the previous checkpoint there is intact")
    assert read_checkpoint(out / CHECKPOINT)["step"] == 2                   # untouched, and no temp file left
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "config.json", "metrics.jsonl"]


def test_a_save_into_a_read_only_folder_says_so(tmp_path, monkeypatch):
    cfg, out = saved(tmp_path)

    def refused(obj, f, *a, **k):
        raise OSError(errno.EROFS, "Read-only file system")
    monkeypatch.setattr("d2v_lab.train.checkpoint.torch.save", refused)
    with pytest.raises(CheckpointError, match=rf"^{out}: cannot write checkpoint.pt \(step 2\) there \(Read-only "
                                              r"file system\): the folder is not writable; make it writable or "
                                              r"choose another --out; the previous checkpoint there is intact$"):
        save_checkpoint(out / CHECKPOINT, cfg, 2, build_model(cfg))


# --- the temp file of a killed save -----------------------------------------------------------------------

def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_a_killed_saves_temp_file_is_removed_by_the_next_run(fake_root, tmp_path):
    cfg = tiny()
    data = pretraining_data(cfg, progress=False)
    out = tmp_path / "run"
    pretrain(cfg, out, data=data, progress=False, stop_after=2)
    ckpt = out / CHECKPOINT
    stale, live = temp_path(ckpt, dead_pid()), temp_path(ckpt, os.getppid())
    assert stale.name.startswith(".checkpoint.pt.tmp")
    stale.write_bytes(b"PK half a checkpoint of a save killed by kill -9")
    live.write_bytes(b"PK another process is writing this right now")
    assert remove_stale_tmp(ckpt) == [stale]
    stale.write_bytes(b"PK again")
    pretrain(cfg, out, data=data, progress=False, resume=True)
    assert not stale.exists() and live.exists()      # a live process's file is never touched

