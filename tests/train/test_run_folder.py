"""The run folder under stress: a torn metrics line, two runs into one folder, Ctrl-C, a killed save, a
read-only folder, and refused runs, which must leave nothing behind. Every user error reaches the CLI
as one line and exit code 2 (Ctrl-C: 130)."""
from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from d2v_lab.cli import main
from d2v_lab.train.checkpoint import CHECKPOINT, read_checkpoint
from d2v_lab.train.lock import claim_run_folder
from d2v_lab.train.loop import RunInterrupted, TrainingStopped, pretrain
from d2v_lab.train.profiles import get_profile
from d2v_lab.train.runs import LOCK, METRICS, RunFolderError, TornLineWarning, read_metrics


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


# --- one run at a time ----------------------------------------------------------------------------------

def test_a_second_run_into_a_folder_in_use_is_refused_at_once(fake_root, tmp_path, capsys):
    out = tmp_path / "run"
    with claim_run_folder(out):                       # the first run, still going
        before = listing(out)
        with pytest.raises(RunFolderError, match=rf"^{out} is in use by another d2v-lab run \(pid {os.getpid()}, "
                                                 r"started \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\); wait for it or "
                                                 r"choose another --out$"):
            pretrain(tiny(), out, progress=False)
        assert main(cli(out)) == 2
        assert "is in use by another d2v-lab run" in one_line_error(capsys)
        assert listing(out) == before == [LOCK]     # nothing of the second run, the first's lock intact
    assert not out.exists()                          # the first run wrote nothing: nothing is left
    assert main(cli(out)) == 0 and LOCK not in listing(out)


HOLDER = textwrap.dedent("""
    import fcntl, json, os, sys, time
    fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.write(fd, json.dumps({"pid": os.getpid(), "started": "2026-01-02 03:04:05"}).encode())
    print("locked", flush=True)
    time.sleep(120)
""")


def test_another_process_holds_the_folder_until_it_is_killed(fake_root, tmp_path, capsys):
    """A run in another process (here a stand-in that takes the same flock) blocks the folder; once it
    is killed with -9, the lock file it leaves behind blocks nothing: the OS released the lock."""
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out / LOCK)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert main(cli(out)) == 2
        assert (f"{out} is in use by another d2v-lab run (pid {holder.pid}, started 2026-01-02 03:04:05); "
                f"wait for it or choose another --out") in one_line_error(capsys)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        holder.stdout.close()
    assert listing(out) == [LOCK]                    # a stale lock file
    assert main(cli(out)) == 0
    assert listing(out) == ["checkpoint.pt", "config.json", "metrics.jsonl"]


def test_the_folder_is_released_when_a_run_fails(fake_root, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(TrainingStopped, match=r"step \d+: loss is (nan|inf).* No checkpoint was saved before it\."):
        pretrain(tiny("image", "train.lr=1e30", "train.steps=20"), out, progress=False)
    assert LOCK not in listing(out)
    with claim_run_folder(out):                      # free again
        pass


# --- Ctrl-C -----------------------------------------------------------------------------------------------

def interrupt_at_call(monkeypatch, method, n):
    from d2v_lab.model.data2vec import Data2Vec
    original = getattr(Data2Vec, method)
    calls = []

    def interrupted(self, *a, **k):
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt
        return original(self, *a, **k)
    interrupted.original = original
    monkeypatch.setattr(Data2Vec, method, interrupted)


def interrupted_original(method):
    """The method ``interrupt_at_call`` replaced (monkeypatch.undo() would also drop fake_root's data root)."""
    return method.original


def test_ctrl_c_in_the_cli_saves_and_says_how_to_continue(fake_root, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    interrupt_at_call(monkeypatch, "forward", 3)
    assert main(cli(out)) == 130
    said = [line for line in capsys.readouterr().err.splitlines() if line.startswith("d2v-lab")]
    assert said == [f"d2v-lab: interrupted: saved at step 2 in {out}; continue with --resume"]
    assert read_checkpoint(out / CHECKPOINT)["step"] == 2 and LOCK not in listing(out)
    from d2v_lab.model.data2vec import Data2Vec
    monkeypatch.setattr(Data2Vec, "forward", interrupted_original(Data2Vec.forward))   # the interrupt only:
    assert main(cli(out, "--resume")) == 0 and read_checkpoint(out / CHECKPOINT)["step"] == 4  # fake_root stays


def test_ctrl_c_in_the_middle_of_an_update_saves_nothing_and_says_so(fake_root, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    interrupt_at_call(monkeypatch, "update_teacher", 3)
    with pytest.raises(RunInterrupted, match=r"^interrupted during step 3's update, which cannot be saved; "
                                             r"nothing was saved; run again to start over$"):
        pretrain(tiny(), out, progress=False)
    assert not (out / CHECKPOINT).exists()
    interrupt_at_call(monkeypatch, "update_teacher", 3)
    pretrain(tiny(), tmp_path / "b", progress=False, stop_after=2)     # a checkpoint of step 2 this time
    interrupt_at_call(monkeypatch, "update_teacher", 2)
    with pytest.raises(RunInterrupted, match=r"the checkpoint of step 2 is kept; continue with --resume$"):
        pretrain(tiny(), tmp_path / "b", progress=False, resume=True)


def test_ctrl_c_before_training_leaves_nothing_behind(fake_root, tmp_path, monkeypatch, capsys):
    def slow_data(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr("d2v_lab.train.loop.pretraining_data", slow_data)
    out = tmp_path / "run"
    assert main(cli(out)) == 130
    assert one_line_error(capsys) == "d2v-lab: interrupted before training began; nothing new was saved\n"
    assert not out.exists()


# --- refused runs leave nothing behind --------------------------------------------------------------------

def existing_run(out):
    pretrain(tiny(), out, progress=False, stop_after=2)


def no_data(out, monkeypatch):
    monkeypatch.setenv("D2V_LAB_DATA", str(out.parent / "empty-data-root"))


def cache_blocked(out, monkeypatch):
    blocker = out.parents[2] / "cache-file"     # a file where the cache folder would go
    blocker.write_text("not a folder")
    monkeypatch.setenv("D2V_LAB_CACHE", str(blocker))


def a_file_there(out):
    out.parent.mkdir(parents=True)
    out.write_text("not a run folder")


def damaged_metrics(out):
    existing_run(out)
    (out / METRICS).write_text('{"step": 1}\n{"step": 2, "lo\n{"step": 2}\n')


REFUSALS = [
    # (name, prepare(out, monkeypatch), extra CLI args, modality, what the one line says)
    ("no data, new nested folder", lambda out, mp: no_data(out, mp), [], "image", r"cifar10 not found"),
    ("cache not writable", lambda out, mp: cache_blocked(out, mp), [], "text", r"set D2V_LAB_CACHE to a writable"),
    ("checkpoint there, no --resume", lambda out, mp: existing_run(out), [], "image", r"exists: pass .*--resume"),
    ("checkpoint of another config", lambda out, mp: existing_run(out), ["--resume", "--set", "train.lr=0.002"],
     "image", r"different config.*train\.lr: 0\.001 != 0\.002"),
    ("checkpoint of another modality", lambda out, mp: existing_run(out), ["--resume"], "audio",
     r"image checkpoint; cannot resume it as audio"),
    ("damaged metrics line", lambda out, mp: damaged_metrics(out), ["--resume"], "image", r"metrics.jsonl, line 2"),
    ("a file named like the folder", lambda out, mp: a_file_there(out), [], "image", r"is a file, not a folder"),
]


@pytest.mark.parametrize("name,prepare,extra,modality,said", REFUSALS, ids=[r[0] for r in REFUSALS])
def test_a_refused_run_leaves_nothing_behind(fake_root, tmp_path, monkeypatch, capsys, name, prepare, extra,
                                             modality, said):
    out = tmp_path / "runs" / "deep" / "run"
    prepare(out, monkeypatch)
    before = snapshot(tmp_path)
    capsys.readouterr()
    assert main(cli(out, *extra, modality=modality)) == 2
    line = one_line_error(capsys)
    assert re.search(said, line), line
    assert snapshot(tmp_path) == before              # not a file, a byte or a folder more


def snapshot(root: Path) -> dict:
    """Every path under root but the fake data root, with the bytes of every file."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))
            if p.relative_to(root).parts[0] != "data"}


# --- a folder that cannot be written ----------------------------------------------------------------------

def test_a_read_only_out_is_one_line_naming_the_folder(fake_root, tmp_path, monkeypatch, capsys):
    """Run as root here, so the read-only folder is simulated where the lock file is created."""
    out = tmp_path / "run"
    out.mkdir()
    real_open = os.open

    def read_only(path, *a, **k):
        if Path(path).parent == out:
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, *a, **k)
    monkeypatch.setattr(os, "open", read_only)
    assert main(cli(out)) == 2
    assert one_line_error(capsys) == (f"d2v-lab: error: {out}: cannot write the lock file {LOCK} there (Read-only "
                                      f"file system): the folder is not writable; make it writable or choose "
                                      f"another --out\n")
    assert listing(out) == []


def test_an_out_that_cannot_be_created_is_one_line_naming_its_parent(fake_root, tmp_path, monkeypatch, capsys):
    out = tmp_path / "locked" / "run"
    real_mkdir = Path.mkdir

    def refused(self, *a, **k):
        if self == out:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_mkdir(self, *a, **k)
    monkeypatch.setattr(Path, "mkdir", refused)
    assert main(cli(out)) == 2
    assert one_line_error(capsys).startswith(f"d2v-lab: error: {out.parent}: cannot write the run folder run/ "
                                             f"there (Permission denied): the folder is not writable")
    assert not out.parent.exists()                   # the parent this run made is gone again


def test_a_really_read_only_out(fake_root, tmp_path, capsys):
    """A folder whose permission bits refuse writes. Root ignores them (CAP_DAC_OVERRIDE), and CI runs
    as root, so there the command runs in a child process that keeps uid 0 but has dropped that
    capability (util-linux's setpriv), as an ordinary user's would."""
    out = tmp_path / "run"
    out.mkdir(mode=0o555)
    if os.geteuid() != 0:
        assert main(cli(out)) == 2
        err = one_line_error(capsys)
    else:
        assert shutil.which("setpriv"), "running as root needs util-linux's setpriv to drop CAP_DAC_OVERRIDE"
        child = subprocess.run(["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--",
                                sys.executable, "-m", "d2v_lab", *cli(out)],
                               capture_output=True, text=True, timeout=300, env=dict(os.environ))
        assert child.returncode == 2, child.stderr[-2000:]
        err = child.stderr
        assert err.startswith("d2v-lab: ") and err.count("\n") == 1, err
    assert "the folder is not writable" in err
    assert listing(out) == []                        # the refused run left nothing behind
