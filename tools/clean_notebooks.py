"""Drop widget state from executed notebooks before committing them.

    python tools/clean_notebooks.py notebooks/*.ipynb

Keeps every ordinary output (figures, printed numbers, the text form of progress bars) so GitHub
shows a real run; removes the saved widget models (``metadata.widgets``) and the widget-view outputs
that would point at them. Widgets are rebuilt live when the notebook runs.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def clean(nb: dict) -> dict:
    nb.get("metadata", {}).pop("widgets", None)
    for cell in nb["cells"]:
        outputs = []
        for out in cell.get("outputs", []):
            data = out.get("data")
            if data is not None:
                data.pop(WIDGET_VIEW, None)
                if not data:
                    continue
            outputs.append(out)
        if "outputs" in cell:
            cell["outputs"] = outputs
    return nb


def main(paths: list[str]) -> None:
    for path in map(Path, paths):
        nb = clean(json.loads(path.read_text()))
        path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
        print(f"cleaned {path}")


if __name__ == "__main__":
    main(sys.argv[1:])
