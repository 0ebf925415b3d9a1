"""Run configuration: small frozen dataclasses, and ``--set key=value`` overrides on them.

A run is fully described by a ``RunConfig``; it is saved in every checkpoint as plain JSON-able data,
so a checkpoint says how it was made and a resumed run can check it continues the same run.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from d2v_lab.model.data2vec import Data2VecConfig
from d2v_lab.model.masking import MaskConfig
from d2v_lab.model.transformer import EncoderConfig

MODALITIES = ("image", "text", "audio")


@dataclass(frozen=True)
class DataConfig:
    vocab_size: int = 4096       # text: BPE vocabulary
    seq_len: int = 128           # text: tokens per pretraining window ([CLS] + 127)
    max_stories: int = 200_000   # text: cap on training stories (the full V1 file has 2.1M)
    use_fsdd: bool = True        # audio: add FSDD's training speakers to Speech Commands
    freq_warp: float = 0.0       # audio: stretch the mel axis by a random factor in [1-w, 1+w] (a new voice)
    time_stretch: float = 0.0    # audio: stretch the time axis by a random factor in [1-s, 1+s] (speed)
    max_examples: int = 0        # any modality: use only the first N training examples (0 = all)

    def __post_init__(self):
        for name in ("freq_warp", "time_stretch"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"data.{name} must be in [0, 1), got {getattr(self, name)}")


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 1000
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 100
    betas: tuple[float, float] = (0.9, 0.98)
    clip_grad: float = 1.0
    log_every: int = 10
    eval_every: int = 100        # held-out masked-prediction loss every N steps (0 = never)
    checkpoint_every: int = 500
    min_target_std: float = 0.1  # collapse guard (fairseq's min_target_var is 0.1)
    seed: int = 0
    device: str = "auto"         # auto | cpu | cuda | mps
    precision: str = "auto"      # auto | fp32 | bf16 (autocast; the teacher's weights stay fp32).
                                 # auto = bf16 where the hardware does it natively, else fp32
    compile: bool = False        # torch.compile the encoders (GPU profile)
    threads: int = 0             # CPU threads (0 = torch's default)

    def __post_init__(self):
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"precision must be 'auto', 'fp32' or 'bf16', got {self.precision!r}")
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("steps and batch_size must be >= 1")
        if not self.lr > 0 or self.clip_grad <= 0:
            raise ValueError(f"train.lr and train.clip_grad must be > 0, got {self.lr} and {self.clip_grad}")
        if self.warmup_steps < 0 or self.weight_decay < 0:
            raise ValueError(f"train.warmup_steps and train.weight_decay must be >= 0, got "
                             f"{self.warmup_steps} and {self.weight_decay}")


@dataclass(frozen=True)
class RunConfig:
    modality: str
    profile: str
    encoder: EncoderConfig
    mask: MaskConfig
    d2v: Data2VecConfig
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)

    def __post_init__(self):
        if self.modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {self.modality!r}")
        if self.d2v.top_k > self.encoder.depth:  # refused here, before minutes of data loading
            raise ValueError(f"top_k={self.d2v.top_k} exceeds the encoder depth {self.encoder.depth}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        parts = {"encoder": EncoderConfig, "mask": MaskConfig, "d2v": Data2VecConfig,
                 "train": TrainConfig, "data": DataConfig}
        kwargs = {k: (parts[k](**_tuples(parts[k], v)) if k in parts else v) for k, v in d.items()}
        return cls(**kwargs)

    def with_overrides(self, assignments: list[str]) -> "RunConfig":
        """Apply ``section.field=value`` strings, e.g. ``train.lr=3e-4`` or ``mask.ratio=0.5``. All
        changes to one section are applied together, so ``encoder.dim=128 encoder.heads=2`` works in
        either order."""
        changes: dict[str, dict] = {}
        for item in assignments:
            key, sep, raw = item.partition("=")
            section, dot, name = key.strip().partition(".")
            if not sep or not dot:
                raise ValueError(f"--set expects section.field=value (e.g. train.lr=3e-4), got {item!r}")
            part = getattr(self, section, None)
            if not dataclasses.is_dataclass(part) or name not in {f.name for f in dataclasses.fields(part)}:
                raise ValueError(f"unknown setting {key!r}; sections: encoder, mask, d2v, train, data")
            changes.setdefault(section, {})[name] = _parse(raw.strip(), type(getattr(part, name)), key)
        return dataclasses.replace(self, **{sec: dataclasses.replace(getattr(self, sec), **kv)
                                            for sec, kv in changes.items()})


def _tuples(cls, values: dict) -> dict:
    """JSON turns tuples into lists; turn them back where the dataclass default is a tuple."""
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    return {k: tuple(v) if isinstance(defaults.get(k), tuple) else v for k, v in values.items()}


def _parse(raw: str, kind: type, key: str):
    try:
        if kind is bool:
            if raw.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return raw.lower() in ("true", "1")
        if kind is tuple:
            return tuple(json.loads(raw))
        return kind(raw)
    except (ValueError, json.JSONDecodeError):
        raise ValueError(f"{key}: cannot read {raw!r} as {kind.__name__}") from None


def config_diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested config dicts."""
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += config_diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}: {va!r} != {vb!r}")
    return out


@dataclass(frozen=True)
class ProbeConfig:
    """How a pretrained encoder is probed (``d2v_lab.evaluate.probe``)."""
    knn_k: int = 20
    supervised_epochs: dict = field(default_factory=dict)  # per modality; 0 = skip the supervised reference
    max_train: int = 0            # cap on probe training examples (0 = all)


@dataclass(frozen=True)
class AlignConfig:
    """How the three modalities' spaces are compared (``d2v_lab.crossmodal.experiment``)."""
    per_concept: int = 100    # samples per concept and modality
    n_shuffles: int = 200     # permutation / rotation null size
    common_dim: int = 32      # width of the unfitted common space (per-modality PCA)
    umap_points: int = 1000   # at most this many points in the UMAP pictures
    seed: int = 0

