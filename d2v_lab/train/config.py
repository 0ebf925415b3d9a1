"""Run configuration: small frozen dataclasses, and ``--set key=value`` overrides on them.

A run is fully described by a ``RunConfig``; it is saved in every checkpoint as plain JSON-able data,
so a checkpoint says how it was made and a resumed run can check it continues the same run.

Every setting of every section is checked when the config is made (``check_settings``, the table
``RULES``): its type, its range, that a number is finite, and the settings that must agree with each
other (``encoder.dim`` and ``encoder.heads``, ``mask.ratio`` and the modality's token count). A bad
value is thus refused at once, by name, before any data is read or any file written; without the
checks some crashed with a traceback after minutes of data loading, and some were silently taken to
mean something else (``data.max_examples=-1`` dropped one example, ``train.eval_every=-1`` meant
"at every log").
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Callable

from d2v_lab.data.tokenizer import SPECIAL_TOKENS
from d2v_lab.model.data2vec import Data2VecConfig
from d2v_lab.model.masking import MASK_KINDS, MaskConfig
from d2v_lab.model.targets import NORMS
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
        check_settings({"data": _values(self)})


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 1000
    batch_size: int = 128        # the global batch: of all processes (torchrun) and micro-batches together
    grad_accum: int = 1          # micro-batches per step, their gradients summed: the same update in less
                                 # memory (a smaller GPU runs the gpu profile's batch)
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
        check_settings({"train": _values(self)})


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
        if not isinstance(self.profile, str) or not self.profile:
            raise ValueError(f"profile must be a profile's name, got {self.profile!r}")
        for name, kind in _SECTIONS.items():
            if not isinstance(getattr(self, name), kind):
                raise ValueError(f"RunConfig.{name} must be a {kind.__name__}, got {getattr(self, name)!r}")
        # the model's sections check little themselves (model/ knows nothing of settings or --set):
        # every section is checked here, with the settings' names, before minutes of data loading
        check_settings({name: _values(getattr(self, name)) for name in _SECTIONS}, self.modality)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        """The config saved by ``to_dict`` (a checkpoint's, a config.json's)."""
        for name, kind in _SECTIONS.items():
            unknown = set(d.get(name, {})) - {f.name for f in dataclasses.fields(kind)}
            if unknown:  # e.g. saved by a newer d2v_lab: say so, not "unexpected keyword argument"
                raise ValueError(f"unknown setting(s) {', '.join(sorted(f'{name}.{u}' for u in unknown))} "
                                 f"in a saved config; was it made by a newer d2v_lab?")
        sections = {k: _tuples(_SECTIONS[k], v) for k, v in d.items() if k in _SECTIONS}
        # check the values before the model's sections are built: their own checks are fewer and
        # name no setting (EncoderConfig(heads=0) divides by zero)
        check_settings({k: {**_values(_SECTIONS[k]()), **v} for k, v in sections.items()}, d.get("modality"))
        kwargs = {k: (_SECTIONS[k](**sections[k]) if k in _SECTIONS else v) for k, v in d.items()}
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
            changes.setdefault(section, {})[name] = _parse(raw.strip(), getattr(part, name), key)
        # every setting, changed or not, is checked before any section is rebuilt (see from_dict)
        check_settings({sec: {**_values(getattr(self, sec)), **changes.get(sec, {})} for sec in _SECTIONS},
                       self.modality)
        return dataclasses.replace(self, **{sec: dataclasses.replace(getattr(self, sec), **kv)
                                            for sec, kv in changes.items()})


def _values(part) -> dict:
    """A section's settings as a flat dict (``dataclasses.asdict`` would also copy them deeply)."""
    return {f.name: getattr(part, f.name) for f in dataclasses.fields(part)}


def _tuples(cls, values: dict) -> dict:
    """JSON turns tuples into lists; turn them back where the dataclass default is a tuple."""
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    return {k: tuple(v) if isinstance(defaults.get(k), tuple) and isinstance(v, list) else v
            for k, v in values.items()}


def _parse(raw: str, current, key: str):
    """The text of ``--set key=raw`` as a value of the setting's type (that of its ``current`` value).
    A pair is written ``0.9,0.98`` (brackets optional). The range is checked later, with the rest."""
    kind = type(current)
    try:
        if kind is bool:
            if raw.lower() not in ("true", "false", "1", "0"):
                raise ValueError
            return raw.lower() in ("true", "1")
        if kind is tuple:
            items = [x.strip() for x in raw.strip("[]() ").split(",")]
            if len(items) != len(current):
                raise ValueError
            return tuple(type(c)(x) for c, x in zip(current, items))
        return kind(raw)
    except ValueError:
        what = {bool: "true or false", int: "an integer", float: "a number"}.get(kind) or \
            (f"{len(current)} comma-separated numbers" if kind is tuple else kind.__name__)
        raise ValueError(f"{key}={raw!r}: cannot read it as {what}; e.g. --set {key}={_example(current)}") from None


# --- every setting's rule ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Rule:
    """What a setting's value must be: ``text`` says it in the error message, ``ok`` tests it."""
    text: str
    ok: Callable[[object], bool]


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)  # True is an int to Python, not to a user


def _is_number(v) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


def integer(lo: int, hi: int | None = None, note: str = "") -> Rule:
    text = f"an integer >= {lo}" if hi is None else f"an integer in [{lo}, {hi}]"
    return Rule(text + note, lambda v: _is_int(v) and v >= lo and (hi is None or v <= hi))


def number(lo: float, hi: float | None = None, lo_open: bool = False, hi_open: bool = False,
           note: str = "") -> Rule:
    """A FINITE number in the interval: inf and nan are never a setting (lr=inf trains nothing)."""
    if hi is None:
        text = f"a finite number {'>' if lo_open else '>='} {lo}"
    else:
        text = f"in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    return Rule(text + note, lambda v: _is_number(v) and (v > lo if lo_open else v >= lo)
                and (hi is None or (v < hi if hi_open else v <= hi)))


def one_of(*choices) -> Rule:
    return Rule("one of " + ", ".join(map(repr, choices)),
                lambda v: type(v) in {type(c) for c in choices} and v in choices)


BOOL = Rule("true or false", lambda v: isinstance(v, bool))
PAIR = Rule("two numbers in [0, 1)",
            lambda v: isinstance(v, tuple) and len(v) == 2 and all(_is_number(x) and 0 <= x < 1 for x in v))
DEVICE = Rule("'auto', 'cpu', 'mps', 'cuda' or 'cuda:N'",
              lambda v: isinstance(v, str) and re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", v) is not None)
ODD = Rule("an odd integer >= 1 (an even kernel would shift the sequence by one)",
           lambda v: _is_int(v) and v >= 1 and v % 2 == 1)
EPOCHS = Rule(f"a dict of modality ({', '.join(MODALITIES)}) -> an integer >= 0",
              lambda v: isinstance(v, dict) and all(k in MODALITIES and _is_int(n) and n >= 0 for k, n in v.items()))
UNIT = number(0, 1, hi_open=True)           # a probability or a fraction that must leave something

RULES: dict[str, dict[str, Rule]] = {
    "data": {
        "vocab_size": integer(len(SPECIAL_TOKENS) + 257, note=" (the special tokens and the 256 bytes come first)"),
        "seq_len": integer(3, note=" ([CLS] and at least one token to mask and one to see)"),
        "max_stories": integer(1),
        "use_fsdd": BOOL,
        "freq_warp": UNIT,
        "time_stretch": UNIT,
        "max_examples": integer(0, note=" (0 = all)"),
    },
    "train": {
        "steps": integer(1),
        "batch_size": integer(1),
        "grad_accum": integer(1, note=" (1 = the whole batch at once)"),
        "lr": number(0, lo_open=True),
        "weight_decay": number(0),
        "warmup_steps": integer(0),
        "betas": PAIR,
        "clip_grad": number(0, lo_open=True),
        "log_every": integer(1),
        "eval_every": integer(0, note=" (0 = never)"),
        "checkpoint_every": integer(1),
        "min_target_std": number(0, note=" (0 = no collapse guard)"),
        "seed": integer(0),
        "device": DEVICE,
        "precision": one_of("auto", "fp32", "bf16"),
        "compile": BOOL,
        "threads": integer(0, note=" (0 = torch's default)"),
    },
    "encoder": {
        "dim": integer(1),
        "depth": integer(1),
        "heads": integer(1),
        "mlp_ratio": number(0, lo_open=True),
        "dropout": UNIT,
        "drop_path": UNIT,
    },
    "mask": {
        "kind": one_of(*MASK_KINDS),
        "ratio": number(0, 1, lo_open=True, hi_open=True, note=": strictly between 0 and 1, so that some "
                        "tokens are predicted and some seen"),
        "min_block": integer(1),
        "block": integer(1),
        "span": integer(1),
    },
    "d2v": {
        "version": one_of(1, 2),
        "top_k": integer(1),
        "target_layer_norm": one_of(*NORMS),
        "target_final_norm": one_of(*NORMS),
        "loss": one_of("l2", "smooth_l1"),
        "loss_beta": number(0),
        "head_layers": one_of(1, 2),
        "num_masks": integer(1),
        "decoder_dim": integer(1),
        "decoder_layers": integer(1),
        "decoder_kernel": ODD,
        "decoder_groups": integer(1),
        "mask_noise_std": number(0),
        "cls_loss": number(0),
        "tau0": number(0, 1),
        "tau_end": number(0, 1),
        "tau_ramp_steps": integer(0),
        "tau_init_share": number(0, 1, hi_open=True, note=" (0 = use tau0 / tau_end as given)"),
    },
    "probe": {
        "knn_k": integer(1),
        "supervised_epochs": EPOCHS,
        "max_train": integer(0, note=" (0 = all)"),
    },
    "align": {
        "per_concept": integer(1),
        "n_shuffles": integer(1),
        "common_dim": integer(1),
        "umap_points": integer(1),
        "seed": integer(0),
        "layer_search": BOOL,
    },
}


def maskable_tokens(modality: str, seq_len: int) -> int:
    """How many tokens a sample of ``modality`` offers the masking (its [CLS] is never masked): the
    8x8 patch grid of a 32x32 image in 4x4 patches, 100 log-mel frames in pairs, or ``seq_len - 1``
    text tokens. The adapters in model/modalities.py define these; tests/train/test_bad_settings.py
    checks that the two agree."""
    return {"image": 64, "audio": 50, "text": seq_len - 1}[modality]


def check_settings(sections: dict[str, dict], modality: str | None = None) -> None:
    """Refuse the first bad setting among ``sections`` ({"train": {"lr": 1e-3, ...}, ...}): a ValueError
    of one line that names the setting, its value, what it must be, and a value to use instead. Each
    setting is checked on its own first; the settings that must agree with each other only when every
    one of them is fine on its own (``encoder.dim=0`` is one mistake, not three). Settings other than
    the first bad one are named at the end, so one run lists every setting to fix."""
    problems = [(f"{section}.{name}", _problem(f"{section}.{name}", value, RULES[section][name]))
                for section, values in sections.items() for name, value in values.items()
                if not RULES[section][name].ok(value)]
    if not problems:
        problems = _disagreements(sections, modality)
    if problems:
        others = [key for key, _ in problems[1:]]
        raise ValueError(problems[0][1] + (f" (also check {', '.join(others)})" if others else ""))


def _problem(key: str, value, rule: Rule) -> str:
    how = "--set " if key.partition(".")[0] in _SECTIONS else ""   # probe and align have no --set
    return f"{key}={value!r}: must be {rule.text}; e.g. {how}{key}={_example(_default(key))}"


def _default(key: str):
    section, _, name = key.partition(".")
    f = next(f for f in dataclasses.fields(SECTIONS[section]) if f.name == name)
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def _example(value) -> str:
    """A value as it is written after ``--set key=``."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return str(value)


def _disagreements(s: dict[str, dict], modality: str | None) -> list[tuple[str, str]]:
    """The settings that are fine alone but not together (only among the sections given)."""
    out = []
    train, encoder, mask, d2v, data = (s.get(k) for k in ("train", "encoder", "mask", "d2v", "data"))
    if train and train["eval_every"] % train["log_every"]:
        every = train["log_every"] * max(1, round(train["eval_every"] / train["log_every"]))
        out.append(("train.eval_every",
                    f"train.eval_every={train['eval_every']}: must be 0 or a multiple of train.log_every="
                    f"{train['log_every']} (the held-out loss is computed on logged steps, so it would "
                    f"come only every {math.lcm(train['eval_every'], train['log_every'])} steps); "
                    f"e.g. --set train.eval_every={every}"))
    if train and train["grad_accum"] > train["batch_size"]:
        out.append(("train.grad_accum", f"train.grad_accum={train['grad_accum']}: more micro-batches than the "
                                        f"train.batch_size={train['batch_size']} samples of a step; e.g. --set "
                                        f"train.grad_accum={max(1, train['batch_size'] // 2)}"))
    if encoder:
        dim, heads = encoder["dim"], encoder["heads"]
        multiple = {"image": 4, "audio": 2}.get(modality, 1)   # sin-cos positions: 2 axes x (sin, cos)
        step = math.lcm(heads, multiple)
        fix = f"e.g. --set encoder.dim={max(step, round(dim / step) * step)}"
        if dim % heads:
            out.append(("encoder.dim", f"encoder.dim={dim}: must be a multiple of encoder.heads={heads} (each "
                                       f"head gets dim/heads channels); {fix}"))
        elif dim % multiple:
            out.append(("encoder.dim", f"encoder.dim={dim}: must be a multiple of {multiple} for {modality} "
                                       f"(its fixed sin-cos positions split the channels {multiple} ways); {fix}"))
        if int(dim * encoder["mlp_ratio"]) < 1:
            out.append(("encoder.mlp_ratio", f"encoder.mlp_ratio={encoder['mlp_ratio']}: gives the FFN "
                                             f"int({dim} * {encoder['mlp_ratio']}) = 0 hidden units; "
                                             f"e.g. --set encoder.mlp_ratio=4.0"))
    if d2v and d2v["decoder_dim"] % d2v["decoder_groups"]:
        out.append(("d2v.decoder_groups", f"d2v.decoder_groups={d2v['decoder_groups']}: must divide "
                                          f"d2v.decoder_dim={d2v['decoder_dim']} (each group convolves its own "
                                          f"channels); e.g. --set d2v.decoder_groups=1"))
    if d2v and encoder and d2v["top_k"] > encoder["depth"]:
        out.append(("d2v.top_k", f"d2v.top_k={d2v['top_k']} exceeds the encoder depth {encoder['depth']} (the "
                                 f"targets average the top K of the teacher's blocks); e.g. --set d2v.top_k="
                                 f"{encoder['depth']}, or a deeper encoder.depth"))
    if d2v and d2v["cls_loss"] > 0 and d2v["target_layer_norm"] == "instance" and d2v["target_final_norm"] == "none":
        out.append(("d2v.cls_loss", f"d2v.cls_loss={d2v['cls_loss']}: needs a final target norm (instance-"
                                    f"normalised targets average to 0, so the [CLS] target would be constant); "
                                    f"e.g. --set d2v.target_final_norm=layer, or d2v.cls_loss=0"))
    if mask and modality in MODALITIES and data:
        n = maskable_tokens(modality, data["seq_len"])
        if mask["kind"] in ("block", "inverse_block") and modality != "image":
            out.append(("mask.kind", f"mask.kind={mask['kind']!r}: needs a 2-D grid of tokens, which {modality} "
                                     f"does not have; e.g. --set mask.kind=span or mask.kind=random"))
        elif mask["kind"] == "span" and mask["span"] > n:
            out.append(("mask.span", f"mask.span={mask['span']}: longer than the {n} {modality} tokens of a "
                                     f"sample; e.g. --set mask.span={min(5, n)}"))
        k = round(mask["ratio"] * n)
        if not 1 <= k <= n - 1:
            lo, hi = 0.5 / n, 1 - 0.5 / n
            out.append(("mask.ratio", f"mask.ratio={mask['ratio']}: masks {k} of the {n} {modality} tokens; at "
                                      f"least one must be masked and one seen, so it must be in ({lo:.3g}, "
                                      f"{hi:.3g}); e.g. --set mask.ratio=0.5"))
    return out


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

    def __post_init__(self):
        check_settings({"probe": _values(self)})


@dataclass(frozen=True)
class AlignConfig:
    """How the three modalities' spaces are compared (``d2v_lab.crossmodal.experiment``)."""
    per_concept: int = 100    # samples per concept and modality
    n_shuffles: int = 200     # permutation / rotation null size
    common_dim: int = 32      # width of the unfitted common space (per-modality PCA)
    umap_points: int = 1000   # at most this many points in the UMAP pictures
    seed: int = 0
    # CKA and raw retrieval at the best layer pair instead of the last layers (mutual kNN always
    # searches); each null then takes the same maximum over the same layer pairs
    layer_search: bool = False

    def __post_init__(self):
        check_settings({"align": _values(self)})


# the sections of a RunConfig; SECTIONS: every section RULES knows
_SECTIONS = {"encoder": EncoderConfig, "mask": MaskConfig, "d2v": Data2VecConfig, "train": TrainConfig,
             "data": DataConfig}
SECTIONS = {**_SECTIONS, "probe": ProbeConfig, "align": AlignConfig}

