"""What it takes to align two frozen spaces: paired data. The positive controls of the argument.

* orthogonal Procrustes (Schonemann 1966): the best rotation from one space onto the other, fitted on
  half of the pairs and scored on the other half;
* a CLIP-style association network (Radford et al. 2021): small projection heads over the frozen
  encoders, trained with symmetric InfoNCE (van den Oord et al. 2018) on paired concepts.

If the raw spaces were already shared these would add little; that they raise held-out retrieval far
above the raw spaces' is what "aligned" looks like, and what data2vec's own training never asks for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from d2v_lab.evaluate.features import Standardiser

from .metrics import (
    ArrayLike,
    as_labels,
    as_numpy,
    check_paired,
    check_same_width,
    cross_modal_retrieval,
    pair_cosine,
    permutation_null,
    retrieval_chance,
    to_common_dim,
)

# -----------------------------------------------------------------------------
# positive control 1: orthogonal Procrustes (Schonemann 1966)


@dataclass(frozen=True)
class ProcrustesMap:
    """x -> (x - mean_a) @ rotation + mean_b: the fitted rigid map from space A to space B."""

    rotation: np.ndarray
    mean_a: np.ndarray
    mean_b: np.ndarray

    def transform(self, x: ArrayLike) -> np.ndarray:
        x = as_numpy(x, "x")
        if x.shape[1] != self.rotation.shape[0]:
            raise ValueError(f"x has width {x.shape[1]}, the map expects {self.rotation.shape[0]}")
        return (x - self.mean_a) @ self.rotation + self.mean_b


def procrustes_fit(a: ArrayLike, b: ArrayLike) -> ProcrustesMap:
    """Orthogonal R minimising ||(a - mean_a) R - (b - mean_b)||_F over rotations/reflections.

    Schonemann 1966, "A generalized solution of the orthogonal Procrustes
    problem": with U S V^T the SVD of a_c^T b_c, the minimiser is R = U V^T.
    It needs paired rows, which is the point: if data2vec's spaces differed
    only by a rotation, a handful of pairs would be enough to line them up.
    """
    a, b = as_numpy(a, "a"), as_numpy(b, "b")
    check_paired(a, b)
    check_same_width(a, b)
    mean_a, mean_b = a.mean(axis=0), b.mean(axis=0)
    u, _, vt = np.linalg.svd((a - mean_a).T @ (b - mean_b))
    return ProcrustesMap(rotation=u @ vt, mean_a=mean_a, mean_b=mean_b)


def _stratified_split(labels: np.ndarray, train_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split row indices into (fit, eval) so that every label appears on both sides."""
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
    rng = np.random.default_rng(seed)
    fit, held = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        if len(idx) < 2:
            raise ValueError(f"concept {c!r} has {len(idx)} pair(s); need at least 2 to split into fit/eval")
        n_fit = min(max(int(round(train_fraction * len(idx))), 1), len(idx) - 1)
        fit.append(idx[:n_fit])
        held.append(idx[n_fit:])
    return np.sort(np.concatenate(fit)), np.sort(np.concatenate(held))


def procrustes_control(
    a: ArrayLike, b: ArrayLike, labels: ArrayLike, train_fraction: float = 0.5, seed: int = 0,
    n_shuffles: int = 0,
) -> dict[str, float]:
    """How much of the gap between two same-width spaces a single rotation closes, on held-out pairs.

    Pairs are split per concept into a fit part (``train_fraction``) and an
    evaluation part. Both halves are centred with the fit part's per-modality
    means (within-modality preprocessing, no cross-modal information); the
    rotation is fitted on the fit pairs only. Returned keys (floats):

    - ``retrieval_before`` / ``retrieval_after``: symmetric cross-modal
      retrieval on the evaluation pairs, in raw shared coordinates vs. after
      rotating a onto b;
    - ``pair_cosine_before`` / ``pair_cosine_after``: mean cosine of the
      true evaluation pairs, before vs. after;
    - ``chance``: ``retrieval_chance`` of the evaluation labels;
    - ``null_p95`` (with ``n_shuffles`` > 0): 95th percentile of ``retrieval_after`` when the
      evaluation pairing is shuffled (``permutation_null``);
    - ``n_fit`` / ``n_eval``: pair counts.

    Spaces of different widths: bring both to one width with ``to_common_dim``
    first (Procrustes then also has to undo the arbitrary PCA axes, which is
    what it is for).
    """
    a, b = as_numpy(a, "a"), as_numpy(b, "b")
    check_paired(a, b)
    check_same_width(a, b)
    y = as_labels(labels, a.shape[0])
    fit, held = _stratified_split(y, train_fraction, seed)
    m = procrustes_fit(a[fit], b[fit])
    a_eval, b_eval = a[held] - m.mean_a, b[held] - m.mean_b
    a_mapped = a_eval @ m.rotation
    out = {
        "retrieval_before": cross_modal_retrieval(a_eval, b_eval, y[held], y[held]),
        "retrieval_after": cross_modal_retrieval(a_mapped, b_eval, y[held], y[held]),
        "pair_cosine_before": pair_cosine(a_eval, b_eval),
        "pair_cosine_after": pair_cosine(a_mapped, b_eval),
        "chance": retrieval_chance(y[held], y[held]),
        "n_fit": float(len(fit)),
        "n_eval": float(len(held)),
    }
    if n_shuffles:
        out["null_p95"] = permutation_null(cross_modal_retrieval, a_mapped, b_eval, n_shuffles, seed,
                                           labels_a=y[held], labels_b=y[held]).p95
    return out


# -----------------------------------------------------------------------------
# positive control 2: a CLIP-style association network over frozen features


def symmetric_info_nce(
    za: torch.Tensor, zb: torch.Tensor, temperature: float, labels: torch.Tensor | None = None
) -> torch.Tensor:
    """CLIP's loss (Radford et al. 2021; InfoNCE of van den Oord et al. 2018).

    za, zb: (B, dim) L2-normalised embeddings of B pairs. logits[i, j] =
    cos(za_i, zb_j) / temperature; cross-entropy with target j = i, averaged
    over the a->b (rows) and b->a (columns) directions. Every other item in the
    batch is a negative, so the heads learn to make true pairs the most similar.

    ``labels`` (B,): when pairs are formed by *concept* (an image of a dog next
    to some recording of "dog"), other same-concept items in the batch are not
    negatives. Then the target of row i is spread evenly over all j with
    labels[j] == labels[i] (the multi-positive form of Khosla et al. 2020,
    "Supervised Contrastive Learning"). Without it, the only way to tell
    same-concept pairs apart is to memorise their noise, which overfits.
    """
    logits = za @ zb.T / temperature
    if labels is None:
        target = torch.arange(za.shape[0], device=za.device)
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
    same = (labels[:, None] == labels[None, :]).to(logits.dtype)
    target = same / same.sum(dim=1, keepdim=True)  # symmetric, so it serves both directions
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def _make_head(d_in: int, dim: int, hidden: int | None) -> nn.Module:
    if hidden is None:
        return nn.Linear(d_in, dim)
    return nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Linear(hidden, dim))


@dataclass(frozen=True, eq=False)
class AssociationHeads:
    """Two trained projection heads; ``project_a`` / ``project_b`` map each modality into the joint space."""

    head_a: nn.Module
    head_b: nn.Module
    scale_a: Standardiser      # the training rows' statistics, applied to every input of head_a
    scale_b: Standardiser
    losses: tuple[float, ...]  # mean training loss per epoch

    @staticmethod
    def _project(head: nn.Module, x: ArrayLike, scale: Standardiser) -> np.ndarray:
        x = as_numpy(x, "x")
        if x.shape[1] != scale.mean.shape[0]:
            raise ValueError(f"x has width {x.shape[1]}, the head expects {scale.mean.shape[0]}")
        head.eval()
        with torch.no_grad():
            z = head(torch.from_numpy(scale(x)).float())
        return F.normalize(z, dim=1).double().numpy()

    def project_a(self, x: ArrayLike) -> np.ndarray:
        """L2-normalised joint-space embeddings of modality-A features."""
        return self._project(self.head_a, x, self.scale_a)

    def project_b(self, x: ArrayLike) -> np.ndarray:
        """L2-normalised joint-space embeddings of modality-B features."""
        return self._project(self.head_b, x, self.scale_b)


def train_association_heads(
    a: ArrayLike,
    b: ArrayLike,
    dim: int = 64,
    epochs: int = 100,
    lr: float = 1e-3,
    temperature: float = 0.1,
    seed: int = 0,
    batch_size: int = 128,
    hidden: int | None = 256,
    weight_decay: float = 1e-4,
    labels: ArrayLike | None = None,
) -> AssociationHeads:
    """Learn to align two *frozen* feature spaces from paired rows, CLIP-style.

    Radford et al. 2021 (CLIP) put a linear projection on top of two encoders
    and train everything with the symmetric InfoNCE loss (van den Oord et al.
    2018). Here the encoders (data2vec's models) stay frozen, so the heads are
    the only trainable part: by default a small MLP (Linear -> GELU -> Linear),
    because a linear head can only rotate/stretch and frozen features from
    independently trained models need not be related linearly. Pass
    ``hidden=None`` for CLIP's linear projection.

    ``labels`` (one per pair, optional): treat every same-concept pair in a
    batch as a positive (see ``symmetric_info_nce``). Use it when pairs were
    formed by concept rather than by instance (a caption *of this* image).

    Inputs are standardised with the mean/std of these training rows (stored
    in the result, so held-out rows get the same transform). The temperature
    is fixed rather than learned, for simplicity. Deterministic for a given
    seed: initialisation and batch order use it, and the global torch RNG
    state is left as it was.
    """
    a, b = as_numpy(a, "a"), as_numpy(b, "b")
    check_paired(a, b)
    n = a.shape[0]
    if n < 2:
        raise ValueError("need at least 2 pairs: InfoNCE contrasts each pair with the others")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    scale_a, scale_b = Standardiser.fit(a), Standardiser.fit(b)
    xa, xb = torch.from_numpy(scale_a(a)).float(), torch.from_numpy(scale_b(b)).float()
    if labels is not None:  # integer codes, so torch can compare them
        yt = torch.from_numpy(np.unique(as_labels(labels, n), return_inverse=True)[1].reshape(-1))

    with torch.random.fork_rng(devices=[]):  # seed the init without disturbing the caller's RNG
        torch.manual_seed(seed)
        head_a = _make_head(a.shape[1], dim, hidden)
        head_b = _make_head(b.shape[1], dim, hidden)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW([*head_a.parameters(), *head_b.parameters()], lr=lr, weight_decay=weight_decay)

    losses = []
    head_a.train()
    head_b.train()
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        total, batches = 0.0, 0
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            if len(idx) < 2:  # a batch of one has no negatives
                continue
            za = F.normalize(head_a(xa[idx]), dim=1)
            zb = F.normalize(head_b(xb[idx]), dim=1)
            loss = symmetric_info_nce(za, zb, temperature, None if labels is None else yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total, batches = total + loss.item(), batches + 1
        losses.append(total / max(batches, 1))
    return AssociationHeads(head_a, head_b, scale_a, scale_b, tuple(losses))


def association_control(
    a: ArrayLike,
    b: ArrayLike,
    labels: ArrayLike,
    train_fraction: float = 0.5,
    seed: int = 0,
    concept_positives: bool = True,
    n_shuffles: int = 0,
    **head_kwargs: Any,
) -> dict[str, float]:
    """What paired data buys: held-out retrieval after training association heads on the other pairs.

    Pairs are split per concept into fit/eval parts; heads are trained on the
    fit pairs (``head_kwargs`` go to ``train_association_heads``) and scored on
    the evaluation pairs. a and b may have different widths. With
    ``concept_positives`` (default) the fit labels are passed to the heads so
    that same-concept pairs count as positives, which is right for
    concept-paired data; False gives plain instance-level CLIP training.
    Returned keys:

    - ``retrieval``: symmetric cross-modal retrieval in the learned joint space;
    - ``retrieval_baseline``: the same with no cross-modal fitting, each side
      of the evaluation half passed through ``to_common_dim`` on its own (to
      min(both widths, head dim, n_eval) coordinates). One such number can sit
      well away from chance by accident; see ``rotation_null``;
    - ``pair_cosine``: mean cosine of true evaluation pairs in the joint space;
    - ``chance``: ``retrieval_chance`` of the evaluation labels;
    - ``null_p95`` (with ``n_shuffles`` > 0): 95th percentile of ``retrieval`` under shuffled
      evaluation pairs;
    - ``final_loss``: last epoch's training loss;
    - ``n_fit`` / ``n_eval``: pair counts.
    """
    a, b = as_numpy(a, "a"), as_numpy(b, "b")
    check_paired(a, b)
    y = as_labels(labels, a.shape[0])
    fit, held = _stratified_split(y, train_fraction, seed)
    fit_labels = y[fit] if concept_positives else None
    heads = train_association_heads(a[fit], b[fit], seed=seed, labels=fit_labels, **head_kwargs)
    za, zb = heads.project_a(a[held]), heads.project_b(b[held])
    common = min(a.shape[1], b.shape[1], len(held), za.shape[1])
    out = {
        "retrieval": cross_modal_retrieval(za, zb, y[held], y[held]),
        "retrieval_baseline": cross_modal_retrieval(
            to_common_dim(a[held], common), to_common_dim(b[held], common), y[held], y[held]
        ),
        "pair_cosine": pair_cosine(za, zb),
        "chance": retrieval_chance(y[held], y[held]),
        "final_loss": float(heads.losses[-1]) if heads.losses else float("nan"),
        "n_fit": float(len(fit)),
        "n_eval": float(len(held)),
    }
    if n_shuffles:
        out["null_p95"] = permutation_null(cross_modal_retrieval, za, zb, n_shuffles, seed,
                                           labels_a=y[held], labels_b=y[held]).p95
    return out


# -----------------------------------------------------------------------------
# one joint space for several modalities (for pictures): concept-level InfoNCE between every pair


def concept_info_nce(za: torch.Tensor, la: torch.Tensor, zb: torch.Tensor, lb: torch.Tensor,
                     temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE between two UNPAIRED batches with concept labels: every b with a's concept is
    a positive for a (and vice versa). Rows whose concept is absent from the other batch are skipped."""
    logits = za @ zb.T / temperature
    same = (la[:, None] == lb[None, :]).to(logits.dtype)
    loss, terms = logits.new_zeros(()), 0
    for lg, pos in ((logits, same), (logits.T, same.T)):
        rows = pos.sum(1) > 0
        if rows.any():
            loss = loss + F.cross_entropy(lg[rows], pos[rows] / pos[rows].sum(1, keepdim=True))
            terms += 1
    return loss / max(terms, 1)


def train_joint_heads(features: dict[str, tuple[ArrayLike, ArrayLike]], dim: int = 32, steps: int = 300,
                      batch_size: int = 128, lr: float = 1e-3, temperature: float = 0.1, hidden: int = 256,
                      seed: int = 0) -> dict[str, Any]:
    """Heads that map several frozen spaces into ONE space, trained with ``concept_info_nce`` between
    every pair of modalities that share concepts. ``features``: {modality: (X (N, D), concept labels)}.
    Returns {modality: function X -> L2-normalised (N, dim)}. Used for the "after alignment" picture."""
    names = list(features)
    data, codes = {}, {}
    vocab = sorted({str(c) for _, labels in features.values() for c in np.asarray(labels)})
    for m in names:
        x = as_numpy(features[m][0], m)
        scale = Standardiser.fit(x)
        data[m] = (torch.from_numpy(scale(x)).float(), scale)
        codes[m] = torch.tensor([vocab.index(str(c)) for c in np.asarray(features[m][1])])
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]
             if set(codes[a].tolist()) & set(codes[b].tolist())]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        heads = {m: nn.Sequential(nn.Linear(data[m][0].shape[1], hidden), nn.GELU(), nn.Linear(hidden, dim))
                 for m in names}
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW([p for h in heads.values() for p in h.parameters()], lr=lr, weight_decay=1e-4)
    for _ in range(steps):
        loss = 0.0
        for a, b in pairs:
            ia = torch.randint(len(codes[a]), (batch_size,), generator=gen)
            ib = torch.randint(len(codes[b]), (batch_size,), generator=gen)
            za = F.normalize(heads[a](data[a][0][ia]), dim=1)
            zb = F.normalize(heads[b](data[b][0][ib]), dim=1)
            loss = loss + concept_info_nce(za, codes[a][ia], zb, codes[b][ib], temperature)
        opt.zero_grad()
        loss.backward()
        opt.step()

    def projector(m):
        head, (_, scale) = heads[m].eval(), data[m]

        def project(x):
            with torch.no_grad():
                z = head(torch.from_numpy(scale(as_numpy(x, m))).float())
            return F.normalize(z, dim=1).numpy()
        return project
    return {m: projector(m) for m in names}
