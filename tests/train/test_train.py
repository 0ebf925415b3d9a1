"""The training loop: schedules, epoch shuffling, exact resumption, checkpoint safety, the NaN and
collapse guards, the CLI, and (on the real shared data) that a short ci run really learns."""
from __future__ import annotations

import json
import math

import pytest
import torch

from d2v_lab.cli import main
from d2v_lab.model.ema import derive_schedule, init_share, tau_schedule
from d2v_lab.train.checkpoint import (
    CHECKPOINT,
    CheckpointError,
    build_model,
    load_run,
    read_checkpoint,
    save_checkpoint,
)
from d2v_lab.train.config import TrainConfig
from d2v_lab.train.inputs import pretraining_data
from d2v_lab.train.loop import (
    TrainingStopped,
    batch_indices,
    ensure_pretrained,
    heldout_loss,
    lr_at,
    make_optimizer,
    pretrain,
)
from d2v_lab.train.profiles import PROFILES, follow_run_length, get_profile
from d2v_lab.train.runs import CONFIG, METRICS


def tiny(modality: str, *extra: str):
    """The ci profile shrunk to a few steps on the fake data; dropout and stochastic depth on, so
    resumption must also reproduce the global RNG stream."""
    return get_profile(modality, "ci").with_overrides([
        "train.steps=6", "train.batch_size=8", "train.log_every=1", "train.eval_every=3",
        "train.checkpoint_every=100", "train.device=cpu", "encoder.dropout=0.1", "encoder.drop_path=0.2",
        *extra])


def rows(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


COMPUTED = ("step", "loss", "target_std", "pred_std", "tau", "teacher_init_share", "lr", "epoch")  # not the wall-clock speed


# --- schedules ---------------------------------------------------------------------------------------

def test_lr_linear_warmup_then_cosine_to_zero():
    cfg = TrainConfig(steps=110, lr=1e-3, warmup_steps=10)
    assert lr_at(0, cfg) == pytest.approx(1e-4)
    assert lr_at(4, cfg) == pytest.approx(5e-4)
    assert lr_at(9, cfg) == pytest.approx(1e-3)
    assert lr_at(10, cfg) == pytest.approx(1e-3)                       # cosine starts at the peak
    assert lr_at(35, cfg) == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 0.25)))
    assert lr_at(60, cfg) == pytest.approx(5e-4)                       # half way
    assert lr_at(110, cfg) == pytest.approx(0.0, abs=1e-12)
    assert lr_at(500, cfg) == pytest.approx(0.0, abs=1e-12)            # never negative or rising again
    assert all(lr_at(s, cfg) >= lr_at(s + 1, cfg) for s in range(10, 120))
    assert lr_at(0, TrainConfig(steps=10, lr=2e-3, warmup_steps=0)) == pytest.approx(2e-3)


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("modality", ["image", "text", "audio"])
def test_every_profile_teacher_forgets_its_random_start(profile, modality):
    """The final teacher keeps at most 1% of its random initial weights, and its memory 1/(1 - tau)
    grows over the run and stays shorter than it."""
    cfg = get_profile(modality, profile)
    d, steps = cfg.d2v, cfg.train.steps
    left = init_share(tau_schedule(d.tau0, d.tau_end, d.tau_ramp_steps, steps))
    assert d.tau_init_share == 0.01 and 0.0099 < left <= 0.01
    assert d.tau_ramp_steps == steps and d.tau0 < d.tau_end
    assert 1 / (1 - d.tau_end) < steps


def test_schedule_follows_train_steps_and_an_explicit_schedule_is_kept():
    base = get_profile("text", "cpu")
    assert follow_run_length(base) == base                             # a profile already follows its length
    longer = follow_run_length(base.with_overrides(["train.steps=600"]))
    d = longer.d2v
    assert (d.tau0, d.tau_end, d.tau_ramp_steps) == derive_schedule(600, 0.01)
    assert init_share(tau_schedule(d.tau0, d.tau_end, d.tau_ramp_steps, 600)) <= 0.01
    assert d.tau0 > base.d2v.tau0 and d.tau_end > base.d2v.tau_end   # a longer run: a longer memory
    explicit = base.with_overrides(["d2v.tau_init_share=0", "d2v.tau0=0.9", "d2v.tau_end=0.95",
                                    "d2v.tau_ramp_steps=7", "train.steps=600"])
    assert follow_run_length(explicit) == explicit
    with pytest.raises(ValueError, match="share"):
        follow_run_length(base.with_overrides(["d2v.tau_init_share=1.5"]))


def test_batch_indices_each_epoch_is_a_permutation_deterministic_per_seed():
    n, bs = 50, 8
    per_epoch = n // bs
    epochs = []
    for e in range(3):
        idx = torch.cat([batch_indices(e * per_epoch + i, n, bs, seed=0) for i in range(per_epoch)])
        assert len(idx) == per_epoch * bs and len(set(idx.tolist())) == len(idx)   # no repeats in an epoch
        assert idx.min() >= 0 and idx.max() < n
        epochs.append(idx)
    assert not torch.equal(epochs[0], epochs[1]) and not torch.equal(epochs[1], epochs[2])
    assert all(torch.equal(batch_indices(s, n, bs, 0), batch_indices(s, n, bs, 0)) for s in range(20))
    assert not torch.equal(batch_indices(0, n, bs, 0), batch_indices(0, n, bs, 1))
    assert len(batch_indices(0, 5, 8, 0)) == 5                         # smaller data than a batch


def test_no_weight_decay_on_biases_norms_positions_embeddings():
    model = build_model(get_profile("text", "ci", version=1))
    opt = make_optimizer(model, TrainConfig())
    decay = {id(p) for p in opt.param_groups[0]["params"]}
    no_decay = {id(p) for p in opt.param_groups[1]["params"]}
    names = {id(p): n for n, p in model.named_parameters()}
    assert opt.param_groups[0]["weight_decay"] > 0 and opt.param_groups[1]["weight_decay"] == 0
    assert not any(id(p) in decay or id(p) in no_decay for p in model.teacher.parameters())
    ad = model.student.adapter
    for p in (ad.tok.weight, ad.pos, ad.mask_embedding):                 # embeddings and positions
        assert id(p) in no_decay, names[id(p)]
    for n, p in model.student.encoder.named_parameters():
        assert (id(p) in no_decay) == (p.ndim < 2), n                     # biases and norms only
    assert id(model.head[0].weight) in decay


# --- exact resumption ----------------------------------------------------------------------------------

@pytest.mark.parametrize("modality,stop", [("image", 4), ("text", 1), ("audio", 3)])
def test_resumed_run_equals_uninterrupted_run(fake_root, tmp_path, modality, stop):
    cfg = tiny(modality)
    data = pretraining_data(cfg, progress=False)
    torch.manual_seed(0)
    a = pretrain(cfg, tmp_path / "a", data=data, progress=False)
    torch.manual_seed(0)      # the same initial weights (see test_pretrain_is_determined_by_its_config)
    b = pretrain(cfg, tmp_path / "b", data=data, progress=False, stop_after=stop)
    assert b.step == stop and read_checkpoint(tmp_path / "b" / CHECKPOINT)["step"] == stop
    torch.manual_seed(999)    # whatever happened in between must not matter
    torch.rand(7)
    b = pretrain(cfg, tmp_path / "b", data=data, progress=False, resume=True)
    assert a.step == b.step == 6

    ra, rb = rows(tmp_path / "a" / METRICS), rows(tmp_path / "b" / METRICS)
    assert [r["step"] for r in ra] == [r["step"] for r in rb] == list(range(1, 7))
    for x, y in zip(ra, rb):
        assert {k: x[k] for k in COMPUTED} == {k: y[k] for k in COMPUTED}
        if "heldout_loss" in x:
            assert x["heldout_loss"] == y["heldout_loss"]
    sa, sb = read_checkpoint(tmp_path / "a" / CHECKPOINT), read_checkpoint(tmp_path / "b" / CHECKPOINT)
    assert sa["model"].keys() == sb["model"].keys()
    assert all(torch.equal(sa["model"][k], sb["model"][k]) for k in sa["model"])
    state_a, state_b = sa["optimizer"]["state"], sb["optimizer"]["state"]
    assert state_a.keys() == state_b.keys()
    assert all(torch.equal(state_a[i][k], state_b[i][k]) for i in state_a for k in state_a[i])
    ma, mb = a.model.state_dict(), b.model.state_dict()
    assert all(torch.equal(ma[k], mb[k]) for k in ma)
    assert state_a and all(int(st["step"]) == 6 for st in state_b.values())   # 6 Adam steps in all


def test_pretrain_is_determined_by_its_config(fake_root, tmp_path):
    """Two runs of the same config (same train.seed) are the same run, whatever the process did
    before: the initial weights must come from the seed, not from torch's global RNG state."""
    cfg = tiny("text", "train.steps=2")
    data = pretraining_data(cfg, progress=False)
    torch.manual_seed(1)
    a = pretrain(cfg, tmp_path / "a", data=data, progress=False)
    torch.manual_seed(2)
    b = pretrain(cfg, tmp_path / "b", data=data, progress=False)
    assert [r["loss"] for r in a.metrics] == [r["loss"] for r in b.metrics]
    ma, mb = a.model.state_dict(), b.model.state_dict()
    assert all(torch.equal(ma[k], mb[k]) for k in ma)


def test_logged_teacher_init_share_is_the_schedule_product_also_after_resume(fake_root, tmp_path):
    cfg = tiny("audio")   # the ci profile's 20-step schedule with train.steps=6: pretrain derives it for 6
    data = pretraining_data(cfg, progress=False)
    pretrain(cfg, tmp_path, data=data, progress=False, stop_after=4)
    pretrain(cfg, tmp_path, data=data, progress=False, resume=True)
    schedule = derive_schedule(6, 0.01)
    saved = json.loads((tmp_path / CONFIG).read_text())["d2v"]
    assert (saved["tau0"], saved["tau_end"], saved["tau_ramp_steps"]) == schedule   # the one that ran
    taus = tau_schedule(*schedule, 6)
    logged = rows(tmp_path / METRICS)
    assert [r["step"] for r in logged] == list(range(1, 7))
    for r in logged:
        assert r["tau"] == taus[r["step"] - 1]
        assert r["teacher_init_share"] == pytest.approx(init_share(taus[:r["step"]]), rel=1e-12)
    assert logged[-1]["teacher_init_share"] <= 0.01
    said = []   # the same (not yet derived) config is recognised as this finished run
    assert ensure_pretrained(cfg, tmp_path, progress=False, log=said.append) == tmp_path
    assert "reusing" in said[0]

    explicit = tiny("audio", "train.steps=3", "d2v.tau_init_share=0", "d2v.tau0=0.9", "d2v.tau_end=0.9",
                    "d2v.tau_ramp_steps=0")
    logged = pretrain(explicit, tmp_path / "explicit", data=data, progress=False).metrics
    assert [r["tau"] for r in logged] == [0.9] * 3
    assert [r["teacher_init_share"] for r in logged] == pytest.approx([0.9, 0.81, 0.729], rel=1e-12)


def test_init_shares_cover_only_the_steps_run(fake_root, tmp_path, monkeypatch):
    """A run configured far longer than it runs (the EMA demos: 10**9 steps, stopped after a few) logs
    the same shares, computed only up to the steps it runs: the whole schedule would take gigabytes."""
    import d2v_lab.train.loop as loop
    asked = []

    def schedule(tau0, tau_end, ramp, steps):
        asked.append(steps)
        assert steps <= 1000, f"the loop asked for the schedule of {steps} steps"
        return tau_schedule(tau0, tau_end, ramp, steps)
    monkeypatch.setattr(loop, "tau_schedule", schedule)
    cfg = tiny("audio", "train.steps=1000000000", "d2v.tau_init_share=0", "d2v.tau0=0.9", "d2v.tau_end=0.9",
               "d2v.tau_ramp_steps=0", "train.eval_every=0", "train.checkpoint_every=1000000000")
    logged = pretrain(cfg, tmp_path, data=pretraining_data(cfg, progress=False), progress=False, stop_after=3).metrics
    assert asked == [3]
    assert [r["teacher_init_share"] for r in logged] == pytest.approx([0.9, 0.81, 0.729], rel=1e-12)


# --- checkpoints ---------------------------------------------------------------------------------------

def run_dir(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    return out


def test_checkpoint_refused_for_another_modality(fake_root, tmp_path):
    cfg, out = get_profile("image", "ci"), run_dir(tmp_path)
    save_checkpoint(out / CHECKPOINT, cfg, 3, build_model(cfg))
    with pytest.raises(CheckpointError, match="image checkpoint.*as text"):
        pretrain(get_profile("text", "ci"), out, resume=True, progress=False)
    with pytest.raises(CheckpointError, match="not audio"):
        load_run(out, modality="audio")


def test_checkpoint_refused_for_changed_config_names_the_key(fake_root, tmp_path):
    cfg = tiny("image")
    data = pretraining_data(cfg, progress=False)
    pretrain(cfg, tmp_path, data=data, progress=False, stop_after=1)
    with pytest.raises(CheckpointError) as e:
        pretrain(cfg.with_overrides(["train.lr=0.002"]), tmp_path, resume=True, data=data, progress=False)
    assert "train.lr: 0.001 != 0.002" in str(e.value)
    with pytest.raises(CheckpointError, match=r"mask\.ratio"):
        pretrain(cfg.with_overrides(["mask.ratio=0.5"]), tmp_path, resume=True, data=data, progress=False)
    # settings that do not change what is computed may change; the run then continues
    res = pretrain(cfg.with_overrides(["train.log_every=2", "train.eval_every=0"]), tmp_path, resume=True,
                   data=data, progress=False)
    assert res.step == 6 and read_checkpoint(tmp_path / CHECKPOINT)["step"] == 6


def test_checkpoint_from_before_a_new_setting_is_read_with_its_default(fake_root, tmp_path):
    # audio augmentation settings were added later: a checkpoint without them is a run without them
    cfg = tiny("audio", "data.freq_warp=0", "data.time_stretch=0")
    pretrain(cfg, tmp_path, progress=False, stop_after=3)
    state = read_checkpoint(tmp_path / CHECKPOINT)
    for key in ("freq_warp", "time_stretch"):
        del state["config"]["data"][key]
    torch.save(state, tmp_path / CHECKPOINT)
    assert pretrain(cfg, tmp_path, resume=True, progress=False).step == 6
    with pytest.raises(CheckpointError, match=r"data\.freq_warp: 0\.0 != 0\.1"):
        pretrain(cfg.with_overrides(["data.freq_warp=0.1"]), tmp_path, resume=True, progress=False)


def test_existing_checkpoint_without_resume_raises(fake_root, tmp_path):
    cfg, out = get_profile("audio", "ci"), run_dir(tmp_path)
    save_checkpoint(out / CHECKPOINT, cfg, 1, build_model(cfg))
    before = (out / CHECKPOINT).read_bytes()
    with pytest.raises(FileExistsError, match="resume"):
        pretrain(cfg, out, progress=False)
    assert (out / CHECKPOINT).read_bytes() == before


@pytest.mark.parametrize("damage", ["truncated", "garbage", "not a dict"])
def test_damaged_checkpoint_gives_checkpoint_error(fake_root, tmp_path, damage):
    cfg, out = get_profile("image", "ci"), run_dir(tmp_path)
    path = out / CHECKPOINT
    save_checkpoint(path, cfg, 1, build_model(cfg))
    raw = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x00" * 100)
    else:
        torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointError, match=CHECKPOINT):
        pretrain(cfg, out, resume=True, progress=False)
    with pytest.raises(CheckpointError):
        load_run(out)


def test_checkpoint_written_atomically(fake_root, tmp_path, monkeypatch):
    cfg = tiny("image", "train.steps=2", "train.checkpoint_every=1")
    data = pretraining_data(cfg, progress=False)
    out = tmp_path / "run"
    pretrain(cfg, out, data=data, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "config.json", "metrics.jsonl"]
    before = (out / CHECKPOINT).read_bytes()

    def crash(obj, f, *a, **k):   # the process dies half way through writing
        with open(f, "wb") as fh:
            fh.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("disk full")
    monkeypatch.setattr("d2v_lab.train.checkpoint.torch.save", crash)
    with pytest.raises(CheckpointError, match="the previous checkpoint there is intact"):
        save_checkpoint(out / CHECKPOINT, cfg, 3, build_model(cfg))
    assert (out / CHECKPOINT).read_bytes() == before            # the good checkpoint is untouched
    assert read_checkpoint(out / CHECKPOINT)["step"] == 2


# --- guards --------------------------------------------------------------------------------------------

def test_nan_loss_stops_without_saving_the_broken_step(fake_root, tmp_path):
    cfg = tiny("image", "train.lr=1e30", "train.eval_every=0", "train.steps=20")
    data = pretraining_data(cfg, progress=False)
    with pytest.raises(TrainingStopped, match=r"loss is (nan|inf)") as e:
        pretrain(cfg, tmp_path, data=data, progress=False)
    assert "lower train.lr" in str(e.value)
    logged = rows(tmp_path / METRICS)
    assert all(math.isfinite(r["loss"]) for r in logged) and len(logged) < 20
    assert not (tmp_path / CHECKPOINT).exists()


def test_nan_loss_from_the_model_stops(fake_root, tmp_path, monkeypatch):
    from d2v_lab.model.data2vec import Data2Vec
    cfg = tiny("audio", "train.eval_every=0")
    data = pretraining_data(cfg, progress=False)
    forward = Data2Vec.forward

    def nan_at_step_3(self, *a, **k):
        out = forward(self, *a, **k)
        nan_at_step_3.calls += 1
        if nan_at_step_3.calls == 3:
            out.loss = out.loss * float("nan")
        return out
    nan_at_step_3.calls = 0
    monkeypatch.setattr(Data2Vec, "forward", nan_at_step_3)
    with pytest.raises(TrainingStopped, match=r"step 3: loss is nan"):
        pretrain(cfg, tmp_path, data=data, progress=False)
    assert [r["step"] for r in rows(tmp_path / METRICS)] == [1, 2]


def test_non_finite_gradient_is_never_saved(fake_root, tmp_path, monkeypatch):
    """A finite loss with non-finite gradients (e.g. a bf16 overflow in backward) makes the update
    NaN. Stopping at the next step's NaN loss says "the last checkpoint is still good": so the
    broken update must not have been checkpointed."""
    from d2v_lab.model.data2vec import Data2Vec
    cfg = tiny("image", "train.eval_every=0", "train.checkpoint_every=1")
    data = pretraining_data(cfg, progress=False)
    forward = Data2Vec.forward

    def nan_grad_at_step_2(self, *a, **k):
        out = forward(self, *a, **k)
        nan_grad_at_step_2.calls += 1
        if nan_grad_at_step_2.calls == 2:    # value + 0, gradient 0 * inf = nan
            p = self.student.encoder.blocks[0].mlp[0].bias
            out.loss = out.loss + 0 * torch.sqrt(p - p).sum()
            assert torch.isfinite(out.loss)
        return out
    nan_grad_at_step_2.calls = 0
    monkeypatch.setattr(Data2Vec, "forward", nan_grad_at_step_2)
    with pytest.raises(TrainingStopped):
        pretrain(cfg, tmp_path, data=data, progress=False)
    state = read_checkpoint(tmp_path / CHECKPOINT)
    bad = [k for k, v in state["model"].items() if v.is_floating_point() and not torch.isfinite(v).all()]
    assert not bad, f"checkpoint of step {state['step']} holds non-finite weights: {bad[:3]}"


@pytest.mark.parametrize("where", ["forward", "update_teacher"])
def test_ctrl_c_keeps_the_last_whole_step_and_never_a_half_update(fake_root, tmp_path, monkeypatch, where):
    """Ctrl-C during step 3's forward leaves the model as step 2 left it: that is saved. Ctrl-C after
    step 3's optimizer step, before its teacher update ended, leaves student and teacher out of step:
    nothing is saved (no checkpoint had been written yet)."""
    from d2v_lab.model.data2vec import Data2Vec
    cfg = tiny("image", "train.eval_every=0")
    data = pretraining_data(cfg, progress=False)
    original = getattr(Data2Vec, where)

    def interrupt_at_step_3(self, *a, **k):
        interrupt_at_step_3.calls += 1
        if interrupt_at_step_3.calls == 3:
            raise KeyboardInterrupt
        return original(self, *a, **k)
    interrupt_at_step_3.calls = 0
    monkeypatch.setattr(Data2Vec, where, interrupt_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        pretrain(cfg, tmp_path, data=data, progress=False)
    if where == "forward":
        assert read_checkpoint(tmp_path / CHECKPOINT)["step"] == 2
    else:
        assert not (tmp_path / CHECKPOINT).exists()
    assert [r["step"] for r in rows(tmp_path / METRICS)] == [1, 2]


def test_collapse_guard_stops(fake_root, tmp_path):
    cfg = tiny("text", "train.min_target_std=100", "train.eval_every=0")
    data = pretraining_data(cfg, progress=False)
    with pytest.raises(TrainingStopped, match="collapse") as e:
        pretrain(cfg, tmp_path, data=data, progress=False)
    assert "target std" in str(e.value) and "step 1" in str(e.value)


# --- it learns (real data) -----------------------------------------------------------------------------

@pytest.mark.parametrize("modality", ["image", "text", "audio"])
def test_ci_run_lowers_heldout_loss_against_a_fixed_teacher(shared_root, tmp_path, modality):
    """Fair comparison: the SAME initial student that training started from (pretrain with
    stop_after=0 under the same global seed returns it untrained) versus the trained one, both scored
    by heldout_loss on the same held-out batches (never used for updates) with the same seeded masks
    and the same targets, those of the FINAL EMA teacher (1% of it is the initial weights, the rest
    averages the trained students). The trained student must be clearly better."""
    cfg = get_profile(modality, "ci").with_overrides(["train.eval_every=0", "train.device=cpu"])
    data = pretraining_data(cfg, shared_root, progress=False)
    torch.manual_seed(0)
    init = pretrain(cfg, tmp_path / "init", data=data, progress=False, stop_after=0).model
    torch.manual_seed(0)
    trained = pretrain(cfg, tmp_path / "run", data=data, progress=False).model
    teacher = trained.teacher
    held = data.heldout[:256]
    before = heldout_loss(init, held, teacher=teacher)
    after = heldout_loss(trained, held, teacher=teacher)
    assert after < 0.9 * before, (before, after)
    assert heldout_loss(trained, held, teacher=teacher) == after        # fixed masks and noise: repeatable


# --- command line --------------------------------------------------------------------------------------

def test_cli_pretrain_writes_the_run_folder(fake_root, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["pretrain", "--modality", "text", "--profile", "ci", "--out", str(out), "--set", "train.steps=4",
            "--set", "train.device=cpu"]
    assert main(args) == 0
    names = {p.name for p in out.iterdir()}
    assert {"checkpoint.pt", "metrics.jsonl", "config.json", "tokenizer.json"} <= names
    assert json.loads((out / "config.json").read_text())["train"]["steps"] == 4
    assert rows(out / METRICS)[-1]["step"] == 4 and read_checkpoint(out / CHECKPOINT)["step"] == 4
    model, cfg, tok = load_run(out, "text")
    assert cfg.modality == "text" and tok.get_vocab_size() <= cfg.data.vocab_size
    assert "text: 4/4 steps" in capsys.readouterr().out
    assert main(args) == 2                                   # exists, no --resume
    assert "--resume" in capsys.readouterr().err
    assert main(args + ["--resume"]) == 0                    # already complete: nothing to do


@pytest.mark.parametrize("setting,message", [("train.nonexistent=1", "unknown setting"),
                                             ("lr=1", "section.field=value"),
                                             ("train.lr=abc", "cannot read"),
                                             ("mask.ratio=1.5", "strictly between 0 and 1"),
                                             ("train.lr=-1", "must be a finite number > 0"),
                                             ("train.warmup_steps=-5", "must be an integer >= 0"),
                                             ("d2v.top_k=9", "exceeds the encoder depth 2")])
def test_cli_bad_set_returns_2(fake_root, tmp_path, capsys, setting, message):
    assert main(["pretrain", "--modality", "text", "--profile", "ci", "--out", str(tmp_path / "x"),
                 "--set", setting]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x" / CHECKPOINT).exists()


def test_cli_training_stopped_returns_3(fake_root, tmp_path, capsys):
    assert main(["pretrain", "--modality", "image", "--profile", "ci", "--out", str(tmp_path),
                 "--set", "train.lr=1e30", "--set", "train.device=cpu"]) == 3
    assert "training stopped" in capsys.readouterr().err


@pytest.mark.parametrize("profile", ["ci", "cpu", "gpu"])
@pytest.mark.parametrize("modality", ["image", "text", "audio"])
@pytest.mark.parametrize("version", [1, 2])
def test_every_profile_builds_a_model_that_takes_a_training_step(profile, modality, version):
    """The cpu and gpu profiles are only trained for real elsewhere (minutes, a GPU): here every
    profile's config must at least build, give a finite loss and a gradient on a tiny batch."""
    from d2v_lab.train.inputs import synthetic_batch
    from d2v_lab.train.profiles import with_version
    cfg = with_version(get_profile(modality, profile), version)
    torch.manual_seed(0)
    model = build_model(cfg).train()
    g = torch.Generator().manual_seed(0)
    out = model(model.student.adapter.augment(synthetic_batch(cfg, 2, g), g), g)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert all(p.grad is None for p in model.teacher.parameters())
    grads = [p.grad for p in model.student.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(gr).all() for gr in grads)
    assert out.mask.shape == (2 * cfg.d2v.num_masks, model.student.adapter.num_tokens)


def test_cli_pretrain_on_a_missing_device_says_so(tmp_path, monkeypatch, capsys):
    from d2v_lab.cli import main
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code = main(["pretrain", "--modality", "image", "--profile", "ci", "--out", str(tmp_path / "run"),
                 "--set", "train.device=cuda"])
    assert code != 0 and "no such device" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()                      # refused before anything was written
