"""The data layer: one module per dataset, each reading that dataset's canonical on-disk layout."""
from __future__ import annotations

from . import cifar10, fsdd, speech_commands, tinystories
from .audio import ClipSet, LogMelConfig, log_mel
from .cifar10 import ImageSplit, load_cifar10
from .fsdd import load_fsdd
from .root import DataError, DatasetNotFound, data_root
from .speech_commands import load_speech_commands
from .tinystories import load_stories

INFO = {"cifar10": cifar10.info, "tinystories": tinystories.info,
        "speechcommands": speech_commands.info, "fsdd": fsdd.info}


def dataset_info(root=None) -> dict:
    """Counts, classes and source folder of every dataset found under the data root. Datasets that
    are absent are listed under "missing" with the folder searched; a corrupt one raises DataError."""
    out: dict = {}
    for name, info in INFO.items():
        try:
            out[name] = info(root)
        except DatasetNotFound:
            out.setdefault("missing", {})[name] = str(data_root(root))
    return out


__all__ = ["ClipSet", "DataError", "DatasetNotFound", "ImageSplit", "LogMelConfig", "data_root",
           "dataset_info", "load_cifar10", "load_fsdd", "load_speech_commands", "load_stories", "log_mel"]
