"""Shared fixtures. Unit tests build tiny datasets in the canonical layouts inside tmp_path;
integration tests read the real shared data through D2V_LAB_DATA and FAIL (never skip) without it."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from threadpoolctl import threadpool_limits

from d2v_lab.data.root import data_root

from builders import write_cifar, write_fsdd, write_speech_commands, write_tinystories


@pytest.fixture(autouse=True)
def one_thread():
    """The tests use tiny models and small matrices: one torch and one BLAS thread are faster for
    them (several threads spin on this 2-core machine), and leave the other core free."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(limits=1):
        yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True, scope="session")
def user_cache(tmp_path_factory):
    """Derived files (the tokenizer) go to the user cache, $D2V_LAB_CACHE: point it into the test
    session's temp folder so tests never write into ~/.cache. One folder per session, not per test:
    each data root has its own subfolder anyway, and the shared data's tokenizer is trained once."""
    with pytest.MonkeyPatch.context() as mp:
        cache = tmp_path_factory.mktemp("d2v_lab_cache")
        mp.setenv("D2V_LAB_CACHE", str(cache))
        yield cache


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
