"""The whole story, headless: data -> masks -> pretraining (three modalities) -> probes -> alignment ->
report.md. Every stage reuses what an earlier run left (finished checkpoints, probe.json and
align.json newer than their checkpoints) and says so.
"""
from __future__ import annotations

import json
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from tqdm.auto import tqdm

from d2v_lab.data import dataset_info
from d2v_lab.data.root import DatasetNotFound, data_root, project_root
from d2v_lab.train.config import MODALITIES

STAGES = ("data", "masks", "pretrain image", "pretrain text", "pretrain audio", "probes", "alignment", "report")


def default_runs_dir(profile: str) -> Path:
    return project_root() / "runs" / profile


def run_tour(profile: str | None = None, out_dir=None, root=None, progress: bool = True) -> dict:
    """Run every stage; write figures/, report.md and summary.json into ``out_dir``; return the summary."""
    from d2v_lab.crossmodal.experiment import ALIGN_PROFILES, cached_alignment
    from d2v_lab.evaluate.probe import cached_probe
    from d2v_lab.train.inputs import example_samples
    from d2v_lab.train.loop import ensure_pretrained
    from d2v_lab.train.profiles import default_profile, get_profile

    from .plots import plot_training, read_metrics
    from .widgets import draw_masks

    profile = profile or default_profile()
    out = Path(out_dir) if out_dir else default_runs_dir(profile)
    figures = out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    timings, log = {}, []

    def say(msg: str) -> None:
        log.append(msg)
        tqdm.write(msg) if progress else None

    bar = tqdm(STAGES, desc="tour", disable=not progress)
    summary: dict = {"profile": profile, "out": str(out)}
    for stage in bar:
        bar.set_postfix_str(stage)
        tic = time.perf_counter()
        if stage == "data":
            summary["data"] = dataset_info(root)
            missing = summary["data"].get("missing")
            if missing:
                raise DatasetNotFound(f"the tour needs all four datasets; missing under {data_root(root)}: "
                                      f"{sorted(missing)}. Point D2V_LAB_DATA at them or run "
                                      f"`d2v-lab data download all`.")
        elif stage == "masks":
            fig, _ = draw_masks(example_samples(root))
            fig.savefig(figures / "masking.png", dpi=120, bbox_inches="tight")
        elif stage.startswith("pretrain"):
            modality = stage.split()[1]
            cfg = get_profile(modality, profile)
            run = ensure_pretrained(cfg, out / modality, progress=progress, root=root, log=say)
            metrics = read_metrics(run)
            plot_training(metrics, f"{modality}: data2vec {cfg.d2v.version}.0 pretraining ({profile})",
                          path=figures / f"training_{modality}.png")
            summary.setdefault("pretraining", {})[modality] = _training_summary(cfg, metrics)
        elif stage == "probes":
            summary["probes"] = {}
            for modality in MODALITIES:
                summary["probes"][modality] = cached_probe(out / modality, root, progress, log=say)
                (figures / f"probe_{modality}.png").write_bytes((out / modality / "probe.png").read_bytes())
        elif stage == "alignment":
            summary["alignment"] = cached_alignment(out, ALIGN_PROFILES[profile], root, progress, log=say)
            for tag in ("raw", "associated"):
                (figures / f"umap_{tag}.png").write_bytes((out / "alignment" / f"umap_{tag}.png").read_bytes())
        elif stage == "report":
            summary["timings_s"] = timings
            (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
            (out / "report.md").write_text(render_report(summary))
        timings[stage] = round(time.perf_counter() - tic, 1)
    return summary


def _training_summary(cfg, metrics: list[dict]) -> dict:
    held = [m["heldout_loss"] for m in metrics if "heldout_loss" in m]
    return {"steps": metrics[-1]["step"] if metrics else 0, "version": cfg.d2v.version,
            "final_loss": metrics[-1]["loss"] if metrics else None,
            "heldout_loss_first": held[0] if held else None, "heldout_loss_last": held[-1] if held else None,
            "target_std_last": metrics[-1]["target_std"] if metrics else None,
            "min_target_std": min((m["target_std"] for m in metrics), default=None),
            "samples_per_s": sum(m["samples_per_s"] for m in metrics[-10:]) / max(1, len(metrics[-10:])),
            "encoder": f"{cfg.encoder.depth} blocks x {cfg.encoder.dim} dims"}


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def summary_table(summary: dict) -> str:
    """The probe results as a Markdown table (also printed by the CLI)."""
    rows = ["| modality | task | chance | data2vec (linear) | random init | raw input | supervised | kNN (d2v) |",
            "|---|---|---|---|---|---|---|---|"]
    for m, r in summary.get("probes", {}).items():
        for t in [r, *r.get("extra_tasks", [])]:
            sup = t.get("supervised") or {}
            rows.append(f"| {m} | {t['task']} (n_test={t['n_test']}) | {_pct(t['chance'])} | "
                        f"**{_pct(t['linear']['pretrained'])}** | {_pct(t['linear']['random_init'])} | "
                        f"{_pct(t['linear']['raw_input'])} | {_pct(sup.get('accuracy'))} | "
                        f"{_pct(t['knn']['pretrained'])} |")
    return "\n".join(rows)


def render_report(summary: dict) -> str:
    """report.md: every number of the run, with what it means."""
    lines = [f"# d2v_lab tour report ({summary['profile']} profile)", "",
             f"Generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC on {platform.machine()} "
             f"({torch.get_num_threads()} CPU threads, torch {torch.__version__}); outputs in `{summary['out']}`.", ""]
    if "data" in summary:
        d = summary["data"]
        lines += ["## Data", ""]
        for name, info in d.items():
            if name != "missing":
                counts = {k: v for k, v in info.items() if isinstance(v, int)}
                lines.append(f"- **{name}** ({info.get('path')}): {counts}")
        lines += ["", "These are small subsets: read every accuracy below as a measurement at this size, "
                  "not as a benchmark result.", "", "![masking](figures/masking.png)", ""]
    if "pretraining" in summary:
        lines += ["## Pretraining", "", "| modality | recipe | encoder | steps | held-out loss first -> last | "
                  "target std (last / min) | samples/s |", "|---|---|---|---|---|---|---|"]
        for m, p in summary["pretraining"].items():
            held = (f"{p['heldout_loss_first']:.3f} -> {p['heldout_loss_last']:.3f}"
                    if p["heldout_loss_first"] is not None else "n/a")
            lines.append(f"| {m} | data2vec {p['version']}.0 | {p['encoder']} | {p['steps']} | {held} | "
                         f"{p['target_std_last']:.3f} / {p['min_target_std']:.3f} | {p['samples_per_s']:.0f} |")
        lines += [""] + [f"![training {m}](figures/training_{m}.png)" for m in summary["pretraining"]] + [""]
    if "probes" in summary:
        lines += ["## Linear probes (frozen features; layer, pooling and C chosen on validation)", "",
                  summary_table(summary), ""]
        for m, r in summary["probes"].items():
            sel = r["selected"]["pretrained"]
            lines.append(f"- {m}: best layer {sel['layer']} ({sel['pool']} pooling); {r['note']}".rstrip("; "))
            lines += [f"  - {t['task']}: {t['note']}" for t in r.get("extra_tasks", [])]
        lines += [""] + [f"![probe {m}](figures/probe_{m}.png)" for m in summary["probes"]] + [""]
    if "alignment" in summary:
        lines += ["## Do the three modalities share a latent space?", ""]
        for name, r in summary["alignment"]["pairs"].items():
            if "skipped" in r:
                lines += [f"### {name}", "", f"Skipped: {r['skipped']}", ""]
                continue
            lines += [f"### {name} ({r['n_pairs']} concept pairs over {len(r['concepts'])} concepts)", ""]
            lines += [f"- {t}" for t in r["verdict"]["text"]] + [""]
        lines += ["![joint UMAP, raw](figures/umap_raw.png) ![joint UMAP, associated](figures/umap_associated.png)",
                  "", "A UMAP picture alone proves nothing; the numbers above (each against its null band) do.", ""]
    if summary.get("timings_s"):
        lines += ["## Time per stage (s)", "", " | ".join(f"{k}: {v}" for k, v in summary["timings_s"].items()), ""]
    return "\n".join(lines)
