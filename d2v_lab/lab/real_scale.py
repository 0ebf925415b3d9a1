"""The same cross-modal question asked of the released data2vec models (notebook 05, "at real scale").

Our models are small and trained for minutes; the released base models (12 blocks x 768, trained on
ImageNet, books + Wikipedia, LibriSpeech) are the real-scale answer. ``real_scale_alignment`` runs the
very same alignment (concept pairs, metrics, nulls, controls, verdicts: ``crossmodal.experiment``) on
them when they are in the local Hugging Face cache, and otherwise says how to get them and returns None:
no download starts from here, nothing fails, and the check is cheap (a few file lookups, transformers
not even imported).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from d2v_lab.crossmodal.experiment import run_alignment
from d2v_lab.crossmodal.results import AlignmentResult
from d2v_lab.evaluate.hf import HF_PREFIX, INSTALL, RELEASED, download_command, is_cached, transformers_installed
from d2v_lab.train.profiles import preset
from d2v_lab.train.runs import default_runs_dir

MODALITY_FLAGS = ("image", "text", "audio")


def align_command(out: str = "runs/real_scale", layer_search: bool = False) -> str:
    """The command line that runs the same alignment on the released models."""
    flags = " ".join(f"--{m} {HF_PREFIX}{RELEASED[m]}" for m in MODALITY_FLAGS)
    return f"d2v-lab align {flags} --out {out}" + (" --layer-search" if layer_search else "")


def missing_models() -> list[str]:
    """The released models not in the local Hugging Face cache (all of them without the hf extra)."""
    if not transformers_installed():
        return [RELEASED[m] for m in MODALITY_FLAGS]
    return [RELEASED[m] for m in MODALITY_FLAGS if not is_cached(RELEASED[m])]


def instructions(missing: list[str]) -> str:
    """What to run to get the released models (needs internet, about 1.1 GB), and then the alignment."""
    lines = [f"The released data2vec models are not all here (missing from the local Hugging Face cache: "
             f"{', '.join(missing)}). On a machine with internet access:",
             f"    {INSTALL}"]
    lines += [f"    {download_command(m)}" for m in missing]
    lines += ["then rerun this, or run the same alignment from the command line:",
              f"    {align_command()}"]
    return "\n".join(lines)


def real_scale_alignment(profile: str | None = None, out=None, root=None, layer_search: bool = False,
                         progress: bool = True, log=print) -> AlignmentResult | None:
    """The alignment of the released data2vec-vision / -text / -audio base models with the sizes of
    ``profile`` (concepts per pair, null draws), written to ``out`` (default ``runs/<profile>/real_scale``);
    or, when they are not in the local cache, the instructions to get them (``log``) and None."""
    missing = missing_models()
    if missing:
        log(instructions(missing))
        return None
    align = preset(profile)
    cfg = dataclasses.replace(align.align, layer_search=layer_search)
    out = Path(out) if out is not None else default_runs_dir(align.name) / "real_scale"
    specs = [f"{HF_PREFIX}{RELEASED[m]}" for m in MODALITY_FLAGS]
    log(f"aligning the released models ({', '.join(specs)}) into {out}")
    return run_alignment(*specs, out, cfg, root, progress)
