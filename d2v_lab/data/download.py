"""Download the official datasets with pooch: known checksums, a progress bar, unpacked in place.

Nothing downloads unless asked (``d2v-lab data download NAME`` or a loader's ``download=True``):
the full archives are large (CIFAR-10 163 MB, Speech Commands v0.01 1.4 GB, TinyStories V1 ~1.9 GB).
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pooch

from .root import ENV_VAR, DataError, DatasetNotFound


@dataclass(frozen=True)
class Remote:
    url: str
    known_hash: str            # "md5:..." or "sha256:..." as pooch expects
    unpack_to: str | None      # folder under the data root for an archive; None = plain file
    file_to: str | None = None  # folder under the data root for a plain file


REMOTES: dict[str, list[Remote]] = {
    # torchvision's CIFAR10 uses the same URL and md5; the archive holds cifar-10-batches-py/.
    "cifar10": [Remote("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                       "md5:c58f30108f718f92721af3b95e74349a", unpack_to=".")],
    # torchaudio's SPEECHCOMMANDS checksum; the archive has no top folder, so unpack into the version dir.
    "speechcommands": [Remote("http://download.tensorflow.org/data/speech_commands_v0.01.tar.gz",
                              "sha256:743935421bb51cccdb6bdd152e04c5c70274e935c82119ad7faeec31780d811d",
                              unpack_to="SpeechCommands/speech_commands_v0.01")],
    "tinystories": [
        # The V1 files (19 MB valid, 1.9 GB train); sha256 = the files' Hugging Face LFS object ids.
        Remote("https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main/TinyStories-valid.txt",
               "sha256:94e431816c4cce81ff71e4408ff8d3bda9a42e8d2663986697c3954288cb38b4",
               unpack_to=None, file_to="TinyStories"),
        Remote("https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main/TinyStories-train.txt",
               "sha256:c5cf5e22ff13614e830afbe61a99fbcbe8bcb7dd72252b989fa1117a368d401f",
               unpack_to=None, file_to="TinyStories"),
    ],
    # FSDD release v1.0.9 (5 speakers, 2,500 clips); checksum from tensorflow_datasets' spoken_digit.
    # Later tags have no published checksum, and GitHub builds tag archives on demand.
    "fsdd": [Remote("https://github.com/Jakobovski/free-spoken-digit-dataset/archive/v1.0.9.tar.gz",
                    "sha256:8bc44cde129d505cbbb6b365c09f80c663f2aa77578afc634e6141a2f87100c0",
                    unpack_to=".downloads/fsdd")],
}
DATASETS = tuple(REMOTES)


def _retrieve(remote: Remote, root: Path) -> None:
    """Fetch one remote (skipped when a verified copy is already there) and unpack archives."""
    downloads = root / ".downloads"
    fname = remote.url.rsplit("/", 1)[-1]
    processor = pooch.Untar(extract_dir=str((root / remote.unpack_to).resolve())) if remote.unpack_to else None
    pooch.retrieve(remote.url, known_hash=remote.known_hash, fname=fname,
                   path=downloads if remote.unpack_to else root / remote.file_to,
                   progressbar=True, processor=processor)


def ensure_dataset(name: str, root: Path) -> None:
    """Download and unpack ``name`` into ``root`` (idempotent: pooch skips files already verified)."""
    if name not in REMOTES:
        raise ValueError(f"unknown dataset {name!r}; choose from {DATASETS}")
    root.mkdir(parents=True, exist_ok=True)
    for remote in REMOTES[name]:
        try:
            _retrieve(remote, root)
        except ValueError as e:  # pooch's checksum mismatch
            raise DataError(f"{remote.url}: download does not match its known checksum ({e}); "
                            f"run the download again, and report it if it fails the same way") from e
        except Exception as e:  # network failure: offline, proxy, server down
            reason = " ".join(str(e).split())  # one line: network errors often span several
            raise DatasetNotFound(
                f"could not download {name} from {remote.url} into {root} ({type(e).__name__}: {reason}); "
                f"offline? copy the dataset into {root} in its official layout, or point {ENV_VAR} "
                f"at a folder that already holds it") from e
    if name == "fsdd":  # the tag archive nests recordings/ one folder down; move it into place
        nested = next((root / ".downloads" / "fsdd").glob("*/recordings"))
        (root / "FSDD").mkdir(exist_ok=True)
        if not (root / "FSDD" / "recordings").exists():
            shutil.move(str(nested), root / "FSDD" / "recordings")
