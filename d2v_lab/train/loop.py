"""One training loop for every modality.

AdamW with linear warm-up and cosine decay, gradient clipping, an EMA teacher update after every
step, a progress bar, one JSON line of metrics per logged step (``metrics.jsonl``), atomic checkpoints,
and exact resumption: every step draws its randomness (batch order, masks, augmentation, noise) from
a generator seeded by (seed, step), so a run interrupted at step s and resumed from its checkpoint
computes the same updates as one that never stopped. The update itself is ``train_step``, the one step
that pretraining takes and the benchmarks (benchmarks/throughput.py, gpu_check.py) time. Under torchrun
several processes share every step, and ``train.grad_accum`` splits it into micro-batches: both give
the update of the whole batch (``train_step``; ``distributed.py``).

Guards: a NaN/inf loss or gradient norm stops the run (nothing is saved from the broken step); so
does representation collapse, detected as the std of the targets across positions falling below
``min_target_std`` (fairseq's ``min_target_var``): if every position gets the same target, the student
can minimise the loss by predicting a constant and learns nothing.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from d2v_lab.model.data2vec import Data2Vec, Data2VecOutput
from d2v_lab.model.ema import init_shares, tau_at, tau_schedule

from .checkpoint import (
    CheckpointError,
    build_model,
    check_compatible,
    read_checkpoint,
    remove_stale_tmp,
    save_checkpoint,
)
from .config import RunConfig
from .device import autocast_for, resident, synchronize, tune_malloc
from .distributed import SINGLE, World, joined, sum_gradients
from .inputs import PretrainData, pretraining_data
from .lock import claim_run_folder
from .profiles import follow_run_length
from .runs import CHECKPOINT, CONFIG, METRICS, TOKENIZER, RunFolderError, read_metrics, write_failure


class TrainingStopped(RuntimeError):
    """Training stopped on purpose: the loss diverged or the representation collapsed."""


class InterruptedUpdate(KeyboardInterrupt):
    """Ctrl-C arrived after the optimizer step began and before the teacher update ended: the student
    and the teacher may be out of step, so this state must not be saved."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped ``pretrain`` during training. Its message is one line that says what was saved
    and how to continue (the CLI prints it); it is still a KeyboardInterrupt, so a notebook stops too."""


@dataclass
class TrainResult:
    out_dir: Path
    step: int
    model: Data2Vec
    metrics: list[dict]


def lr_at(step: int, cfg) -> float:
    """Linear warm-up to cfg.lr, then cosine decay to 0 at cfg.steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def derived_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (no collisions like seed + 7919 * epoch would have)."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1, np.uint64)[0] >> np.uint64(1))


def step_generator(seed: int, step: int) -> torch.Generator:
    """All randomness of one step comes from here, so a resumed run repeats it exactly."""
    return torch.Generator().manual_seed(derived_seed(seed, step, 1))


def batch_indices(step: int, n: int, batch_size: int, seed: int) -> torch.Tensor:
    """Epoch-wise shuffling without replacement; the permutation of epoch e depends only on (seed, e)."""
    per_epoch = max(1, n // batch_size)
    epoch, i = divmod(step, per_epoch)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(derived_seed(seed, epoch, 2)))
    return perm[i * batch_size:(i + 1) * batch_size]


def make_optimizer(model: Data2Vec, cfg) -> torch.optim.AdamW:
    """AdamW on the student (+ head/decoder); no weight decay on biases, norms, positions, embeddings."""
    no_decay = {id(p) for m in model.modules() if isinstance(m, (torch.nn.Embedding, torch.nn.LayerNorm))
                for p in m.parameters()}
    decay_group, no_decay_group = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue  # the teacher
        skip = p.ndim < 2 or id(p) in no_decay or name.endswith(("pos", "mask_embedding"))
        (no_decay_group if skip else decay_group).append(p)
    groups = [{"params": decay_group, "weight_decay": cfg.weight_decay},
              {"params": no_decay_group, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)


@dataclass
class StepOutput:
    result: Data2VecOutput      # this process's (last micro-batch's) output: predictions, targets, (B*M, T) masks
    grad_norm: torch.Tensor     # () total gradient norm before clipping
    mask_s: float               # host seconds spent sampling the B*M masks
    prep_s: float               # host seconds preparing the model's inputs outside it: augmentation,
                                # copies to the device, mask sampling (mask_s is part of it). On a GPU,
                                # synchronize before the step to keep earlier queued work out of it.
    # the whole (global) batch's numbers, the same in every process: with one process and no
    # accumulation they are result's own; otherwise combined over micro-batches and processes
    loss: torch.Tensor | None = None       # () the loss the update followed
    reg_loss: torch.Tensor | None = None   # () its regression part
    cls_loss: torch.Tensor | None = None   # () its [CLS] part (unweighted), when trained
    target_std: float = float("nan")       # Data2VecOutput.target_std over the whole batch
    pred_std: float = float("nan")


def _rng_state(device: torch.device) -> tuple:
    """torch's global RNG state: the CPU's, and the accelerator's where the model runs on one."""
    if device.type == "cuda":
        return torch.get_rng_state(), torch.cuda.get_rng_state(device)
    if device.type == "mps":
        return torch.get_rng_state(), torch.mps.get_rng_state()
    return torch.get_rng_state(), None


def _set_rng_state(state: tuple, device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if device.type == "cuda":
        torch.cuda.set_rng_state(state[1], device)
    elif device.type == "mps":
        torch.mps.set_rng_state(state[1])


def _sums_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64   # MPS has no float64


def _moments(t: torch.Tensor) -> torch.Tensor:
    """(n, D) -> [n, per-channel sum (D), per-channel sum of squares (D)] in float64: what the std
    over the rows of several parts is computed from (``_std``)."""
    t = t.detach().to(_sums_dtype(t.device))
    return torch.cat([t.new_tensor([len(t)]), t.sum(0), (t * t).sum(0)])


def _std(moments: torch.Tensor) -> float:
    """The per-channel std (unbiased, as torch.std) averaged over channels, from summed ``_moments``."""
    n, rest = moments[0], moments[1:]
    total, squares = rest.chunk(2)
    var = (squares - total * total / n) / (n - 1)
    return float(var.clamp(min=0).sqrt().mean())


def train_step(model: Data2Vec, optimizer: torch.optim.Optimizer, x: torch.Tensor, generator: torch.Generator,
               *, lr: float, tau: float, clip_grad: float, autocast=contextlib.nullcontext,
               world: World = SINGLE, grad_accum: int = 1) -> StepOutput:
    """One data2vec update on the raw batch ``x`` (B samples as the data holds them, on the CPU or
    already on the model's device): the step that pretraining takes and the benchmarks time.

    Augment x and sample the masks of its M copies (Sec. 3 of data2vec 2.0, "Multi-mask training"),
    both from ``generator``; forward under ``autocast``; backward; clip the gradient norm to
    ``clip_grad``; AdamW at learning rate ``lr``; then the EMA teacher update with decay ``tau``
    (Sec. 3 of both papers). Dropout, drop-path and the decoder's noise draw from torch's global RNG:
    seed it before the step to repeat the step exactly.

    Several processes (``world``, see distributed.py) and micro-batches (``grad_accum``): x is the
    GLOBAL batch. The augmentation and the masks are drawn for all of it, each process takes its rows
    (``world.rows``) and splits them into ``grad_accum`` micro-batches, and each micro-batch's loss is
    weighted by its share of the batch's masked tokens. The loss is a mean over masked positions, so
    the gradients summed (over micro-batches by backward, over processes by one all-reduce) are the
    gradient of the whole batch's loss: the same update as one process with the whole batch. Every
    part starts from the same random state and draws the decoder's noise (and 1.0 text's BERT
    corruption) for the whole batch, keeping its rows; dropout and drop-path (off in every profile)
    draw per part from that state, so with them on the parts' draws are not the whole batch's.

    Raises TrainingStopped, before anything is updated, when the loss or the gradient norm is not
    finite, and InterruptedUpdate (a KeyboardInterrupt) when interrupted in the one window where the
    model is half updated (after the optimizer step began, before the teacher update ended).
    """
    device = next(model.parameters()).device
    adapter, M, P = model.student.adapter, model.cfg.num_masks, model.student.adapter.prefix
    B = len(x)
    lo, hi = world.rows(B)
    if hi - lo < grad_accum:
        raise ValueError(f"a batch of {B} cannot be split into {world.size} process(es) x {grad_accum} "
                         f"micro-batch(es); raise train.batch_size or lower train.grad_accum")
    whole = world.size == 1 and grad_accum == 1
    tic = time.perf_counter()
    draws = adapter.draw_augment(B, generator)   # for the whole batch: each part applies its rows
    # The masks of the B*M masked copies, drawn here (the same draws Data2Vec.forward would make) so
    # that their cost is measured: mask sampling runs on the CPU, outside the model.
    mask_tic = time.perf_counter()
    mask = adapter.sample_mask(B * M, generator)                          # (B*M, T), row i*M+m: sample i
    mask_s = time.perf_counter() - mask_tic
    on_device = mask.to(device, non_blocking=True)
    bounds = [lo + (hi - lo) * j // grad_accum for j in range(grad_accum + 1)]
    parts = []   # (first sample, last + 1, augmented input, masks) of each micro-batch of this process
    for a, b in zip(bounds, bounds[1:]):
        xa = adapter.apply_augment(x[a:b].to(device, non_blocking=True), {k: v[a:b] for k, v in draws.items()})
        parts.append((a, b, xa, on_device[a * M:b * M]))
    prep_s = time.perf_counter() - tic

    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    masked_all = int(mask[:, P:].sum())                                   # masked tokens of the whole batch
    # every part starts from the same random state (torch's global RNG: the decoder's noise; the step's
    # generator: BERT's corruption), draws for the whole batch and keeps its rows
    rng = None if whole else (_rng_state(device), generator.get_state())
    sums = []   # per micro-batch: its weighted loss, regression and [CLS] losses, target and pred moments
    for a, b, xa, ma in parts:
        if rng is not None:
            _set_rng_state(rng[0], device)
            generator.set_state(rng[1])
        with autocast():
            result = model(xa, generator, mask=ma, part_of=None if whole else (a, B))
        loss = result.loss
        if not whole:
            tokens = int(mask[a * M:b * M, P:].sum()) / masked_all    # this part's share of the masked tokens
            rows = (b - a) / B                                        # ... and of the rows ([CLS] loss: a row mean)
            loss = result.loss * tokens
            if result.cls_loss is not None and rows != tokens:        # equal for every fixed-count mask
                loss = loss + model.cfg.cls_loss * result.cls_loss * (rows - tokens)
            cls = result.cls_loss.detach() * rows if result.cls_loss is not None else torch.zeros((), device=device)
            losses = torch.stack([loss.detach(), result.reg_loss.detach() * tokens, cls.float()])
            sums.append(torch.cat([losses.to(_sums_dtype(device)),
                                   _moments(result.target), _moments(result.pred)]))
        loss.backward()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if whole:
        loss, reg_loss, cls_loss = result.loss.detach(), result.reg_loss.detach(), result.cls_loss
        target_std, pred_std = result.target_std, result.pred_std
    else:
        sum_gradients(params, world)
        total = world.all_reduce(torch.stack(sums).sum(0))
        loss, reg_loss = total[0], total[1]
        cls_loss = total[2] if result.cls_loss is not None else None
        stats = total[3:].chunk(2)                                    # the targets' moments, the predictions'
        target_std, pred_std = _std(stats[0]), _std(stats[1])
    if not torch.isfinite(loss):
        raise TrainingStopped(f"loss is {loss.item()}; stopping before the update. "
                              f"Try a lower train.lr or fp32 precision.")
    grad_norm = torch.nn.utils.clip_grad_norm_(params, clip_grad)
    if not torch.isfinite(grad_norm):   # e.g. a bf16 overflow in backward: the update would be NaN
        raise TrainingStopped(f"gradient norm is {grad_norm.item()}; stopping before the update. "
                              f"Try a lower train.lr or fp32 precision.")
    try:   # student and teacher change together
        optimizer.step()
        model.update_teacher(tau)
    except KeyboardInterrupt as e:
        raise InterruptedUpdate("interrupted while the student and teacher were being updated") from e
    cls_loss = cls_loss.detach() if cls_loss is not None else None
    return StepOutput(result, grad_norm, mask_s, prep_s, loss, reg_loss, cls_loss, target_std, pred_std)


def time_train_steps(step: Callable[[], StepOutput], n: int, device: torch.device) -> dict:
    """Time ``n`` calls of ``step`` (a train_step with its arguments bound) after one untimed warm-up
    call: median seconds of the whole step, of its mask sampling and of its input preparation, and the
    share of the step spent outside the model (total prep / total step, in [0, 1]). The device is
    synchronized around every step, so each time is the whole step and no queued work of the previous
    step lands in the next one's preparation."""
    step()
    whole, mask, prep = [], [], []
    for _ in range(n):
        synchronize(device)
        tic = time.perf_counter()
        out = step()
        synchronize(device)
        whole.append(time.perf_counter() - tic)
        mask.append(out.mask_s)
        prep.append(out.prep_s)
    return {"step_s": statistics.median(whole), "mask_s": statistics.median(mask),
            "prep_s": statistics.median(prep), "outside_share": sum(prep) / sum(whole)}


@torch.no_grad()
def heldout_loss(model: Data2Vec, x: torch.Tensor, seed: int = 1234, teacher=None,
                 batch_size: int = 256, autocast=contextlib.nullcontext) -> float:
    """Masked-prediction loss on held-out data with FIXED masks (seeded), never used for updates.
    ``teacher`` fixes the targets (e.g. a frozen snapshot) so students can be compared fairly."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, n = 0.0, 0
    with torch.random.fork_rng(devices=[]):  # leave the caller's random state alone
        for i, chunk in enumerate(x.split(batch_size)):
            g = torch.Generator().manual_seed(seed + i)
            torch.manual_seed(seed + i)  # the decoder's noise
            with autocast():
                out = model(chunk.to(device), g, teacher=teacher)
            total += float(out.loss) * len(chunk)
            n += len(chunk)
    model.train(was_training)
    return total / n


def pretrain(cfg: RunConfig, out_dir: str | Path, resume: bool = False, data: PretrainData | None = None,
             stop_after: int | None = None, progress: bool = True, root=None,
             callback: Callable[[int, Data2Vec, Data2VecOutput], None] | None = None) -> TrainResult:
    """Pretrain one modality into ``out_dir`` (checkpoint.pt, metrics.jsonl, config.json).

    ``resume``: continue the checkpoint in out_dir (refused if its modality or config differ).
    ``stop_after``: stop (with a checkpoint) after this many total steps, as if interrupted.
    ``callback(step, model, output)``: called after every update (e.g. to watch the teacher move);
    with several processes or micro-batches ``output`` is this process's last micro-batch's.
    The EMA schedule follows the run length where ``cfg.d2v.tau_init_share`` > 0 (``follow_run_length``);
    the config saved and compared is that one.

    One run at a time writes into out_dir (a second one is refused: ``train/lock.py``). Everything that
    can refuse the run (the device, the folder, the checkpoint, the model, the data) is checked before
    the first file is written, and a refused run leaves nothing behind.

    Under torchrun every process calls this (``distributed.py``): each trains on its rows of every
    batch; rank 0 alone holds the folder's lock, writes its files and shows progress, and only its
    TrainResult has the metrics; ``resume`` reads the checkpoint in every process.
    """
    tune_malloc()
    cfg = follow_run_length(cfg)   # the EMA schedule of this run's length, before it is saved or compared
    # refuses a missing device before anything is written; joins the other processes under torchrun
    with joined(cfg.train.device) as (world, device), contextlib.ExitStack() as held:
        try:   # the lock, like every file of the run, is rank 0's: the other processes only read
            out = held.enter_context(claim_run_folder(out_dir)) if world.main else Path(out_dir)
        except BaseException:
            world.agree(False)   # the others stop too, rather than wait for rank 0 (see _pretrain)
            raise
        try:   # the folder is held until the run ends, however it ends
            return _pretrain(cfg, out, device, world, resume, data, stop_after, progress and world.main, root,
                             callback)
        except KeyboardInterrupt as e:
            if isinstance(e, RunInterrupted):
                raise
            raise RunInterrupted("interrupted before training began; nothing new was saved") from e


def _pretrain(cfg, out, device, world, resume, data, stop_after, progress, root, callback) -> TrainResult:
    try:
        setup = _setup(cfg, out, device, world, resume, data, stop_after, progress, root)
    except BaseException:
        world.agree(False)
        raise
    # every process checked what could refuse the run: one that refused (rank 0's lock, its files)
    # stops the others here instead of leaving them waiting at their first all-reduce
    if not world.agree(True):
        raise RunFolderError("another process of this run refused it; its message says why")
    model, optimizer, data, start, end, history = setup
    if start >= end:
        return TrainResult(out, start, model.eval(), history)

    t = cfg.train
    threads = torch.get_num_threads()
    if t.threads:
        torch.set_num_threads(t.threads)
    try:
        history = _train_steps(model, optimizer, cfg, data, device, world, start, end, history, out / CHECKPOINT,
                               out / METRICS, progress, callback)
    finally:
        torch.set_num_threads(threads)
    return TrainResult(out, end, model.eval(), history)


def _setup(cfg, out, device, world, resume, data, stop_after, progress, root):
    """Everything before the first step: what can refuse the run is checked before the first file is
    written (by rank 0 alone). Returns (model, optimizer, data, start step, end step, metrics so far)."""
    t = cfg.train
    ckpt_path, metrics_path = out / CHECKPOINT, out / METRICS

    state = None
    if ckpt_path.exists():
        if not resume:
            raise FileExistsError(f"{ckpt_path} exists: pass resume=True (--resume) to continue it, "
                                  f"or choose another output folder")
        state = read_checkpoint(ckpt_path)
        check_compatible(state, cfg, ckpt_path)
    if world.main:
        remove_stale_tmp(ckpt_path)   # what saves killed mid-write left (the lock says no save is running)
    if t.batch_size < world.size * t.grad_accum:
        raise ValueError(f"train.batch_size={t.batch_size} cannot be split into {world.size} processes x "
                         f"train.grad_accum={t.grad_accum} micro-batches; e.g. --set train.batch_size="
                         f"{world.size * t.grad_accum}")

    # the model before the data: what the model refuses is then refused in a second, not after minutes
    torch.manual_seed(derived_seed(t.seed, 0))  # the initial weights belong to the config too
    model = build_model(cfg)
    start = 0
    if state is not None:
        try:
            model.load_state_dict(state["model"])
        except RuntimeError as e:
            raise CheckpointError(f"{ckpt_path}: weights do not fit the saved config ({e})") from e
        start = state["step"]
    model.to(device).train()
    optimizer = make_optimizer(model, t)  # after .to(device): loaded Adam state follows its parameters
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
    if t.compile:
        model.student.encoder.compile()
        model.teacher.encoder.compile()

    # the lines of the steps the checkpoint covers; later lines are from steps that will rerun
    history = [r for r in read_metrics(out) if r["step"] <= start] if world.main and metrics_path.is_file() else []

    data = data or pretraining_data(cfg, root, progress)
    # the first files this run writes: everything that could refuse it has been checked
    if world.main:
        try:
            if data.tokenizer is not None:
                data.tokenizer.save(str(out / TOKENIZER))
            (out / CONFIG).write_text(json.dumps({**cfg.to_dict(), "sources": data.sources}, indent=2))
            metrics_path.write_text("".join(json.dumps(r) + "\n" for r in history))
        except Exception as e:   # a full disk (the tokenizer's own writer raises a plain Exception)
            raise RunFolderError(write_failure(out, "the run's files", e)) from e
    # the inputs on the device, once, where they fit: each step then indexes its batch there
    data = dataclasses.replace(data, train=resident(data.train, device), heldout=resident(data.heldout, device))
    end = min(t.steps, stop_after) if stop_after is not None else t.steps
    return model, optimizer, data, start, end, history


def _save(world, path, cfg, step, model, optimizer) -> None:
    """Rank 0 writes the checkpoint; the other processes wait until it is on disk, and stop too if
    it could not be written."""
    error = None
    if world.main:
        try:
            save_checkpoint(path, cfg, step, model, optimizer)
        except CheckpointError as e:
            error = e
    if not world.agree(error is None):
        raise error or CheckpointError(f"{path}: rank 0 could not save the checkpoint of step {step}; its "
                                       f"message says why")


def _train_steps(model, optimizer, cfg, data, device, world, start, end, history, ckpt_path, metrics_path,
                 progress, callback):
    t, d = cfg.train, cfg.d2v
    autocast = autocast_for(t.precision, device.type)
    # the initial weights' share of the teacher after each update, from the schedule's start (exact on
    # resume), up to the last step this call runs: not t.steps (a demo configured 10**9 steps long would
    # allocate gigabytes)
    shares = init_shares(tau_schedule(d.tau0, d.tau_end, d.tau_ramp_steps, end))
    bar = tqdm(range(start, end), initial=start, total=t.steps, desc=f"pretrain {cfg.modality}",
               disable=not progress, dynamic_ncols=True)
    completed, tic, seen = start, time.perf_counter(), 0
    saved = start if ckpt_path.exists() else None   # the step of the checkpoint on disk
    try:
        for step in bar:
            done = step + 1
            lr, tau = lr_at(step, t), tau_at(step, d.tau0, d.tau_end, d.tau_ramp_steps)
            g = step_generator(t.seed, step)
            torch.manual_seed(derived_seed(t.seed, step, 3))   # dropout, drop-path, decoder noise
            # the whole batch, in every process (train_step keeps this process's rows)
            x = data.train[batch_indices(step, len(data.train), t.batch_size, t.seed).to(data.train.device)]
            try:
                out = train_step(model, optimizer, x, g, lr=lr, tau=tau, clip_grad=t.clip_grad, autocast=autocast,
                                 world=world, grad_accum=t.grad_accum)
            except TrainingStopped as e:   # raised before the update: nothing of this step is kept
                kept = f"The checkpoint of step {saved} is still good." if saved is not None else \
                    "No checkpoint was saved before it."
                raise TrainingStopped(f"step {done}: {e} {kept}") from None
            completed, result = done, out.result
            seen += len(x)
            target_std = out.target_std   # of the whole batch: every process takes the same decision below
            if world.main and (done % t.log_every == 0 or done == t.steps):
                now = time.perf_counter()
                row = {"step": done, "loss": out.loss.item(), "target_std": target_std,
                       "pred_std": out.pred_std, "tau": tau, "teacher_init_share": float(shares[step]),
                       "lr": lr, "grad_norm": out.grad_norm.item(),
                       "samples_per_s": seen / (now - tic), "epoch": done * t.batch_size / len(data.train)}
                if out.cls_loss is not None:   # the loss's two parts: regression, and [CLS] (before its weight)
                    row.update(reg_loss=out.reg_loss.item(), cls_loss=out.cls_loss.item())
                if t.eval_every and (done % t.eval_every == 0 or done == t.steps):
                    row["heldout_loss"] = heldout_loss(model, data.heldout, autocast=autocast)
                history.append(row)
                with open(metrics_path, "a") as f:
                    f.write(json.dumps(row) + "\n")
                bar.set_postfix(loss=f"{row['loss']:.4f}", tgt_std=f"{row['target_std']:.3f}")
                tic, seen = time.perf_counter(), 0
            if callback is not None:
                callback(done, model, result)
            if target_std < t.min_target_std:
                _save(world, ckpt_path, cfg, done, model, optimizer)
                raise TrainingStopped(
                    f"step {done}: target std {target_std:.4f} < {t.min_target_std}: the teacher gives "
                    f"(nearly) the same target everywhere, i.e. the representation collapsed. Try a higher "
                    f"EMA decay (a larger d2v.tau_init_share, or tau0/tau_end where it is 0), a lower train.lr or a larger mask ratio.")
            if done % t.checkpoint_every == 0 or done == end:
                _save(world, ckpt_path, cfg, done, model, optimizer)
                saved = done
    except KeyboardInterrupt as e:
        bar.close()
        if isinstance(e, InterruptedUpdate):  # student and teacher out of step: keep what is on disk
            kept = (f"the checkpoint of step {saved} is kept; continue with --resume" if saved is not None
                    else "nothing was saved; run again to start over")
            raise RunInterrupted(f"interrupted during step {completed + 1}'s update, which cannot be "
                                 f"saved; {kept}") from e
        if world.main:   # no waiting for the other processes: Ctrl-C may have stopped them too
            save_checkpoint(ckpt_path, cfg, completed, model, optimizer)  # the state after `completed` steps
        raise RunInterrupted(f"interrupted: saved at step {completed} in {ckpt_path.parent}; "
                             f"continue with --resume") from e
    bar.close()
    return history


def ensure_pretrained(cfg: RunConfig, out_dir: str | Path, progress: bool = True, root=None,
                      log: Callable[[str], None] = print) -> Path:
    """A finished run of ``cfg`` in out_dir: reused when its checkpoint is complete, resumed when it
    is partial, trained when absent. Says which (never retrains silently); refuses a checkpoint
    made with another config rather than overwrite it."""
    cfg = follow_run_length(cfg)   # as pretrain saves it
    out = Path(out_dir)
    ckpt = out / CHECKPOINT
    if ckpt.exists():
        state = read_checkpoint(ckpt)
        check_compatible(state, cfg, ckpt)
        if state["step"] >= cfg.train.steps:
            log(f"{cfg.modality}: reusing the finished checkpoint in {out} ({state['step']} steps)")
            return out
        log(f"{cfg.modality}: resuming the checkpoint in {out} from step {state['step']} of {cfg.train.steps}")
        pretrain(cfg, out, resume=True, progress=progress, root=root)
    else:
        log(f"{cfg.modality}: pretraining ({cfg.profile} profile, {cfg.train.steps} steps) into {out}")
        pretrain(cfg, out, progress=progress, root=root)
    return out
