"""Linear and k-NN probes: did self-supervised pretraining make the classes decodable, and how much?

Three feature sources go through ONE readout (``features.py``): the pretrained encoder, the same
architecture with random weights (what the architecture gives for free), and the raw input cut into
the model's tokens (what the input alone gives). Each is pooled the same ways (mean; contiguous
segments, which keep coarse order; [CLS] where a model has one) at every layer it has, and for each
source the pool, the layer and the regularisation C are chosen on a VALIDATION split; the test split
is only ever scored, once, with the chosen setting.
  supervised   for context: the same architecture trained end to end on the labels (``supervised.py``).
               It also checks the task: if it does not beat its random init by >= 15 points
               (``results.discrimination``), the task cannot tell a good encoder from a random one
               and is reported as such rather than used as evidence.
The tasks and their splits are in ``tasks.py``.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from d2v_lab.data.root import data_root
from d2v_lab.data.tokenizer import load_tokenizer
from d2v_lab.train.checkpoint import build_model, load_run
from d2v_lab.train.config import ProbeConfig
from d2v_lab.train.device import usable_device
from d2v_lab.train.profiles import preset
from d2v_lab.train.runs import CHECKPOINT, PROBE_JSON, is_fresh, read_run_config

from . import hf, tasks
from .features import READOUT, RawInput, layer_features, standardise
from .results import ProbeResult, Scores, TaskResult, discrimination
from .supervised import train_supervised

C_GRID = (0.001, 0.01, 0.1, 1.0)


# --- linear and k-NN probes -----------------------------------------------------------------------

@dataclass
class LinearFit:
    test_acc: float
    val_acc: float
    C: float


def fit_logistic(x: torch.Tensor, y: torch.Tensor, n_classes: int, C: float = 1.0, max_iter: int = 200,
                 init: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression with scikit-learn's objective, C * sum(cross-entropy) +
    ||W||^2 / 2, minimised by full-batch L-BFGS in torch. It matches sklearn's LogisticRegression
    (tested). ``init`` warm-starts from another solution (e.g. the neighbouring C of a grid)."""
    W0, b0 = init if init is not None else (torch.zeros(x.shape[1], n_classes), torch.zeros(n_classes))
    W, b = W0.clone().requires_grad_(True), b0.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([W, b], lr=1.0, max_iter=max_iter, history_size=20,
                            tolerance_grad=1e-6, tolerance_change=1e-9, line_search_fn="strong_wolfe")
    l2 = 1.0 / (C * len(x))  # sklearn's objective divided by C * N: mean cross-entropy + l2/2 ||W||^2
    xt = x.T.contiguous()    # the gradient by hand with a contiguous X^T: autograd's X^T @ G is 4x slower here
    onehot = torch.nn.functional.one_hot(y, n_classes).float()

    def closure():
        logits = x @ W.detach() + b.detach()
        p = logits.softmax(dim=1)
        loss = torch.nn.functional.cross_entropy(logits, y) + 0.5 * l2 * W.detach().pow(2).sum()
        residual = (p - onehot) / len(x)
        W.grad = xt @ residual + l2 * W.detach()
        b.grad = residual.sum(0)
        return loss
    opt.step(closure)
    return W.detach(), b.detach()


def linear_probe(x_tr, y_tr, x_va, y_va, x_te, y_te, Cs=C_GRID, max_iter: int = 100) -> LinearFit:
    """Standardise (train statistics) -> multinomial logistic regression. C is chosen by validation
    accuracy; the chosen C is refit on train + val and scored once on test."""
    x_tr, x_va, x_te = (torch.as_tensor(a, dtype=torch.float32) for a in standardise(x_tr, x_va, x_te))
    y_tr, y_va, y_te = (torch.as_tensor(np.asarray(v), dtype=torch.long) for v in (y_tr, y_va, y_te))
    n_classes = int(max(y_tr.max(), y_va.max())) + 1  # from the fitted labels only; test is just scored

    def accuracy(W, b, x, y):
        return float(((x @ W + b).argmax(1) == y).float().mean())
    val, fits, init = {}, {}, None
    for C in sorted(Cs):  # strongest regularisation first; each fit warm-starts the next
        fits[C] = init = fit_logistic(x_tr, y_tr, n_classes, C, max_iter, init)
        val[C] = accuracy(*init, x_va, y_va)
    C = max(Cs, key=lambda c: (val[c], -c))  # ties: the stronger regularisation
    W, b = fit_logistic(torch.cat([x_tr, x_va]), torch.cat([y_tr, y_va]), n_classes, C, max_iter, fits[C])
    return LinearFit(accuracy(W, b, x_te, y_te), val[C], C)


def knn_accuracy(x_tr, y_tr, x_te, y_te, k: int = 20, chunk: int = 1024) -> float:
    """Cosine k-nearest-neighbour classification (majority vote, ties broken by summed similarity).
    Test points go ``chunk`` at a time, so the similarity matrix stays small on full datasets
    (10,000 x 50,000 CIFAR-10 similarities would be 2 GB at once)."""
    if not 1 <= k <= len(x_tr):
        raise ValueError(f"k must be in [1, {len(x_tr)}], got {k}")
    a = torch.nn.functional.normalize(torch.as_tensor(x_tr, dtype=torch.float32), dim=1)
    b = torch.nn.functional.normalize(torch.as_tensor(x_te, dtype=torch.float32), dim=1)
    top = [(part @ a.T).topk(k, dim=1) for part in b.split(chunk)]
    sim, idx = torch.cat([t.values for t in top]), torch.cat([t.indices for t in top])
    neighbour_labels = torch.as_tensor(y_tr)[idx]
    n_classes = int(y_tr.max()) + 1
    counts = torch.zeros(len(b), n_classes, dtype=torch.float64).scatter_add_(
        1, neighbour_labels, torch.ones_like(sim, dtype=torch.float64))
    similarity = torch.zeros(len(b), n_classes, dtype=torch.float64).scatter_add_(
        1, neighbour_labels, sim.double())
    # majority vote; ties go to the class whose neighbours are more similar in total (similarity sums
    # are < k, so scaling them by 1/(k+1) can never outweigh one vote)
    votes = counts + similarity / (k + 1)
    return float((votes.argmax(1).numpy() == y_te).mean())


# --- a whole probe run ----------------------------------------------------------------------------

def probe_features(feats: dict[str, dict[str, np.ndarray]], labels: dict[str, np.ndarray], k: int = 20) -> dict:
    """Linear probe of every (pooling, layer); pick the pair with the best VALIDATION accuracy, report
    its test accuracy and its k-NN accuracy (train + val as the memory). feats[split][pool] is (L+1, N, D)."""
    rows, best = [], None
    for pool in feats["train"]:
        for layer in range(feats["train"][pool].shape[0]):
            fit = linear_probe(*(v for s in ("train", "val", "test") for v in (feats[s][pool][layer], labels[s])))
            rows.append({"pool": pool, "layer": layer, "test": fit.test_acc, "val": fit.val_acc, "C": fit.C})
            if best is None or fit.val_acc > best["val"]:
                best = rows[-1]
    memory = np.concatenate([feats["train"][best["pool"]][best["layer"]], feats["val"][best["pool"]][best["layer"]]])
    knn = knn_accuracy(memory, np.concatenate([labels["train"], labels["val"]]),
                       feats["test"][best["pool"]][best["layer"]], labels["test"], k)
    return {"linear": best["test"], "knn": knn, "selected": best, "rows": rows}


def probe_backbone(backbone, data, k: int = 20, device="cpu", progress: bool = True) -> dict:
    """``probe_features`` of one feature source: a model's backbone (``model.student``) or
    ``RawInput(adapter)``, both read out by ``layer_features``."""
    feats = {}
    for split in tqdm(("train", "val", "test"), desc=f"features {data.task}", disable=not progress, leave=False):
        feats[split] = layer_features(backbone, data.inputs[split], device=device)
        if isinstance(data, tasks.MaskedWordData):
            # a task about one position (the hidden word) also offers that position as a pool; every
            # source gets it (for the raw input it is the one-hot of [MASK]: constant, so validation
            # picks the window's bag of tokens there)
            at = layer_features(backbone, data.inputs[split], device=device, select=data.select(split), pools=("mean",))
            feats[split]["masked"] = at["mean"]
    return probe_features(feats, data.labels, k)


def feature_sources(model, random_model) -> dict:
    """The three sources every task compares, as backbones for the one readout."""
    return {"pretrained": model.student, "random_init": random_model.student,
            "raw_input": RawInput(model.student.adapter)}


def probe_tasks(modality: str, cfg, tokenizer=None, root=None, max_train: int = 0, progress: bool = True):
    """The probe tasks of a modality, main task first. Audio: keyword spotting on 27 unseen speakers
    is the main task (FSDD's test split is a single voice)."""
    if modality == "image":
        return [tasks.cifar_task(root, max_train=max_train or None)]
    if modality == "text":
        # the probe's training stories are at most those the model could pretrain on
        return [tasks.concept_task(tokenizer, cfg.data.seq_len, root, max_stories=cfg.data.max_stories),
                tasks.masked_word_task(tokenizer, cfg.data.seq_len, root, max_stories=cfg.data.max_stories)]
    return [tasks.keyword_task(root, progress).limit_train(max_train),
            tasks.fsdd_task(root, progress).limit_train(max_train)]


def run_probe(run_dir, root=None, probe_cfg: ProbeConfig | None = None, supervised: bool = True,
              progress: bool = True, supervised_epochs: int | None = None) -> ProbeResult:
    """Probe a pretraining run against its baselines and write probe.json into run_dir.
    ``supervised_epochs`` overrides the profile's epochs for the supervised reference (e.g. to see
    what the same architecture reaches with labels and more training); ``supervised=False`` skips it."""
    if supervised_epochs is not None and supervised_epochs < 0:
        raise ValueError(f"supervised_epochs must be >= 0, got {supervised_epochs}")
    run_dir = Path(run_dir)
    model, cfg, tok = load_run(run_dir)
    device = usable_device(cfg.train.device)     # the run's device (a gpu-profile model is probed on
                                                 # the GPU), or the best one here if this machine lacks it
    probe_cfg = probe_cfg or preset(cfg.profile).probe
    torch.manual_seed(cfg.train.seed)
    random_model = build_model(cfg).eval()  # same architecture, never trained
    results = []
    for data in probe_tasks(cfg.modality, cfg, tok, root, probe_cfg.max_train, progress):
        probed = {name: probe_backbone(backbone, data, probe_cfg.knn_k, device=device, progress=progress)
                  for name, backbone in feature_sources(model, random_model).items()}
        pre, rnd, raw = probed["pretrained"], probed["random_init"], probed["raw_input"]
        epochs = (probe_cfg.supervised_epochs.get(cfg.modality, 0) if supervised_epochs is None
                  else supervised_epochs) if supervised else 0
        sup = train_supervised(cfg, data, epochs, device=device, progress=progress) if epochs else None
        discriminates, margin = discrimination(sup["accuracy"] if sup else None, rnd["linear"])
        pool = pre["selected"]["pool"]
        per_layer = [{"layer": r["layer"], "pretrained": r["test"], "pretrained_val": r["val"],
                      "random_init": q["test"], "random_init_val": q["val"]}
                     for r, q in zip(pre["rows"], rnd["rows"]) if r["pool"] == pool and q["pool"] == pool]
        results.append(TaskResult(
            modality=cfg.modality, task=data.task, checkpoint=str(run_dir),
            n_train=data.n("train") + data.n("val"), n_val=data.n("val"), n_test=data.n("test"),
            chance=1.0 / len(data.classes),
            majority=float(np.bincount(data.labels["test"]).max() / data.n("test")),
            classes=list(data.classes),
            linear=Scores(pre["linear"], rnd["linear"], raw["linear"]),
            knn=Scores(pre["knn"], rnd["knn"], raw["knn"]), knn_k=probe_cfg.knn_k,
            supervised=sup, selected={name: p["selected"] for name, p in probed.items()},
            per_layer=per_layer, pool=pool, note=data.note, counts=data.counts,
            discriminates=discriminates, discrimination_margin=margin))
    result = ProbeResult(results, {**dataclasses.asdict(probe_cfg), "readout": READOUT}, str(data_root(root)))
    (run_dir / PROBE_JSON).write_text(json.dumps(result.to_json(), indent=2))
    return result


def cached_probe(run_dir, root=None, progress: bool = True, log=print) -> ProbeResult:
    """probe.json of a run when it is newer than the checkpoint it measured and was made the same way
    (the same readout, the supervised reference trained for the profile's epochs, on the same data
    root), else a fresh run_probe."""
    run_dir = Path(run_dir)
    cached = run_dir / PROBE_JSON
    if is_fresh(cached, [run_dir / CHECKPOINT]):
        result = ProbeResult.from_json(json.loads(cached.read_text()))
        run = read_run_config(run_dir)
        wanted = preset(run["profile"]).probe.supervised_epochs.get(run["modality"], 0)
        made = (result.main.supervised or {}).get("epochs", 0)
        same_readout = result.probe_config.get("readout") == READOUT
        if made == wanted and result.data_root == str(data_root(root)) and same_readout:
            log(f"reusing {cached} (newer than its checkpoint)")
            return result
    return run_probe(run_dir, root, progress=progress)


# --- a Hugging Face encoder (evaluate/hf.py) -------------------------------------------------------

HF_AUDIO_CHUNK = 2048      # clips read and encoded at a time: the full keyword task is 4 GB of waveforms


def hf_source_features(encoder: hf.HFEncoder, data, split: str, progress: bool = False) -> dict[str, np.ndarray]:
    """{"mean": (L+1, N, D)} of one split of a probe task through ``encoder``, each modality as the
    model reads it: the pixels (image), the clips (audio, read ``HF_AUDIO_CHUNK`` at a time), the
    masked story texts around their first [MASK], which becomes the model's own mask token (text)."""
    if data.modality == "image":
        return hf.image_features(encoder, data.inputs[split].numpy(), progress=progress)
    if data.modality == "audio":
        clips = data.originals[split]
        parts = [hf.audio_features(encoder, clips.subset(np.arange(i, min(i + HF_AUDIO_CHUNK, len(clips))))
                                   .waveforms(progress=False), progress=progress)["mean"]
                 for i in range(0, len(clips), HF_AUDIO_CHUNK)]
        return {"mean": np.concatenate(parts, axis=1)}
    mask = encoder.preprocess.mask_token
    texts = [str(t).replace("[MASK]", mask) for t in data.originals[split]]
    spans = [(t.index(mask), t.index(mask) + len(mask)) if mask in t else (0, 0) for t in texts]
    return hf.text_features(encoder, texts, spans, select="window", progress=progress)


def hf_probe_tasks(modality: str, profile: str | None = None, root=None, max_train: int = 0, progress: bool = True):
    """The probe tasks a Hugging Face encoder can take: those whose examples it can read with its own
    preprocessing. Text: the concept task only (the masked-word task hides words at the level of
    d2v_lab's BPE tokens, which another tokenizer does not share). The raw-input baseline is read
    from the task's d2v_lab inputs (pixels, log-mel, d2v_lab's BPE tokens of the same stories)."""
    if modality == "text":
        cfg = preset(profile).run("text")
        tok = load_tokenizer(root, cfg.data.vocab_size, max_stories=cfg.data.max_stories)
        return [tasks.concept_task(tok, cfg.data.seq_len, root, max_stories=cfg.data.max_stories)
                .limit_train(max_train)]
    return probe_tasks(modality, None, None, root, max_train, progress)


def run_hf_probe(spec, out_dir, root=None, profile: str | None = None, probe_cfg: ProbeConfig | None = None,
                 progress: bool = True) -> ProbeResult:
    """Probe a Hugging Face encoder (``hf:<id>`` or a saved folder) as ``run_probe`` probes a run: the
    same tasks, splits, readout choice on validation and scores; random init = the same architecture
    with fresh weights, raw input = the task's input itself. No supervised reference (training a base
    model end to end is out of this workbench's reach). Writes probe.json into ``out_dir``."""
    out = Path(out_dir)
    encoder = hf.load_encoder(spec)
    probe_cfg = probe_cfg or preset(profile).probe
    random_encoder = hf.random_init(encoder, seed=0)
    adapter = build_model(preset(profile).run(encoder.modality)).student.adapter   # for the raw input only
    results = []
    for data in hf_probe_tasks(encoder.modality, profile, root, probe_cfg.max_train, progress):
        probed = {}
        for name, enc in (("pretrained", encoder), ("random_init", random_encoder)):
            feats = {split: hf_source_features(enc, data, split, progress) for split in tasks.SPLITS}
            probed[name] = probe_features(feats, data.labels, probe_cfg.knn_k)
        probed["raw_input"] = probe_backbone(RawInput(adapter), data, probe_cfg.knn_k, progress=progress)
        pre, rnd, raw = probed["pretrained"], probed["random_init"], probed["raw_input"]
        per_layer = [{"layer": r["layer"], "pretrained": r["test"], "pretrained_val": r["val"],
                      "random_init": q["test"], "random_init_val": q["val"]} for r, q in zip(pre["rows"], rnd["rows"])]
        results.append(TaskResult(
            modality=encoder.modality, task=data.task, checkpoint=encoder.source,
            n_train=data.n("train") + data.n("val"), n_val=data.n("val"), n_test=data.n("test"),
            chance=1.0 / len(data.classes), majority=float(np.bincount(data.labels["test"]).max() / data.n("test")),
            classes=list(data.classes), linear=Scores(pre["linear"], rnd["linear"], raw["linear"]),
            knn=Scores(pre["knn"], rnd["knn"], raw["knn"]), knn_k=probe_cfg.knn_k, supervised=None,
            selected={name: p["selected"] for name, p in probed.items()}, per_layer=per_layer, pool="mean",
            note="; ".join(n for n in (data.note, encoder.note, "no supervised reference for a Hugging Face encoder")
                           if n),
            counts=data.counts))
    result = ProbeResult(results, {**dataclasses.asdict(probe_cfg), "readout": {**READOUT, "hf": "mean pooling"}},
                         str(data_root(root)))
    out.mkdir(parents=True, exist_ok=True)
    (out / PROBE_JSON).write_text(json.dumps(result.to_json(), indent=2))
    return result
