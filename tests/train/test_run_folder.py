"""The run folder under stress: a torn metrics line, two runs into one folder, Ctrl-C, a killed save, a
read-only folder, and refused runs, which must leave nothing behind. Every user error reaches the CLI
as one line and exit code 2 (Ctrl-C: 130)."""
from __future__ import annotations

import pytest

from d2v_lab.cli import main
from d2v_lab.train.loop import pretrain
from d2v_lab.train.profiles import get_profile
from d2v_lab.train.runs import METRICS, RunFolderError, TornLineWarning, read_metrics


def tiny(modality: str = "image", *extra: str):
    return get_profile(modality, "ci").with_overrides([
        "train.steps=4", "train.batch_size=8", "train.log_every=1", "train.eval_every=0",
        "train.checkpoint_every=100", "train.device=cpu", *extra])


def cli(out, *extra, modality="image"):
    return ["pretrain", "--modality", modality, "--profile", "ci", "--out", str(out), "--set", "train.steps=4",
            "--set", "train.batch_size=8", "--set", "train.eval_every=0", "--set", "train.log_every=1",
            "--set", "train.device=cpu", *extra]


def listing(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("d2v-lab: ") and err.count("\n") == 1, err
    return err


# --- metrics.jsonl ------------------------------------------------------------------------------------

def write_metrics(folder, text):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / METRICS).write_text(text)


def test_a_torn_last_metrics_line_is_dropped_with_a_warning_naming_the_file(tmp_path):
    write_metrics(tmp_path, '{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo')
    with pytest.warns(TornLineWarning, match=rf"{tmp_path / METRICS}: dropped its last line 3, which is incomplete"):
        assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]


def test_nul_bytes_after_a_power_cut_count_as_a_torn_last_line(tmp_path):
    write_metrics(tmp_path, '{"step": 1, "loss": 2.0}\n' + "\0" * 20)
    with pytest.warns(TornLineWarning):
        assert [r["step"] for r in read_metrics(tmp_path)] == [1]


@pytest.mark.parametrize("bad", ['{"step": 2, "lo', '[1, 2]', '{"loss": 1.0}'])
def test_a_damaged_line_before_the_last_is_an_error_naming_file_and_line(tmp_path, bad):
    write_metrics(tmp_path, f'{{"step": 1}}\n\n{bad}\n{{"step": 3}}\n')
    with pytest.raises(RunFolderError, match=rf"^{tmp_path / METRICS}, line 3: not a metrics row .*; delete that line"):
        read_metrics(tmp_path)


def test_resume_after_a_torn_metrics_line(fake_root, tmp_path, capsys):
    """Power loss during a log write, then --resume: the run continues, says one line about the
    dropped line, and the file is whole again."""
    out = tmp_path / "run"
    pretrain(tiny(), out, progress=False, stop_after=2)
    with open(out / METRICS, "a") as f:
        f.write('{"step": 3, "loss": 0.')     # step 3 was being logged when the power went
    assert main(cli(out, "--resume")) == 0
    said = [line for line in capsys.readouterr().err.splitlines() if line.startswith("d2v-lab")]  # not the bar
    assert len(said) == 1 and said[0].startswith(f"d2v-lab: warning: {out / METRICS}: dropped its last line 3"), said
    assert [r["step"] for r in read_metrics(out)] == [1, 2, 3, 4]
