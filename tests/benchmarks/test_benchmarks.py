"""The benchmark scripts run end to end on tiny generated data (their numbers are measured elsewhere;
here: they work, write what they say, and reuse finished runs)."""
from __future__ import annotations

import json
import math
import runpy
import sys
from pathlib import Path

from builders import write_cifar

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def run_script(name: str, args: list[str], monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", [name, *args])
    runpy.run_path(str(BENCHMARKS / name), run_name="__main__")


def test_recipe_seeds_probes_every_seed_and_reuses_finished_runs(tmp_path, monkeypatch, capsys):
    root = tmp_path / "data"     # enough images for a stratified validation split and k-NN with k = 10
    write_cifar(root, n_train_batches=2, per_batch=100, n_test=30)
    monkeypatch.setenv("D2V_LAB_DATA", str(root))
    args = ["--modality", "image", "--profile", "ci", "--seeds", "0", "1", "--out", str(tmp_path / "seeds"),
            "--set", "train.steps=2", "--set", "train.eval_every=0", "--set", "train.device=cpu"]
    run_script("recipe_seeds.py", args, monkeypatch)
    first = json.loads((tmp_path / "seeds" / "seeds.json").read_text())
    assert [r["seed"] for r in first["rows"]] == [0, 1] and first["task"] == "cifar10"
    assert first["overrides"] == ["train.steps=2", "train.eval_every=0", "train.device=cpu"]
    for r in first["rows"]:
        assert 0 <= r["pretrained"] <= 1 and 0 <= r["random_init"] <= 1
    configs = [json.loads((tmp_path / "seeds" / f"seed{s}" / "config.json").read_text()) for s in (0, 1)]
    assert [c["train"]["seed"] for c in configs] == [0, 1] and configs[0]["train"]["steps"] == 2
    for s, r in zip((0, 1), first["rows"]):  # the summary row is that seed's probe
        probe = json.loads((tmp_path / "seeds" / f"seed{s}" / "probe.json").read_text())
        assert probe["linear"]["pretrained"] == r["pretrained"] and probe["linear"]["random_init"] == r["random_init"]
    out = capsys.readouterr().out
    assert "pretrained: mean" in out and "sd over seeds" in out
    run_script("recipe_seeds.py", args, monkeypatch)  # again: nothing retrained, the same numbers
    assert "reusing the finished checkpoint" in capsys.readouterr().out
    again = json.loads((tmp_path / "seeds" / "seeds.json").read_text())
    assert [r["pretrained"] for r in again["rows"]] == [r["pretrained"] for r in first["rows"]]


def test_gpu_check_runs_on_the_cpu_and_reports_every_check(tmp_path, monkeypatch, capsys):
    out = tmp_path / "gpu_check.json"
    run_script("gpu_check.py", ["--profile", "ci", "--device", "cpu", "--steps", "2", "--no-compile",
                                "--modalities", "image", "audio", "--json", str(out)], monkeypatch)
    report = json.loads(out.read_text())
    assert [r["modality"] for r in report["rows"]] == ["image", "audio"]
    assert report["peak_precision"] in ("fp32", "bf16") and report["peak_flop_per_s"] > 0
    for r in report["rows"]:
        assert r["flash"] == "ok" and r["loss_finite"]   # the CPU has a flash-attention kernel too
        assert r["loss_rel_diff"] < 0.02 and 0 < r["targets_rel_err"] < 0.05  # bf16 differs, a little
        assert r["eager_ms"] > 0 and r["eager_samples_per_s"] > 0 and "compiled_ms" not in r
        for key in ("GFLOP_per_step", "mask_ms", "prep_ms", "outside_share", "eager_mfu"):   # issue 16
            assert math.isfinite(r[key]), key
        assert 0 < r["mask_ms"] <= r["prep_ms"] < r["eager_ms"]    # mask sampling is part of the preparation
        assert 0 <= r["outside_share"] <= 1 and r["GFLOP_per_step"] > 0 and r["eager_mfu"] > 0
    assert "on CPU" in capsys.readouterr().out


def test_masking_benchmark_times_reference_and_batched_samplers(capsys):
    main = runpy.run_path(str(BENCHMARKS / "masking.py"))["main"]   # loaded, not run as a script
    rows = main(["--rows", "32", "--repeats", "1"])
    assert [r["case"] for r in rows] == ["image block (1.0)", "image inverse_block (2.0)", "audio span (1.0)",
                                         "audio span (2.0)", "text random (1.0)", "text random (2.0)"]
    for r in rows:
        assert r["reference_ms"] > 0 and r["cpu_ms"] > 0 and r["cpu_speedup"] > 0
    out = capsys.readouterr().out
    assert "32 rows per call" in out and all(r["case"] in out for r in rows)


def test_throughput_times_the_training_step_on_the_cpu(tmp_path, monkeypatch, capsys):
    out = tmp_path / "throughput.json"
    run_script("throughput.py", ["--profile", "ci", "--steps", "1", "--precision", "fp32", "--modalities", "text",
                                 "--json", str(out)], monkeypatch)
    report = json.loads(out.read_text())
    assert report["peak_flop_per_s"]["fp32"] > 0
    assert [(r["version"], r["num_masks"]) for r in report["rows"]] == [(1, 1), (2, 1), (2, 2)]   # ci's M = 2
    for r in report["rows"]:
        for key in ("step_s", "mask_s", "prep_s", "outside_share", "samples_per_s", "mfu"):      # issue 16
            assert math.isfinite(r[key]), key
        assert 0 < r["mask_s"] <= r["prep_s"] < r["step_s"] and 0 <= r["outside_share"] <= 1
        assert r["samples_per_s"] > 0 and r["flops_per_step"] > 0 and r["mfu"] > 0
    header = capsys.readouterr().out.splitlines()[1]
    assert "mask ms" in header and "outside" in header and "MFU" in header
