"""The bad-settings catalogue: the ways a realistic user breaks a run's settings, and the message each gets.

ONE table, ``CASES``. Each row takes the ci profile of a modality, applies the user's ``--set``
assignments and expects a ValueError whose message
  * is one line (the CLI prints it as ``d2v-lab: error: <message>`` and exits 2),
  * starts with the setting at fault and the value given (``train.lr=inf: ...``),
  * has a fix after the cause (``...; e.g. --set train.lr=0.001``), and
  * matches the row's regex, which pins the cause (the allowed range).
Every row is also run through the CLI, with a data root that does not exist: it must be refused before
any data is read and before anything is written.

Beside the table: every field of every config section has a rule, every profile passes them, and the
token counts the rules assume are those the adapters have.
"""
from __future__ import annotations

import dataclasses
import re

import pytest

from d2v_lab.cli import main
from d2v_lab.train.checkpoint import CheckpointError, build_model, check_compatible
from d2v_lab.train.config import (
    MODALITIES,
    RULES,
    SECTIONS,
    AlignConfig,
    DataConfig,
    ProbeConfig,
    RunConfig,
    TrainConfig,
    maskable_tokens,
)
from d2v_lab.train.profiles import PROFILES, get_profile, with_version


def case(name, settings, key, match, modality="image"):
    settings = [settings] if isinstance(settings, str) else settings
    return pytest.param(modality, settings, key, match, id=name)


INT = r"must be an integer"
CASES = [
    # ----- the rows -----
    case("max_examples -1 (used to drop one example)", "data.max_examples=-1", "data.max_examples",
         rf"=-1: {INT} >= 0 \(0 = all\); e\.g\. --set data\.max_examples=0"),
    case("checkpoint_every 0", "train.checkpoint_every=0", "train.checkpoint_every", rf"=0: {INT} >= 1"),
    case("log_every 0", "train.log_every=0", "train.log_every", rf"=0: {INT} >= 1"),
    case("encoder dim 0", "encoder.dim=0", "encoder.dim", rf"=0: {INT} >= 1"),
    case("threads -1", "train.threads=-1", "train.threads", rf"=-1: {INT} >= 0 \(0 = torch's default\)"),
    case("betas one number", "train.betas=0.9", "train.betas",
         r"='0\.9': cannot read it as 2 comma-separated numbers; e\.g\. --set train\.betas=0\.9,0\.98"),
    case("device banana", "train.device=banana", "train.device",
         r"='banana': must be 'auto', 'cpu', 'mps', 'cuda' or 'cuda:N'; e\.g\. --set train\.device=auto"),
    case("lr inf", "train.lr=inf", "train.lr", r"=inf: must be a finite number > 0; e\.g\. --set train\.lr=0\.001"),
    case("seed -1", "train.seed=-1", "train.seed", rf"=-1: {INT} >= 0"),
    case("eval_every -1 (used to mean every log)", "train.eval_every=-1", "train.eval_every",
         rf"=-1: {INT} >= 0 \(0 = never\)"),
    # ----- train -----
    case("steps 0", "train.steps=0", "train.steps", rf"=0: {INT} >= 1"),
    case("steps 1e3", "train.steps=1e3", "train.steps", r"='1e3': cannot read it as an integer"),
    case("batch_size 0", "train.batch_size=0", "train.batch_size", rf"=0: {INT} >= 1"),
    case("grad_accum 0", "train.grad_accum=0", "train.grad_accum", rf"=0: {INT} >= 1 \(1 = the whole batch at once\)"),
    case("grad_accum above the batch", "train.grad_accum=33", "train.grad_accum",
         r"=33: more micro-batches than the train\.batch_size=32 samples .*; e\.g\. --set train\.grad_accum=16"),
    case("lr nan", "train.lr=nan", "train.lr", r"=nan: must be a finite number > 0"),
    case("lr 0", "train.lr=0", "train.lr", r"=0\.0: must be a finite number > 0"),
    case("lr abc", "train.lr=abc", "train.lr", r"='abc': cannot read it as a number"),
    case("weight_decay negative", "train.weight_decay=-0.1", "train.weight_decay", r"must be a finite number >= 0"),
    case("warmup negative", "train.warmup_steps=-5", "train.warmup_steps", rf"{INT} >= 0"),
    case("betas 1.0", "train.betas=0.9,1.0", "train.betas", r"=\(0\.9, 1\.0\): must be two numbers in \[0, 1\)"),
    case("betas three numbers", "train.betas=0.9,0.98,0.999", "train.betas", r"cannot read it as 2 comma-separated"),
    case("clip_grad 0", "train.clip_grad=0", "train.clip_grad", r"must be a finite number > 0"),
    case("clip_grad inf", "train.clip_grad=inf", "train.clip_grad", r"must be a finite number > 0"),
    case("eval_every not a multiple of log_every", "train.eval_every=7", "train.eval_every",
         r"=7: must be 0 or a multiple of train\.log_every=5 .* only every 35 steps\); e\.g\. --set train\.eval_every=5"),
    case("min_target_std negative", "train.min_target_std=-1", "train.min_target_std", r"finite number >= 0"),
    case("precision fp16", "train.precision=fp16", "train.precision", r"must be one of 'auto', 'fp32', 'bf16'"),
    case("compile yes", "train.compile=yes", "train.compile", r"cannot read it as true or false"),
    case("device cuda:x", "train.device=cuda:x", "train.device", r"must be 'auto', 'cpu'"),
    # ----- data -----
    case("vocab too small", "data.vocab_size=100", "data.vocab_size", rf"=100: {INT} >= 262", "text"),
    case("seq_len 2", "data.seq_len=2", "data.seq_len", rf"=2: {INT} >= 3 \(\[CLS\] and at least", "text"),
    case("max_stories 0", "data.max_stories=0", "data.max_stories", rf"{INT} >= 1", "text"),
    case("use_fsdd maybe", "data.use_fsdd=maybe", "data.use_fsdd", r"cannot read it as true or false", "audio"),
    case("freq_warp 1", "data.freq_warp=1", "data.freq_warp", r"=1\.0: must be in \[0, 1\)", "audio"),
    case("time_stretch negative", "data.time_stretch=-0.1", "data.time_stretch", r"must be in \[0, 1\)", "audio"),
    # ----- encoder -----
    case("heads 0 (used to divide by zero)", "encoder.heads=0", "encoder.heads", rf"=0: {INT} >= 1"),
    case("depth 0", "encoder.depth=0", "encoder.depth", rf"=0: {INT} >= 1"),
    case("dim not a multiple of heads", "encoder.dim=65", "encoder.dim",
         r"=65: must be a multiple of encoder\.heads=2 .*; e\.g\. --set encoder\.dim=64", "text"),
    case("image dim not a multiple of 4", "encoder.dim=66", "encoder.dim",
         r"=66: must be a multiple of 4 for image \(its fixed sin-cos positions"),
    case("mlp_ratio 0", "encoder.mlp_ratio=0", "encoder.mlp_ratio", r"must be a finite number > 0"),
    case("mlp_ratio too small for any unit", "encoder.mlp_ratio=0.001", "encoder.mlp_ratio", r"= 0 hidden units"),
    case("dropout 1", "encoder.dropout=1", "encoder.dropout", r"must be in \[0, 1\)"),
    case("drop_path negative", "encoder.drop_path=-0.1", "encoder.drop_path", r"must be in \[0, 1\)"),
    # ----- mask -----
    case("mask kind unknown", "mask.kind=checkerboard", "mask.kind", r"must be one of 'block', 'inverse_block'"),
    case("mask ratio 1.5", "mask.ratio=1.5", "mask.ratio", r"=1\.5: must be in \(0, 1\): strictly between 0 and 1"),
    case("mask ratio 0", "mask.ratio=0", "mask.ratio", r"strictly between 0 and 1"),
    case("mask ratio masks no token", "mask.ratio=0.001", "mask.ratio",
         r"masks 0 of the 50 audio tokens; .* must be in \(0\.01, 0\.99\); e\.g\. --set mask\.ratio=0\.5", "audio"),
    case("block masking on text", "mask.kind=block", "mask.kind",
         r"='block': needs a 2-D grid of tokens, which text does not have", "text"),
    case("span longer than the clip", ["mask.span=60"], "mask.span", r"longer than the 50 audio tokens", "audio"),
    case("min_block 0", "mask.min_block=0", "mask.min_block", rf"{INT} >= 1"),
    case("block 0", "mask.block=0", "mask.block", rf"{INT} >= 1"),
    case("span 0", "mask.span=0", "mask.span", rf"{INT} >= 1", "audio"),
    # ----- d2v -----
    case("version 3", "d2v.version=3", "d2v.version", r"=3: must be one of 1, 2"),
    case("top_k 0", "d2v.top_k=0", "d2v.top_k", rf"{INT} >= 1"),
    case("top_k deeper than the encoder", "d2v.top_k=9", "d2v.top_k",
         r"=9 exceeds the encoder depth 2 .*; e\.g\. --set d2v\.top_k=2"),
    case("target norm unknown", "d2v.target_layer_norm=batch", "d2v.target_layer_norm",
         r"must be one of 'instance', 'layer', 'none'"),
    case("final norm unknown", "d2v.target_final_norm=batch", "d2v.target_final_norm", r"must be one of"),
    case("loss l1", "d2v.loss=l1", "d2v.loss", r"must be one of 'l2', 'smooth_l1'"),
    case("loss_beta negative", "d2v.loss_beta=-1", "d2v.loss_beta", r"finite number >= 0"),
    case("head_layers 3", "d2v.head_layers=3", "d2v.head_layers", r"must be one of 1, 2"),
    case("num_masks 0", "d2v.num_masks=0", "d2v.num_masks", rf"{INT} >= 1"),
    case("decoder_dim 0", "d2v.decoder_dim=0", "d2v.decoder_dim", rf"{INT} >= 1"),
    case("decoder_layers 0", "d2v.decoder_layers=0", "d2v.decoder_layers", rf"{INT} >= 1"),
    case("decoder_kernel even", "d2v.decoder_kernel=4", "d2v.decoder_kernel", r"must be an odd integer >= 1"),
    case("mask_noise_std negative", "d2v.mask_noise_std=-1", "d2v.mask_noise_std", r"finite number >= 0"),
    case("cls_loss nan", "d2v.cls_loss=nan", "d2v.cls_loss", r"finite number >= 0"),
    case("cls_loss without a final norm", "d2v.cls_loss=1", "d2v.cls_loss",
         r"needs a final target norm .*; e\.g\. --set d2v\.target_final_norm=layer", "audio"),
    case("tau0 above 1", "d2v.tau0=1.5", "d2v.tau0", r"must be in \[0, 1\]"),
    case("tau_end negative", "d2v.tau_end=-0.1", "d2v.tau_end", r"must be in \[0, 1\]"),
    case("tau_ramp_steps negative", "d2v.tau_ramp_steps=-1", "d2v.tau_ramp_steps", rf"{INT} >= 0"),
    # ----- the form of --set -----
    case("unknown setting", "train.nonexistent=1", "unknown setting", r"sections: encoder, mask, d2v, train, data"),
    case("no section", "lr=1", "--set expects", r"section\.field=value"),
    # ----- several at once: the first is explained, the others named -----
    case("three bad settings", ["train.lr=inf", "train.seed=-1", "encoder.dim=0"], "encoder.dim",
         r"\(also check train\.lr, train\.seed\)$"),
]


@pytest.mark.parametrize("modality,settings,key,match", CASES)
def test_bad_setting_is_one_line_naming_the_setting_the_value_and_a_fix(modality, settings, key, match):
    with pytest.raises(ValueError) as e:
        get_profile(modality, "ci").with_overrides(settings)
    message = str(e.value)
    assert "\n" not in message, f"not one line: {message!r}"
    assert message.startswith(key), f"does not start with {key}: {message}"
    if key[0].islower() and "." in key and " " not in key:   # a setting: its value and a fix follow
        assert message.startswith(f"{key}="), message
        assert "; e.g. --set " in message, f"no fix: {message}"
    assert re.search(match, message), f"{match!r} not in {message!r}"


@pytest.mark.parametrize("modality,settings,key,match", CASES)
def test_cli_refuses_a_bad_setting_before_reading_data_or_writing(modality, settings, key, match, tmp_path,
                                                                   monkeypatch, capsys):
    monkeypatch.setenv("D2V_LAB_DATA", str(tmp_path / "no-data-here"))   # reading data would be a DataError
    out = tmp_path / "run"
    args = ["pretrain", "--modality", modality, "--profile", "ci", "--out", str(out)]
    assert main(args + [arg for s in settings for arg in ("--set", s)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"d2v-lab: error: {key}") and err.count("\n") == 1, err
    assert not out.exists()


# --- the rules cover everything, and every shipped config passes them -----------------------------------

def test_every_field_of_every_config_section_has_a_rule():
    for section, kind in SECTIONS.items():
        assert set(RULES[section]) == {f.name for f in dataclasses.fields(kind)}, section
    assert set(SECTIONS) == set(RULES)


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("modality", MODALITIES)
@pytest.mark.parametrize("version", [1, 2])
def test_every_profile_passes_the_rules_and_survives_a_round_trip(profile, modality, version):
    cfg = with_version(get_profile(modality, profile), version)
    assert RunConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("modality", MODALITIES)
def test_the_token_counts_the_rules_assume_are_the_adapters(modality):
    cfg = get_profile(modality, "ci")
    adapter = build_model(cfg).student.adapter
    assert adapter.num_tokens - adapter.prefix == maskable_tokens(modality, cfg.data.seq_len)


def test_good_values_of_every_kind_are_read():
    cfg = get_profile("audio", "ci").with_overrides(
        ["train.betas=0.8,0.9", "train.betas=[0.8, 0.95]", "train.compile=true", "train.device=cuda:1",
         "train.lr=3e-4", "data.use_fsdd=0", "mask.ratio=0.3", "train.eval_every=0", "encoder.dim=66"])
    assert cfg.train.betas == (0.8, 0.95) and cfg.train.compile and cfg.train.device == "cuda:1"
    assert cfg.train.lr == 3e-4 and not cfg.data.use_fsdd and cfg.encoder.dim == 66   # audio: even is enough


@pytest.mark.parametrize("make,key", [
    (lambda: TrainConfig(lr=float("inf")), "train.lr=inf"),
    (lambda: TrainConfig(steps=True), "train.steps=True"),        # a bool is not a number of steps
    (lambda: TrainConfig(steps=10.0), "train.steps=10.0"),
    (lambda: DataConfig(max_examples=-1), "data.max_examples=-1"),
    (lambda: ProbeConfig(knn_k=0), "probe.knn_k=0"),
    (lambda: ProbeConfig(supervised_epochs={"video": 1}), "probe.supervised_epochs={'video': 1}"),
    (lambda: AlignConfig(n_shuffles=0), "align.n_shuffles=0"),
])
def test_configs_made_in_python_are_checked_too(make, key):
    with pytest.raises(ValueError, match=rf"^{re.escape(key)}: must be"):
        make()


def test_a_saved_config_from_elsewhere_is_refused_by_name(tmp_path):
    cfg = get_profile("image", "ci")
    saved = cfg.to_dict()
    saved["train"]["future_knob"] = 1
    with pytest.raises(ValueError, match=r"unknown setting\(s\) train\.future_knob .* newer d2v_lab"):
        RunConfig.from_dict(saved)
    saved = cfg.to_dict()
    saved["encoder"]["heads"] = 0            # would divide by zero in EncoderConfig
    with pytest.raises(ValueError, match=r"^encoder\.heads=0: must be"):
        RunConfig.from_dict(saved)
    with pytest.raises(CheckpointError, match=r"checkpoint\.pt: its saved config is not valid here \(encoder\.heads"):
        check_compatible({"modality": "image", "config": saved}, cfg, tmp_path / "checkpoint.pt")
