"""The ``d2v-lab`` command line: data | pretrain | probe | align | tour."""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import warnings

from d2v_lab.data import DataError, dataset_info
from d2v_lab.data.download import DATASETS, ensure_dataset
from d2v_lab.data.root import data_root
from d2v_lab.evaluate.hf import RELEASED, is_hf_spec
from d2v_lab.train.checkpoint import CheckpointError
from d2v_lab.train.config import MODALITIES
from d2v_lab.train.loop import TrainingStopped, pretrain
from d2v_lab.train.profiles import PROFILES, get_profile, preset
from d2v_lab.train.runs import (
    ALIGN_JSON,
    PROBE_JSON,
    PROBE_PNG,
    REPORT,
    UMAP_TAGS,
    RunFolderError,
    TornLineWarning,
    umap_png,
)


def _print_info(info: dict) -> None:
    root = data_root()
    print(f"data root: {root}")
    if "cifar10" in info:
        c = info["cifar10"]
        print(f"\ncifar10        {c['path']}\n  train {c['train']:>6} images   test {c['test']:>6} images"
              f"\n  classes: {', '.join(c['classes'])}")
    if "tinystories" in info:
        t = info["tinystories"]
        print(f"\ntinystories    {t['path']}\n  train {t['train']:>6} stories  valid {t['valid']:>6} stories"
              f"\n  files: {', '.join(t['files'])}")
    if "speechcommands" in info:
        for v, s in info["speechcommands"]["versions"].items():
            default = "  (read by default)" if v == info["speechcommands"]["version"] else ""
            print(f"\nspeechcommands {s['path']} ({v}){default}\n  training {s['training']} clips   "
                  f"validation {s['validation']}   testing {s['testing']}   speakers {s['speakers']}"
                  f"\n  words ({len(s['words'])}): {', '.join(s['words'])}")
    if "fsdd" in info:
        f = info["fsdd"]
        print(f"\nfsdd           {f['path']}\n  {f['clips']} clips from {len(f['speakers'])} speakers: "
              f"{', '.join(f['speakers'])}")
    for name, where in info.get("missing", {}).items():
        print(f"\n{name:<14} not found under {where} (`d2v-lab data download {name}` fetches it)")


def cmd_data(args) -> int:
    if args.action == "info":
        info = dataset_info()
        if args.json:
            print(json.dumps(info))
        else:
            _print_info(info)
    else:
        names = DATASETS if args.name == "all" else [args.name]
        for name in names:
            ensure_dataset(name, data_root())
            print(f"{name}: ready under {data_root()}")
    return 0


def cmd_pretrain(args) -> int:
    cfg = get_profile(args.modality, args.profile, args.version).with_overrides(args.set or [])
    try:
        result = pretrain(cfg, args.out, resume=args.resume)
    except TrainingStopped as e:
        print(f"d2v-lab: training stopped: {e}", file=sys.stderr)
        return 3
    if int(os.environ.get("RANK", "0")):   # under torchrun: rank 0 reports the run
        return 0
    last = result.metrics[-1] if result.metrics else {}
    print(f"{cfg.modality}: {result.step}/{cfg.train.steps} steps in {result.out_dir} "
          f"(loss {last.get('loss', float('nan')):.4f}, target std {last.get('target_std', float('nan')):.3f})")
    return 0


# probe, align and tour import what they need when they run: matplotlib, scikit-learn and UMAP cost
# seconds at every start of the CLI, under torchrun in every process (pretrain needs none of them)

def cmd_probe(args) -> int:
    from d2v_lab.evaluate.probe import run_hf_probe, run_probe
    from d2v_lab.lab.figures import save_probe_figure
    from d2v_lab.lab.report import discrimination_line
    if is_hf_spec(args.checkpoint):
        if args.out is None:
            raise ValueError("--out is needed to probe a Hugging Face encoder (probe.json and probe.png go there)")
        out = args.out
        result = run_hf_probe(args.checkpoint, out, profile=args.profile, progress=not args.json)
    else:
        if args.out is not None or args.profile is not None:
            raise ValueError("--out and --profile are for Hugging Face encoders; a run is probed into its own "
                             "folder with its own profile")
        out = args.checkpoint
        result = run_probe(args.checkpoint, supervised=not args.no_supervised, progress=not args.json,
                           supervised_epochs=args.supervised_epochs)
    save_probe_figure(result, out)
    if args.json:
        print(json.dumps(result.to_json()))
        return 0
    for r in result.tasks:
        print(f"\n{r.modality} / {r.task}: {r.n_train} train (incl. {r.n_val} val), "
              f"{r.n_test} test, chance {100 * r.chance:.1f}%")
        if r.note:
            print(f"  note: {r.note}")
        print(f"  {'':<12}{'linear':>9}{'kNN':>9}")
        for name in ("pretrained", "random_init", "raw_input"):
            print(f"  {name:<12}{100 * getattr(r.linear, name):>8.1f}%{100 * getattr(r.knn, name):>8.1f}%")
        if r.supervised:
            print(f"  supervised (same architecture, {r.supervised['epochs']} epochs): "
                  f"{100 * r.supervised_accuracy:.1f}%")
        print(f"  {discrimination_line(r)}")
        sel = r.selected["pretrained"]
        print(f"  best layer on validation: {sel['layer']} ({sel['pool']} pooling)")
    print(f"\nwrote {out}/{PROBE_JSON} and {PROBE_PNG}")
    return 0


def cmd_align(args) -> int:
    from d2v_lab.crossmodal.experiment import run_alignment
    from d2v_lab.crossmodal.results import SkippedPair
    from d2v_lab.lab.figures import save_alignment_figures
    specs = (args.image, args.text, args.audio)
    if args.out is None and is_hf_spec(args.text):
        raise ValueError("--out is needed when --text is a Hugging Face encoder (results are written there)")
    out = args.out or args.text
    cfg = preset(args.profile).align
    if args.layer_search:
        cfg = dataclasses.replace(cfg, layer_search=True)
    result = run_alignment(*specs, out, cfg, progress=not args.json)
    save_alignment_figures(out)
    if args.json:
        print(json.dumps(result.to_json()))
        return 0
    for name, r in result.pairs.items():
        if isinstance(r, SkippedPair):
            print(f"\n{name}: skipped ({r.skipped})")
            continue
        print(f"\n{name}: {r.n_pairs} concept pairs")
        for line in r.verdict.text:
            print(f"  - {line}")
    print(f"\nwrote {out}/{ALIGN_JSON}, " + ", ".join(umap_png(t) for t in UMAP_TAGS))
    return 0


def cmd_tour(args) -> int:
    from d2v_lab.lab.report import summary_table
    from d2v_lab.lab.tour import run_tour
    summary = run_tour(args.profile, args.out)
    print("\n" + summary_table(summary.probes))
    for name, r in summary.alignment.compared.items():
        print(f"{name}: shared space {r.verdict.shared_space_call.upper()}, alignable with paired data "
              f"{r.verdict.alignable_call.upper()}")
    print(f"\nreport: {summary.out}/{REPORT}   (time per stage, s: {summary.timings_s})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="d2v-lab", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="inspect or download the datasets")
    data_sub = data.add_subparsers(dest="action", required=True)
    info = data_sub.add_parser("info", help="split sizes, classes and source folder of every dataset found")
    info.add_argument("--json", action="store_true", help="print one JSON object")
    dl = data_sub.add_parser("download", help="download an official dataset archive into the data root")
    dl.add_argument("name", choices=[*DATASETS, "all"])
    data.set_defaults(func=cmd_data)

    pre = sub.add_parser("pretrain", help="pretrain a data2vec model on one modality")
    pre.add_argument("--modality", required=True, choices=MODALITIES)
    pre.add_argument("--profile", choices=PROFILES, default=None,
                     help="size preset (default: $D2V_LAB_PROFILE or cpu)")
    pre.add_argument("--version", type=int, choices=(1, 2), default=2, help="data2vec 1.0 or 2.0 recipe")
    pre.add_argument("--out", required=True, help="run folder: checkpoint.pt, metrics.jsonl, config.json")
    pre.add_argument("--resume", action="store_true", help="continue the checkpoint in --out")
    pre.add_argument("--set", action="append", metavar="SECTION.FIELD=VALUE",
                     help="override a setting, e.g. --set train.lr=3e-4 --set mask.ratio=0.5")
    pre.set_defaults(func=cmd_pretrain)

    probe = sub.add_parser("probe", help="linear and k-NN probes of a pretrained model against baselines")
    probe.add_argument("--checkpoint", required=True,
                       help="a pretraining run folder (holds checkpoint.pt), or a Hugging Face encoder: "
                            f"hf:<model id> (e.g. hf:{RELEASED['image']}) or a folder written by save_pretrained")
    probe.add_argument("--out", default=None, help="Hugging Face encoders: where probe.json and probe.png go")
    probe.add_argument("--profile", choices=PROFILES, default=None,
                       help="Hugging Face encoders: probe sizes (default: $D2V_LAB_PROFILE or cpu; ci caps the "
                            "training examples)")
    probe.add_argument("--json", action="store_true", help="print one JSON object")
    reference = probe.add_mutually_exclusive_group()
    reference.add_argument("--no-supervised", action="store_true", help="skip the supervised reference model")
    reference.add_argument("--supervised-epochs", type=int, default=None, metavar="N",
                       help="train the supervised reference for N epochs instead of the profile's "
                            "(the tour then re-probes with the profile's)")
    probe.set_defaults(func=cmd_probe)

    align = sub.add_parser("align", help="are the three modalities' latent spaces aligned? numbers + nulls")
    encoder = ("{} encoder: a pretraining run folder, hf:<model id> (e.g. hf:{}; needs the hf extra) or a "
               "folder written by save_pretrained")
    align.add_argument("--image", required=True, help=encoder.format("image", RELEASED["image"]))
    align.add_argument("--text", required=True, help=encoder.format("text", RELEASED["text"]))
    align.add_argument("--audio", required=True, help=encoder.format("audio", RELEASED["audio"]))
    align.add_argument("--out", default=None,
                       help="where to write align.json and figures (default: --text; needed when that is hf)")
    align.add_argument("--layer-search", action="store_true",
                       help="CKA and raw retrieval at their best layer pair, each null taking the same maximum "
                            "over the same layer pairs (Huh et al.'s protocol; mutual kNN always does)")
    align.add_argument("--profile", choices=PROFILES, default=None, help="sizes (default: $D2V_LAB_PROFILE or cpu)")
    align.add_argument("--json", action="store_true", help="print one JSON object")
    align.set_defaults(func=cmd_align)

    tour = sub.add_parser("tour", help="the whole story headless: pretrain, probe, align, report.md")
    tour.add_argument("--profile", choices=PROFILES, default=None, help="size (default: $D2V_LAB_PROFILE or cpu)")
    tour.add_argument("--out", default=None, help="output folder (default: runs/<profile> in the project)")
    tour.set_defaults(func=cmd_tour)
    return parser


def _one_line_warnings(show=warnings.showwarning):
    """Our own warnings (a dropped torn metrics line) as one line each, like the errors; others as usual."""
    def showwarning(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, TornLineWarning):
            print(f"d2v-lab: warning: {message}", file=sys.stderr)
        else:
            show(message, category, filename, lineno, file, line)
    return showwarning


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warnings()
            return args.func(args)
    except (DataError, CheckpointError, RunFolderError, FileExistsError, ValueError) as e:
        print(f"d2v-lab: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:   # Ctrl-C: what was saved (a RunInterrupted says), not a traceback
        print(f"d2v-lab: {e or 'interrupted'}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
