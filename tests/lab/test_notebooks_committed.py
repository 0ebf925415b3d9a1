"""The notebooks as committed: executed with the cpu profile (so GitHub shows real outputs), no saved
widget state, every widget cell tagged so nbval ignores its live output, and the deterministic cells
checked by nbval."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "notebooks").glob("*.ipynb"))


def _code_cells(nb):
    return [c for c in nb["cells"] if c["cell_type"] == "code"]


def test_the_six_notebooks_are_there():
    assert [p.stem[:2] for p in NOTEBOOKS] == ["00", "01", "02", "03", "04", "05"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_with_cpu_outputs_and_without_widget_state(path):
    nb = json.loads(path.read_text())
    assert "widgets" not in nb.get("metadata", {}), "run tools/clean_notebooks.py before committing"
    cells = _code_cells(nb)
    assert all(c["execution_count"] is not None for c in cells), "commit the notebook executed"
    assert not [o for c in cells for o in c["outputs"] if o["output_type"] == "error"]
    assert not [o for c in cells for o in c["outputs"] if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    first = "".join(cells[0]["outputs"][0]["text"])
    assert first.startswith("profile: cpu"), first
    assert any("D2V_LAB_PROFILE=cpu" in "".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_widget_cells_are_ignored_by_nbval(path):
    for cell in _code_cells(json.loads(path.read_text())):
        if "_widget(" in "".join(cell["source"]):
            assert "nbval-ignore-output" in cell["metadata"].get("tags", [])


def test_masking_and_ema_notebooks_check_their_deterministic_outputs():
    for stem in ("01_masking", "02_ema_teacher_targets"):
        nb = json.loads(next(p for p in NOTEBOOKS if p.stem == stem).read_text())
        assert sum("NBVAL_CHECK_OUTPUT" in c["metadata"].get("tags", []) for c in _code_cells(nb)) >= 2
