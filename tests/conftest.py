"""Shared fixtures. Unit tests build tiny datasets in the canonical layouts inside tmp_path;
integration tests read the real shared data through D2V_LAB_DATA and FAIL (never skip) without it."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from builders import write_cifar, write_fsdd, write_speech_commands, write_tinystories
from d2v_lab.data.root import data_root


@pytest.fixture
def fake_root(tmp_path, monkeypatch) -> Path:
    """A data root with all four datasets in canonical layout, selected through D2V_LAB_DATA."""
    root = tmp_path / "data"
    write_cifar(root)
    write_tinystories(root)
    write_speech_commands(root)
    write_fsdd(root)
    monkeypatch.setenv("D2V_LAB_DATA", str(root))
    return root


@pytest.fixture(scope="session")
def shared_root() -> Path:
    """The real shared data (D2V_LAB_DATA). Missing data is a FAILURE: CI must never pass vacuously."""
    root = data_root()
    needed = ["cifar-10-batches-py", "TinyStories", "SpeechCommands", "FSDD"]
    missing = [n for n in needed if not (root / n).is_dir()]
    if missing:
        pytest.fail(f"shared data missing under {root} (D2V_LAB_DATA={os.environ.get('D2V_LAB_DATA')!r}): "
                    f"{missing}. Point D2V_LAB_DATA at the shared data folder.")
    return root
