"""The supervised reference: the same architecture, trained end to end on the probe's labels.

Not a target to beat: it tells the reader what the labels alone buy with this model and this little
data, so "pretrained + linear probe" can be read against it. Early stopping on the validation split;
the test split is scored once, for the epoch with the best validation accuracy.
"""
from __future__ import annotations

import copy
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from d2v_lab.train.checkpoint import build_model
from d2v_lab.train.config import RunConfig
from d2v_lab.train.device import autocast_for

from .tasks import ProbeData


def _pooled(backbone, x: torch.Tensor, autocast) -> torch.Tensor:
    """Mean of the final-layer tokens over non-padding positions (fp32)."""
    pad = backbone.adapter.padding_mask(x)
    with autocast():
        h = backbone(x).x.float()
    keep = torch.ones(h.shape[:2], device=h.device) if pad is None else (~pad).float()
    return (h * keep[..., None]).sum(1) / keep.sum(1, keepdim=True)


@torch.no_grad()
def _accuracy(backbone, head, x, y, autocast, batch_size=256) -> float:
    backbone.eval()
    device = next(head.parameters()).device
    preds = torch.cat([head(_pooled(backbone, c.to(device), autocast)).argmax(1).cpu() for c in x.split(batch_size)])
    return float((preds.numpy() == y).mean())


def train_supervised(cfg: RunConfig, data: ProbeData, epochs: int = 5, batch_size: int = 64,
                     lr: float = 1e-3, seed: int = 0, device="cpu", progress: bool = True) -> dict:
    torch.manual_seed(seed)
    device = torch.device(device)
    backbone = build_model(cfg).student.to(device)
    head = nn.Linear(cfg.encoder.dim, len(data.classes)).to(device)
    params = list(backbone.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    x, y = data.inputs["train"], torch.as_tensor(data.labels["train"])
    steps = epochs * max(1, len(x) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.1)
    autocast = autocast_for(cfg.train.precision, device.type)   # bf16 where native, like pretraining
    g = torch.Generator().manual_seed(seed)
    best = (-1.0, None, 0)
    tic = time.perf_counter()
    for epoch in tqdm(range(epochs), desc=f"supervised {data.task}", disable=not progress, leave=False):
        backbone.train()
        perm = torch.randperm(len(x), generator=g)
        for i in range(max(1, len(x) // batch_size)):
            idx = perm[i * batch_size:(i + 1) * batch_size]
            xb = backbone.adapter.augment(x[idx], g).to(device)
            loss = F.cross_entropy(head(_pooled(backbone, xb, autocast)), y[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
        val = _accuracy(backbone, head, data.inputs["val"], data.labels["val"], autocast)
        if val > best[0]:
            best = (val, copy.deepcopy((backbone.state_dict(), head.state_dict())), epoch + 1)
    backbone.load_state_dict(best[1][0])
    head.load_state_dict(best[1][1])
    return {"accuracy": _accuracy(backbone, head, data.inputs["test"], data.labels["test"], autocast),
            "val_accuracy": best[0], "best_epoch": best[2], "epochs": epochs,
            "seconds": round(time.perf_counter() - tic, 1), "n_train": int(len(np.asarray(y)))}
