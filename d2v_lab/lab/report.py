"""report.md of a tour, and the probe table the CLI prints: every number of the run, with what it means."""
from __future__ import annotations

import platform
from datetime import datetime, timezone

import torch

from d2v_lab.crossmodal.results import SkippedPair
from d2v_lab.evaluate.results import DISCRIMINATION_MARGIN, ProbeResult, TaskResult


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _discriminates_cell(t: TaskResult) -> str:
    if t.discriminates is None:
        return "n/a"
    margin = f"{100 * t.discrimination_margin:+.1f}"
    return f"yes ({margin})" if t.discriminates else f"**NO** ({margin})"


def discrimination_line(t: TaskResult) -> str:
    """One sentence: can this task tell a good encoder from a random one (``results.discrimination``)?"""
    need = f"{100 * DISCRIMINATION_MARGIN:.0f}"
    if t.discriminates is None:
        return "discriminates: not measured (no supervised reference)"
    gap = (f"supervised {_pct(t.supervised_accuracy)} vs random init {_pct(t.linear.random_init)}: "
           f"{100 * t.discrimination_margin:+.1f} points")
    if t.discriminates:
        return f"discriminates: yes ({gap}, >= {need})"
    return (f"discriminates: NO ({gap}, < {need}): this task cannot tell a good encoder from a random one "
            f"here; not evidence either way")


def summary_table(probes: dict[str, ProbeResult]) -> str:
    """The probe results as a Markdown table (also printed by the CLI); the data2vec column carries its
    95% Wilson interval over the test items in brackets. "discriminates": does the
    supervised reference beat random init by >= 15 points (the margin in brackets)? Where it does
    not, the row is no evidence for or against pretraining."""
    rows = ["| modality | task | chance | data2vec (linear) | random init | raw input | supervised | kNN (d2v) "
            "| discriminates |",
            "|---|---|---|---|---|---|---|---|---|"]
    for m, r in probes.items():
        for t in r.tasks:
            low, high = t.interval(t.linear.pretrained)
            rows.append(f"| {m} | {t.task} (n_test={t.n_test}) | {_pct(t.chance)} | "
                        f"**{_pct(t.linear.pretrained)}** [{100 * low:.0f}, {100 * high:.0f}] | "
                        f"{_pct(t.linear.random_init)} | "
                        f"{_pct(t.linear.raw_input)} | {_pct(t.supervised_accuracy)} | {_pct(t.knn.pretrained)} | "
                        f"{_discriminates_cell(t)} |")
    return "\n".join(rows)


def render_report(summary) -> str:
    """report.md of a ``tour.TourSummary``."""
    lines = [f"# d2v_lab tour report ({summary.profile} profile)", "",
             f"Generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC on {platform.machine()} "
             f"({torch.get_num_threads()} CPU threads, torch {torch.__version__}); outputs in `{summary.out}`.", ""]
    if summary.data:
        lines += ["## Data", ""]
        for name, info in summary.data.items():
            if name != "missing":
                counts = {k: v for k, v in info.items() if isinstance(v, int)}
                lines.append(f"- **{name}** ({info.get('path')}): {counts}")
        lines += ["", "These are small subsets: read every accuracy below as a measurement at this size, "
                  "not as a benchmark result.", "", "![masking](figures/masking.png)", ""]
    if summary.pretraining:
        lines += ["## Pretraining", "", "| modality | recipe | encoder | steps | held-out loss first -> last | "
                  "target std (last / min) | samples/s |", "|---|---|---|---|---|---|---|"]
        for m, p in summary.pretraining.items():
            held = (f"{p.heldout_loss_first:.3f} -> {p.heldout_loss_last:.3f}"
                    if p.heldout_loss_first is not None else "n/a")
            lines.append(f"| {m} | data2vec {p.version}.0 | {p.encoder} | {p.steps} | {held} | "
                         f"{p.target_std_last:.3f} / {p.min_target_std:.3f} | {p.samples_per_s:.0f} |")
        lines += [""] + [f"![training {m}](figures/training_{m}.png)" for m in summary.pretraining] + [""]
    if summary.probes:
        need = f"{100 * DISCRIMINATION_MARGIN:.0f}"
        lines += ["## Linear probes (frozen features; layer, pooling and C chosen on validation)", "",
                  "Pretrained, random-init and raw-input features are read out the same way: mean or "
                  "contiguous-segment pooling of tokens (raw input: the input cut into the model's tokens), "
                  f"plus [CLS] where a model has one. A task *discriminates* when the supervised reference "
                  f"beats random init by >= {need} points; where it does not, its row is no evidence.", "",
                  summary_table(summary.probes), ""]
        for m, r in summary.probes.items():
            sel = r.main.selected["pretrained"]
            lines.append(f"- {m}: best layer {sel['layer']} ({sel['pool']} pooling); {r.main.note}".rstrip("; "))
            lines += [f"  - {t.task}: {t.note}" for t in r.extra]
            lines += [f"  - {t.task}: {discrimination_line(t)}" for t in r.tasks if t.discriminates is False]
        lines += [""] + [f"![probe {m}](figures/probe_{m}.png)" for m in summary.probes] + [""]
    if summary.alignment is not None:
        lines += ["## Do the three modalities share a latent space?", ""]
        for name, r in summary.alignment.pairs.items():
            if isinstance(r, SkippedPair):
                lines += [f"### {name}", "", f"Skipped: {r.skipped}", ""]
                continue
            lines += [f"### {name} ({r.n_pairs} concept pairs over {len(r.concepts)} concepts)", ""]
            lines += [f"- {t}" for t in r.verdict.text] + [""]
        lines += ["![joint UMAP, raw](figures/umap_raw.png) ![joint UMAP, associated](figures/umap_associated.png)",
                  "", "A UMAP picture alone proves nothing; the numbers above (each against its null band) do.", ""]
    if summary.timings_s:
        lines += ["## Time per stage (s)", "", " | ".join(f"{k}: {v}" for k, v in summary.timings_s.items()), ""]
    return "\n".join(lines)
