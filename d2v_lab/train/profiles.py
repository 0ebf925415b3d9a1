"""Named presets: the one knob most users touch. A preset fixes the pretraining run of every modality,
how the runs are probed and how the modalities are compared; ``preset(name)`` is the one lookup.

- ``ci``:  a few seconds on a CPU; for tests and the notebooks in CI. Learns almost nothing.
- ``cpu``: the best model a 2-core laptop CPU trains in <= 10 minutes per modality.
- ``gpu``: 12 x 384, 20k steps, bf16 autocast and torch.compile (step times: docs/RESULTS.md).

Paper settings (Baevski et al. 2022, 1.0 Sec. 4 / 2.0 Sec. 4) assume 100k-400k updates of a 12-layer
model; these runs have a few hundred to 20k updates of a small one, so the EMA decay follows the run
length: every profile sets ``d2v.tau_init_share = 0.01`` and takes the schedule that leaves 1% of the
random initial weights in the final teacher (``follow_run_length``, ``ema.derive_schedule``; the paper's
decays would leave most of them after a few hundred updates). K, the mask ratios and the decoder are
scaled to 4-8 layers and 50-128 tokens. What each number does, and what happens when you change it,
is the subject of notebooks 01-03.
"""
from __future__ import annotations

import dataclasses
import os

from d2v_lab.model.data2vec import Data2VecConfig
from d2v_lab.model.ema import derive_schedule
from d2v_lab.model.masking import MaskConfig
from d2v_lab.model.transformer import EncoderConfig

from .config import MODALITIES, AlignConfig, DataConfig, ProbeConfig, RunConfig, TrainConfig

PROFILES = ("ci", "cpu", "gpu")
ENV_VAR = "D2V_LAB_PROFILE"
INIT_SHARE = 0.01   # of the random initial weights left in every profile's final teacher


def default_profile() -> str:
    """$D2V_LAB_PROFILE, else 'cpu'."""
    name = os.environ.get(ENV_VAR, "cpu")
    if name not in PROFILES:
        raise ValueError(f"{ENV_VAR}={name!r} is not a profile; choose from {PROFILES}")
    return name


def paper_targets(modality: str, version: int) -> dict:
    """Target normalisation as the papers specify it (data2vec 1.0 Sec. 3.3; 2.0 Sec. 3)."""
    if version == 2:  # instance norm per block for all; images also layer-norm the average
        return {"target_layer_norm": "instance", "target_final_norm": "layer" if modality == "image" else "none"}
    return {"image": {"target_layer_norm": "layer", "target_final_norm": "layer"},
            "text": {"target_layer_norm": "layer", "target_final_norm": "none"},
            "audio": {"target_layer_norm": "instance", "target_final_norm": "none"}}[modality]


def paper_masking(modality: str, version: int) -> MaskConfig:
    """Masking of each paper, adapted to our token counts (8x8 image grid, 50 audio tokens)."""
    if modality == "image":
        return MaskConfig("block", 0.6, min_block=4) if version == 1 else MaskConfig("inverse_block", 0.8, block=3)
    if modality == "text":  # 1.0: BERT 15% (+80/10/10 in the adapter); 2.0: 48% random tokens
        return MaskConfig("random", 0.15) if version == 1 else MaskConfig("random", 0.48)
    # speech: 1.0 spans p=0.065, L=10 (49%); 2.0 spans of 5 masking exactly 50%. fairseq's v2 audio recipe
    # (mask_prob 0.5, length 5) masks less than it says: ~42% per row, ~26% after require_same_masks cuts
    # 256 rows to their minimum (model/data2vec.py). A cls_loss copied from fairseq must be multiplied by
    # its rows per GPU to mean the same here.
    return MaskConfig("span", 0.49, span=10) if version == 1 else MaskConfig("span", 0.5, span=5)


def paper_loss(modality: str, version: int) -> dict:
    if version == 2 or modality == "audio":
        return {"loss": "l2"}
    return {"loss": "smooth_l1", "loss_beta": 2.0 if modality == "image" else 4.0}


def d2v_config(modality: str, version: int, **overrides) -> Data2VecConfig:
    kwargs = {**paper_targets(modality, version), **paper_loss(modality, version),
              "head_layers": 2 if modality == "text" else 1, "version": version}
    return Data2VecConfig(**{**kwargs, **overrides})


def _ci(modality: str):
    """Two tiny blocks, 20 steps: seconds on a CPU. Enough to exercise every code path, not to learn."""
    data = DataConfig(vocab_size=1024, seq_len=64, max_examples=512) if modality == "text" else \
        DataConfig(max_examples=512)
    return (EncoderConfig(64, 2, 2),
            dict(top_k=2, num_masks=2, decoder_dim=64, tau_init_share=INIT_SHARE),
            TrainConfig(steps=20, batch_size=16 if modality == "text" else 32, lr=1e-3, warmup_steps=5,
                        log_every=5, eval_every=10, checkpoint_every=10), data)


def _cpu(steps: int, batch_size: int, lr: float, data: DataConfig = DataConfig(), **d2v):
    """6 blocks x 192 dims, data2vec 2.0 with 4 masks per sample."""
    return (EncoderConfig(192, 6, 3),
            dict(top_k=4, num_masks=4, decoder_dim=192, tau_init_share=INIT_SHARE, **d2v),
            TrainConfig(steps=steps, batch_size=batch_size, lr=lr, warmup_steps=min(100, steps // 5),
                        log_every=10, eval_every=100, checkpoint_every=100), data)


def _gpu(lr: float, data: DataConfig = DataConfig()):
    """12 blocks x 384 dims, 20k steps of 256, 8 masks per sample; bf16 and torch.compile."""
    return (EncoderConfig(384, 12, 6),
            dict(top_k=8, num_masks=8, decoder_dim=384, tau_init_share=INIT_SHARE),
            TrainConfig(steps=20000, batch_size=256, lr=lr, warmup_steps=1000, log_every=50, eval_every=1000,
                        checkpoint_every=2000, compile=True), data)


# (encoder, d2v overrides, train, data) per modality and profile. The cpu step counts are what fits
# the tour's 20-minute budget on a 2-core CPU (see benchmarks/probe_targets.py for what they reach).
_TABLE = {
    **{(m, "ci"): _ci(m) for m in MODALITIES},
    ("image", "cpu"): _cpu(steps=500, batch_size=64, lr=1.5e-3),
    ("text", "cpu"): _cpu(steps=150, batch_size=32, lr=1e-3, data=DataConfig(vocab_size=4096, seq_len=128)),
    ("audio", "cpu"): _cpu(steps=300, batch_size=64, lr=1e-3),
    ("image", "gpu"): _gpu(lr=1e-3),
    ("text", "gpu"): _gpu(lr=5e-4, data=DataConfig(vocab_size=8192, seq_len=256)),
    ("audio", "gpu"): _gpu(lr=1e-3),
}


_PROBES = {
    "ci": ProbeConfig(knn_k=10, supervised_epochs={"image": 1, "text": 2, "audio": 2}, max_train=600),
    "cpu": ProbeConfig(knn_k=20, supervised_epochs={"image": 1, "text": 5, "audio": 12}),
    "gpu": ProbeConfig(knn_k=20, supervised_epochs={"image": 50, "text": 30, "audio": 50}),
}
_ALIGN = {"ci": AlignConfig(per_concept=20, umap_points=300),
          "cpu": AlignConfig(per_concept=100, umap_points=900),
          "gpu": AlignConfig(per_concept=200, umap_points=1500)}


@dataclasses.dataclass(frozen=True)
class Preset:
    """Everything a profile fixes: ``run(modality)`` pretraining, ``probe`` and ``align``."""
    name: str
    probe: ProbeConfig
    align: AlignConfig

    def run(self, modality: str, version: int = 2) -> RunConfig:
        """The RunConfig of ``modality`` as data2vec ``version`` (1 or 2)."""
        if modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {modality!r}")
        encoder, d2v, train, data = _TABLE[(modality, self.name)]
        return follow_run_length(RunConfig(modality, self.name, encoder, paper_masking(modality, version),
                                           d2v_config(modality, version, **d2v), train, data))


def preset(name: str | None = None) -> Preset:
    """The preset called ``name`` (default: $D2V_LAB_PROFILE or 'cpu')."""
    name = name or default_profile()
    if name not in PROFILES:
        raise ValueError(f"profile must be one of {PROFILES}, got {name!r}")
    return Preset(name, _PROBES[name], _ALIGN[name])


def get_profile(modality: str, name: str | None = None, version: int = 2) -> RunConfig:
    """The RunConfig of ``modality`` under profile ``name`` (default: $D2V_LAB_PROFILE or 'cpu')."""
    return preset(name).run(modality, version)


def follow_run_length(cfg: RunConfig) -> RunConfig:
    """``cfg`` with the EMA schedule of its own run length. With ``d2v.tau_init_share`` > 0, tau0, tau_end
    and tau_ramp_steps become ``ema.derive_schedule(train.steps, tau_init_share)``, so the final teacher
    keeps that share of its initial weights; with 0, ``cfg`` is returned as it is (the schedule as given).

    Profiles apply it, and so does ``pretrain`` before it saves or compares a config: after
    ``--set train.steps=N`` the schedule follows N. For a schedule of your own (e.g. a constant tau),
    set ``d2v.tau_init_share=0`` together with tau0, tau_end and tau_ramp_steps, or they are replaced.
    """
    if cfg.d2v.tau_init_share == 0:
        return cfg
    tau0, tau_end, ramp = derive_schedule(cfg.train.steps, cfg.d2v.tau_init_share)
    return dataclasses.replace(cfg, d2v=dataclasses.replace(cfg.d2v, tau0=tau0, tau_end=tau_end,
                                                            tau_ramp_steps=ramp))


def with_version(cfg: RunConfig, version: int) -> RunConfig:
    """The same run as data2vec 1.0 or 2.0: masking, targets and loss switch to that paper's recipe."""
    d2v = dataclasses.replace(cfg.d2v, version=version, **paper_targets(cfg.modality, version),
                              **paper_loss(cfg.modality, version))
    return dataclasses.replace(cfg, d2v=d2v, mask=paper_masking(cfg.modality, version))
