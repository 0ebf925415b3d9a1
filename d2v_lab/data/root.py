"""Where the datasets live, and the errors every loader raises.

The data root is ``$D2V_LAB_DATA`` when set, else ``data/`` in the project (the folder holding
``pyproject.toml``; outside a source checkout, ``./data``). Every dataset sits there in its own
canonical layout, exactly as the official download unpacks::

    <root>/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}
    <root>/TinyStories/TinyStories-{train,valid}.txt            (+ V2 / -lowercase variants)
    <root>/SpeechCommands/speech_commands_v0.0{1,2}/<word>/<speaker>_nohash_<n>.wav
    <root>/FSDD/recordings/<digit>_<speaker>_<take>.wav
"""
from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "D2V_LAB_DATA"


class DataError(Exception):
    """A data file is unreadable or not in the expected format. The message names the file and why."""


class DatasetNotFound(DataError):
    """A dataset is not under the data root (and was not, or could not be, downloaded)."""


def project_root() -> Path:
    """The source checkout this package lives in, or the working directory for an installed copy."""
    here = Path(__file__).resolve().parents[2]
    return here if (here / "pyproject.toml").is_file() else Path.cwd()


def data_root(root: str | os.PathLike | None = None) -> Path:
    """Resolve the data root: an explicit argument, else ``$D2V_LAB_DATA``, else ``<project>/data``."""
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get(ENV_VAR)
    return Path(env).expanduser() if env else project_root() / "data"


def not_found(dataset: str, searched: Path, expected: str) -> DatasetNotFound:
    """The one error message for a missing dataset: where we looked and the two ways to fix it."""
    return DatasetNotFound(
        f"{dataset} not found: looked for {expected} in {searched}.\n"
        f"Fix it in one of two ways:\n"
        f"  1. point {ENV_VAR} at a folder that holds {expected} "
        f"(e.g. export {ENV_VAR}=/path/to/data), or\n"
        f"  2. download the official archive into {searched} with "
        f"`d2v-lab data download {dataset}` (needs internet)."
    )


def cache_dir_for(preferred: Path) -> Path:
    """Cache derived files (tokenizers, features) next to the data when that folder is writable,
    else in ``~/.cache/d2v_lab`` so read-only data mounts still work."""
    if os.access(preferred, os.W_OK):
        return preferred
    fallback = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "d2v_lab"
    fallback.mkdir(parents=True, exist_ok=True)
    return fallback
