"""The ``d2v-lab`` command line: data | pretrain | probe | align | tour."""
from __future__ import annotations

import argparse
import json
import sys

from .data import DataError, dataset_info
from .data.download import DATASETS, ensure_dataset
from .data.root import data_root


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
        s = info["speechcommands"]
        print(f"\nspeechcommands {s['path']} ({s['version']})\n  training {s['training']} clips   "
              f"validation {s['validation']}   testing {s['testing']}\n  words ({len(s['words'])}): "
              f"{', '.join(s['words'])}")
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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except DataError as e:
        print(f"d2v-lab: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
