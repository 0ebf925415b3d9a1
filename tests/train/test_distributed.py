"""Data parallel training (train/distributed.py) on this CPU with the gloo backend: two processes with
a global batch B take the same steps as one process with batch B; a distributed run killed with
SIGKILL and resumed continues with identical losses; gradient accumulation gives the update of the
whole batch; only rank 0 writes; the EMA teachers of all processes stay identical."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from d2v_lab.cli import main
from d2v_lab.model.masking import MaskConfig
from d2v_lab.model.modalities import AudioAdapter, ImageAdapter
from d2v_lab.train.checkpoint import read_checkpoint
from d2v_lab.train.distributed import World
from d2v_lab.train.loop import pretrain
from d2v_lab.train.profiles import get_profile
from d2v_lab.train.runs import CHECKPOINT, METRICS

from builders import write_cifar, write_tinystories

# 20 steps of the ci model, a line of metrics per step, checkpoints every 5; one thread per process
SETTINGS = ["train.log_every=1", "train.eval_every=10", "train.checkpoint_every=5", "train.device=cpu",
            "train.threads=1"]
REL = 1e-5   # the target: two processes match one to this relative tolerance over 20 steps


def config(modality: str, *extra: str):
    return get_profile(modality, "ci").with_overrides([*SETTINGS, *extra])


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """A small image and text data root for the whole module (the spawned processes read it too)."""
    root = tmp_path_factory.mktemp("data")
    write_cifar(root)
    write_tinystories(root, n_train=120)
    with pytest.MonkeyPatch.context() as m:
        m.setenv("D2V_LAB_DATA", str(root))
        yield root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def digest(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for t in module.state_dict().values():
        h.update(t.detach().contiguous().view(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def _rank(rank: int, size: int, port: int, cfg, out: Path, report: Path) -> None:
    """One process of a run, as torchrun would start it (its place in the environment)."""
    os.environ.update(WORLD_SIZE=str(size), RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    result = pretrain(cfg, out, progress=False)
    report.joinpath(f"rank{rank}.json").write_text(json.dumps(
        {"metrics": result.metrics, "teacher": digest(result.model.teacher),
         "student": digest(result.model.student)}))


def run_processes(cfg, out: Path, n: int = 2) -> list[dict]:
    """Train ``cfg`` in ``n`` processes (gloo); what each process returned."""
    report = out.parent / f"{out.name}.ranks"
    report.mkdir(parents=True)
    mp.spawn(_rank, args=(n, free_port(), cfg, out, report), nprocs=n, join=True)
    return [json.loads((report / f"rank{r}.json").read_text()) for r in range(n)]


def lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / METRICS).read_text().splitlines()]


def assert_close_losses(a: list[dict], b: list[dict], rel: float = REL) -> float:
    """Same steps, and every loss (and held-out loss) within ``rel``; returns the largest difference."""
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, 21))
    worst = 0.0
    for x, y in zip(a, b):
        for key in ("loss", "heldout_loss", "reg_loss", "cls_loss"):
            if key in x or key in y:
                worst = max(worst, abs(x[key] - y[key]) / abs(y[key]))
                assert x[key] == pytest.approx(y[key], rel=rel), (x["step"], key)
    return worst


@pytest.fixture(scope="module")
def image_runs(data_root, tmp_path_factory):
    """The image ci run in one process, and in two: (folder, ranks' reports) of each."""
    base = tmp_path_factory.mktemp("image")
    cfg = config("image")
    one = pretrain(cfg, base / "one", progress=False)
    two = run_processes(cfg, base / "two")
    return base / "one", one, base / "two", two


# --- two processes == one --------------------------------------------------------------------------------

def test_two_processes_take_the_steps_of_one_image(image_runs):
    one_dir, one, two_dir, ranks = image_runs
    worst = assert_close_losses(lines(two_dir), lines(one_dir))
    print(f"image: largest relative loss difference, 2 processes vs 1: {worst:.1e}")
    assert one.metrics == lines(one_dir)


def test_two_processes_take_the_steps_of_one_text(data_root, tmp_path):
    cfg = config("text")
    pretrain(cfg, tmp_path / "one", progress=False)
    ranks = run_processes(cfg, tmp_path / "two")
    worst = assert_close_losses(lines(tmp_path / "two"), lines(tmp_path / "one"))
    print(f"text: largest relative loss difference, 2 processes vs 1: {worst:.1e}")
    assert ranks[0]["teacher"] == ranks[1]["teacher"]


def test_every_process_has_the_same_student_and_ema_teacher(image_runs):
    """The teacher is never sent: identical gradients give identical students, hence identical EMAs."""
    _, _, _, ranks = image_runs
    assert ranks[0]["student"] == ranks[1]["student"]
    assert ranks[0]["teacher"] == ranks[1]["teacher"]


def test_only_rank_0_writes(image_runs):
    one_dir, _, two_dir, ranks = image_runs
    # the same files as a one-process run, each written once (one line per step, not one per process)
    assert sorted(p.name for p in two_dir.iterdir()) == sorted(p.name for p in one_dir.iterdir())
    assert [r["step"] for r in lines(two_dir)] == list(range(1, 21))
    assert ranks[0]["metrics"] == lines(two_dir) and ranks[1]["metrics"] == []
    assert read_checkpoint(two_dir / CHECKPOINT)["step"] == 20


# --- a distributed run killed and resumed ---------------------------------------------------------------

def torchrun(out: Path, log: Path, *extra: str) -> subprocess.Popen:
    """``torchrun --nproc_per_node 2 -m d2v_lab pretrain`` of the image ci run, in its own process group,
    its output into ``log`` (a pipe nobody reads while we wait could fill and stop it)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(free_port()), "-m", "d2v_lab", "pretrain", "--modality", "image", "--profile", "ci",
           "--out", str(out), *[a for s in SETTINGS for a in ("--set", s)], *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(log, "w") as f:
        return subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (Linux: from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:   # a zombie (killed, not yet reaped by its new parent) is dead too
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds torchrun's workers in /proc")
def test_killed_distributed_run_resumes_with_identical_losses(image_runs, tmp_path):
    _, _, two_dir, _ = image_runs
    out, log = tmp_path / "run", tmp_path / "log"
    proc = torchrun(out, log)
    ckpt = out / CHECKPOINT
    while proc.poll() is None and not ckpt.exists():   # kill it once the first checkpoint is on disk
        time.sleep(0.01)
    # torchrun starts each worker in a session of its own: kill the workers and torchrun, without warning
    doomed = children(proc.pid) + [proc.pid]
    for pid in doomed:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()
    while any(alive(pid) for pid in doomed):
        time.sleep(0.01)
    assert len(doomed) == 3, log.read_text()            # torchrun and its two workers
    assert ckpt.exists(), log.read_text()
    if read_checkpoint(ckpt)["step"] >= 20:
        pytest.fail(f"the run finished before it could be killed; make it longer\n{log.read_text()}")
    assert len(lines(out)) < 20

    proc = torchrun(out, log, "--resume")
    proc.wait(timeout=300)
    said = log.read_text()
    assert proc.returncode == 0, said
    # the lines of the uninterrupted two-process run, bit for bit (wall-clock speed aside)
    keys = ("step", "loss", "target_std", "pred_std", "lr", "tau", "grad_norm", "heldout_loss")
    assert [{k: r.get(k) for k in keys} for r in lines(out)] == [{k: r.get(k) for k in keys} for r in lines(two_dir)]
    a, b = read_checkpoint(ckpt)["model"], read_checkpoint(two_dir / CHECKPOINT)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert said.count("image: 20/20 steps") == 1   # rank 0 alone says so


# --- gradient accumulation ------------------------------------------------------------------------------

def test_grad_accum_2_takes_the_steps_of_1(data_root, tmp_path):
    """With a [CLS] loss too (weighted by rows, the regression by masked tokens), logged apart."""
    extra = ["d2v.cls_loss=1.0", "d2v.num_masks=3", "train.eval_every=0"]
    whole = pretrain(config("image", *extra), tmp_path / "one", progress=False).metrics
    parts = pretrain(config("image", *extra, "train.grad_accum=2"), tmp_path / "two", progress=False).metrics
    worst = assert_close_losses(parts, whole)
    print(f"grad_accum 2 vs 1: largest relative loss difference {worst:.1e}")
    assert all({"reg_loss", "cls_loss"} <= set(r) for r in whole)
    assert all(r["loss"] == pytest.approx(r["reg_loss"] + r["cls_loss"], rel=1e-6) for r in whole + parts)


@pytest.mark.parametrize("setting,message", [("train.grad_accum=0", "train.grad_accum=0: must be an integer >= 1"),
                                             ("train.grad_accum=64", "more micro-batches than"),
                                             ("train.grad_accum=1.5", "cannot read it as an integer")])
def test_cli_bad_grad_accum_exits_2(tmp_path, capsys, setting, message):
    assert main(["pretrain", "--modality", "image", "--profile", "ci", "--out", str(tmp_path / "x"),
                 "--set", setting]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


# --- the pieces -----------------------------------------------------------------------------------------

def test_ranks_rows_cover_the_batch_once():
    for n in (1, 7, 32):
        for size in (1, 2, 3):
            rows = [World(r, size).rows(n) for r in range(size)]
            assert rows[0][0] == 0 and rows[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(rows, rows[1:]))


@pytest.mark.parametrize("adapter", [ImageAdapter(32, MaskConfig("block", 0.6)),
                                     AudioAdapter(32, MaskConfig("span", 0.5, span=5), freq_warp=0.2,
                                                  time_stretch=0.1)], ids=["image", "audio"])
def test_augmenting_parts_with_their_rows_of_the_draws_is_augmenting_the_whole(adapter):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (10, 3, 32, 32), dtype=torch.uint8) if adapter.modality == "image" else \
        torch.randn(10, 64, 100)
    whole = adapter.augment(x, torch.Generator().manual_seed(3))
    draws = adapter.draw_augment(10, torch.Generator().manual_seed(3))
    parts = [adapter.apply_augment(x[a:b], {k: v[a:b] for k, v in draws.items()}) for a, b in ((0, 3), (3, 10))]
    assert torch.equal(torch.cat(parts), whole)
    assert not torch.equal(whole, adapter.augment(x, g))   # the draws do depend on the generator
