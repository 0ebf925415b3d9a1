"""The whole story, headless: data -> masks -> pretraining (three modalities) -> probes -> alignment ->
report.md. Every stage reuses what an earlier run left (finished checkpoints, probe.json and
align.json newer than their checkpoints) and says so. Imports neither ipywidgets nor IPython.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from d2v_lab.crossmodal.experiment import cached_alignment
from d2v_lab.crossmodal.results import AlignmentResult
from d2v_lab.data import dataset_info
from d2v_lab.data.root import DatasetNotFound, data_root
from d2v_lab.evaluate.probe import cached_probe
from d2v_lab.evaluate.results import ProbeResult
from d2v_lab.train.config import MODALITIES, RunConfig
from d2v_lab.train.inputs import example_samples
from d2v_lab.train.loop import ensure_pretrained
from d2v_lab.train.profiles import preset
from d2v_lab.train.runs import ALIGNMENT, FIGURES, REPORT, SUMMARY, default_runs_dir, read_metrics

from .demos import draw_masks
from .figures import save_alignment_figures, save_probe_figure
from .plots import plot_training
from .report import render_report

STAGES = ("data", "masks", "pretrain image", "pretrain text", "pretrain audio", "probes", "alignment", "report")


@dataclass(frozen=True)
class TrainingSummary:
    """What one pretraining run did, from its metrics.jsonl."""
    steps: int
    version: int
    final_loss: float | None
    heldout_loss_first: float | None
    heldout_loss_last: float | None
    target_std_last: float | None
    min_target_std: float | None
    samples_per_s: float
    encoder: str

    @classmethod
    def from_metrics(cls, cfg: RunConfig, metrics: list[dict]) -> TrainingSummary:
        held = [m["heldout_loss"] for m in metrics if "heldout_loss" in m]
        last = metrics[-1] if metrics else {}
        return cls(steps=last.get("step", 0), version=cfg.d2v.version, final_loss=last.get("loss"),
                   heldout_loss_first=held[0] if held else None, heldout_loss_last=held[-1] if held else None,
                   target_std_last=last.get("target_std"),
                   min_target_std=min((m["target_std"] for m in metrics), default=None),
                   samples_per_s=sum(m["samples_per_s"] for m in metrics[-10:]) / max(1, len(metrics[-10:])),
                   encoder=f"{cfg.encoder.depth} blocks x {cfg.encoder.dim} dims")


@dataclass
class TourSummary:
    """Everything the tour measured; ``to_json()`` is summary.json."""
    profile: str
    out: str
    data: dict = field(default_factory=dict)
    pretraining: dict[str, TrainingSummary] = field(default_factory=dict)
    probes: dict[str, ProbeResult] = field(default_factory=dict)
    alignment: AlignmentResult | None = None
    timings_s: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"profile": self.profile, "out": self.out, "data": self.data,
                "pretraining": {m: vars(s) for m, s in self.pretraining.items()},
                "probes": {m: r.to_json() for m, r in self.probes.items()},
                "alignment": None if self.alignment is None else self.alignment.to_json(),
                "timings_s": self.timings_s}


def run_tour(profile: str | None = None, out_dir=None, root=None, progress: bool = True) -> TourSummary:
    """Run every stage; write figures/, report.md and summary.json into ``out_dir``; return the summary."""
    chosen = preset(profile)
    out = Path(out_dir) if out_dir else default_runs_dir(chosen.name)
    figures = out / FIGURES
    figures.mkdir(parents=True, exist_ok=True)

    def say(msg: str) -> None:
        if progress:
            tqdm.write(msg)

    bar = tqdm(STAGES, desc="tour", disable=not progress)
    summary = TourSummary(chosen.name, str(out))
    for stage in bar:
        bar.set_postfix_str(stage)
        tic = time.perf_counter()
        if stage == "data":
            summary.data = dataset_info(root)
            missing = summary.data.get("missing")
            if missing:
                raise DatasetNotFound(f"the tour needs all four datasets; missing under {data_root(root)}: "
                                      f"{sorted(missing)}. Point D2V_LAB_DATA at them or run "
                                      f"`d2v-lab data download all`.")
        elif stage == "masks":
            fig, _ = draw_masks(example_samples(root))
            fig.savefig(figures / "masking.png", dpi=120, bbox_inches="tight")
        elif stage.startswith("pretrain"):
            modality = stage.split()[1]
            cfg = chosen.run(modality)
            run = ensure_pretrained(cfg, out / modality, progress=progress, root=root, log=say)
            metrics = read_metrics(run)
            plot_training(metrics, f"{modality}: data2vec {cfg.d2v.version}.0 pretraining ({chosen.name})",
                          path=figures / f"training_{modality}.png")
            summary.pretraining[modality] = TrainingSummary.from_metrics(cfg, metrics)
        elif stage == "probes":
            for modality in MODALITIES:
                result = cached_probe(out / modality, root, progress, log=say)
                save_probe_figure(result, out / modality, figures / f"probe_{modality}.png")
                summary.probes[modality] = result
        elif stage == "alignment":
            summary.alignment = cached_alignment(out, chosen.align, root, progress, log=say)
            save_alignment_figures(out / ALIGNMENT, figures)
        elif stage == "report":
            (out / SUMMARY).write_text(json.dumps(summary.to_json(), indent=2, default=str))
            (out / REPORT).write_text(render_report(summary))
        summary.timings_s[stage] = round(time.perf_counter() - tic, 1)
    return summary
