"""Several processes, one run: data parallel training under ``torchrun``.

    torchrun --nproc_per_node 4 -m d2v_lab pretrain --modality image --profile gpu --out runs/img

torchrun starts N copies of the command and tells each its place through the environment (WORLD_SIZE,
RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT). ``joined`` reads it, joins the process group (NCCL between
GPUs, gloo between CPU processes) and gives each process its device: GPU number LOCAL_RANK. Without
WORLD_SIZE > 1 nothing here does anything and training is the single-process code, unchanged.

What each process does (loop.py's ``train_step``): every process draws the GLOBAL batch's indices,
augmentation and masks from the same (seed, step) generator and keeps its own contiguous rows of them,
``World.rows``. The union of the slices is exactly the batch one process would train on, so N
processes with batch B compute the same update as one process with batch B, up to float rounding.

Gradients are combined by ONE all-reduce of all gradients flattened into one vector, after backward,
rather than by wrapping the model in ``DistributedDataParallel``. Why: DDP hooks the parameters of the
module it wraps and expects one forward and one backward per step through that module. Here a step
runs the teacher (no gradient), the student's encoder on visible tokens only, a decoder, and, with
gradient accumulation, several micro-batches; some parameters get no gradient in a given recipe (the
mask embedding in data2vec 2.0), which DDP reports as an error unless ``find_unused_parameters`` makes
it search the graph every step. A manual all-reduce needs none of that and leaves the single-process
code path as it was. What it gives up: DDP overlaps the all-reduce with backward, bucket by bucket; here
it waits until backward is done. For the model sizes of this lab (at most 12 x 384) that costs little.

Each process's loss is weighted by its share of the global batch's masked tokens (the loss is a mean
over masked positions), so the SUM of the processes' gradients is the gradient of the global batch's
loss; nothing is divided by N afterwards.

The EMA teacher is updated from the student's weights, which are identical in every process after
every step (identical gradients, identical AdamW), so the teachers stay identical without being sent.
Only rank 0 writes (checkpoints, metrics.jsonl, config.json, the run-folder lock) and shows progress.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist

from .device import pick_device


@dataclass(frozen=True)
class World:
    """This process's place among the processes of one run."""
    rank: int = 0
    size: int = 1
    device: torch.device = torch.device("cpu")   # where collectives' tensors must live (NCCL: the GPU)

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes files and shows progress."""
        return self.rank == 0

    def rows(self, n: int) -> tuple[int, int]:
        """This process's rows [lo, hi) of a global batch of ``n``: contiguous, in rank order, sizes
        differing by at most one, so the slices of all ranks are exactly rows 0..n."""
        return self.rank * n // self.size, (self.rank + 1) * n // self.size

    def all_reduce(self, t: torch.Tensor) -> torch.Tensor:
        """Sum ``t`` over all processes, in place (a no-op for one process)."""
        if self.size > 1:
            dist.all_reduce(t)
        return t

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()

    def agree(self, ok: bool) -> bool:
        """True when every process says ok. Called where a process may refuse the run alone (rank 0
        could not lock the folder): the others then stop too, instead of waiting for it forever."""
        if self.size == 1:
            return ok
        flag = torch.tensor([int(ok)], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        return bool(flag.item())


SINGLE = World()


def launched() -> bool:
    """Whether this process is one of several started by torchrun (or anything that sets WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def process_device(setting: str, local_rank: int) -> torch.device:
    """The device of process ``local_rank`` on its machine under ``train.device=setting``."""
    if setting.startswith("cuda:"):
        raise ValueError(f"train.device={setting!r} names one GPU, but under torchrun each process uses the "
                         f"GPU of its LOCAL_RANK; use --set train.device=cuda (or auto)")
    device = pick_device(setting)
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ValueError(f"LOCAL_RANK={local_rank}, but this machine has {torch.cuda.device_count()} GPU(s): "
                             f"start at most that many processes per node")
        return torch.device("cuda", local_rank)
    if device.type != "cpu":
        raise ValueError(f"several processes need CUDA GPUs (NCCL) or the CPU (gloo), not {device.type}; "
                         f"use --set train.device=cpu, or run one process")
    return device


@contextlib.contextmanager
def joined(setting: str) -> Iterator[tuple[World, torch.device]]:
    """This process's World and device for the ``with`` block. Under torchrun, joins the process group
    (and leaves it at the end, when this call joined it); otherwise SINGLE and ``pick_device(setting)``."""
    if not launched():
        yield SINGLE, pick_device(setting)
        return
    rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    device = process_device(setting, int(os.environ.get("LOCAL_RANK", rank)))
    joined_here = not dist.is_initialized()
    if joined_here:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        # env:// rendezvous: MASTER_ADDR and MASTER_PORT come from torchrun
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=size)
    try:
        yield World(rank, size, device), device
    finally:
        if joined_here:
            dist.destroy_process_group()


def sum_gradients(params: list[torch.Tensor], world: World) -> None:
    """Sum the gradients of ``params`` over all processes, in place: one all-reduce of them all,
    flattened into one vector (one message instead of one per tensor). Parameters without a gradient
    are left without one: every process runs the same code, so they are the same ones everywhere."""
    if world.size == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    world.all_reduce(flat)
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()
