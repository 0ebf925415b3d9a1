"""The bad-input catalogue: the ways a realistic user breaks the data, and the message each one gets.

ONE table, ``CASES``. Each row builds a tiny dataset under ``<tmp>/data``, breaks it in one way, makes
the user's call, and expects a DataError whose message
  * is one line (the CLI prints it as ``d2v-lab: error: <message>`` and exits 2),
  * names the file or folder at fault (the row's ``names``, relative to the temp folder),
  * has a fix after the cause (messages read ``<path>: <cause>; <fix>``), and
  * matches the row's regex, which pins the cause and the fix.
The user cache ($D2V_LAB_CACHE) is ``<tmp>/cache`` in every row, so a row can break it too.
"""
from __future__ import annotations

import os
import pickle
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from d2v_lab.data import DataError, load_cifar10, load_fsdd, load_speech_commands, load_stories
from d2v_lab.data.tokenizer import load_tokenizer

from builders import write_cifar, write_fsdd, write_speech_commands, write_tinystories, write_wav

CIFAR = "data/cifar-10-batches-py"
SC = "data/SpeechCommands/speech_commands_v0.01"
FSDD = "data/FSDD/recordings"
STORIES = "data/TinyStories"
RESTORE = "restore the file from the official archive"
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


# --- the user's calls -----------------------------------------------------------------------------

def cifar_train(root):
    return load_cifar10("train", root)


def cifar_test(root):
    return load_cifar10("test", root)


def stories_train(root):
    return load_stories("train", root)


def speech_index(root):
    return load_speech_commands("training", root)


def speech_waves(root):
    return load_speech_commands("training", root).waveforms(progress=False)


def fsdd_waves(root):
    return load_fsdd("all", root).waveforms(progress=False)


def tokenizer(root):
    return load_tokenizer(root, vocab_size=300)


# root ignores a folder's read-only permission bits (its CAP_DAC_OVERRIDE), and CI runs as root; this
# call runs in a child process that keeps root's uid but has lost that capability, as an ordinary user's would
WITHOUT_OVERRIDE = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]
CHILD = """import sys
from d2v_lab.data import DataError
from d2v_lab.data.tokenizer import load_tokenizer
try:
    load_tokenizer(sys.argv[1], vocab_size=300)
except DataError as e:
    print(e)
    sys.exit(3)
"""


def tokenizer_as_a_user(root):
    """``tokenizer(root)``, where a read-only folder is read-only for the caller even when it is root."""
    if not IS_ROOT:
        return tokenizer(root)
    if shutil.which("setpriv") is None:
        pytest.fail("running as root needs util-linux's setpriv to drop CAP_DAC_OVERRIDE (apt-get install util-linux)")
    child = subprocess.run([*WITHOUT_OVERRIDE, sys.executable, "-c", CHILD, str(root)], capture_output=True,
                           text=True, timeout=300, env=dict(os.environ))
    if child.returncode == 3:
        raise DataError(child.stdout.strip())
    raise AssertionError(f"the child exited {child.returncode} without a DataError: {child.stderr[-2000:]}")


# --- builders of bad input (each takes the data root) ---------------------------------------------

def cifar_test_batch(data=None, labels=None):
    """A CIFAR folder whose test_batch holds a 4-image batch, with ``data`` or ``labels`` replaced."""
    def build(root):
        batch = {b"data": np.zeros((4, 3072), np.uint8) if data is None else data,
                 b"labels": [0, 1, 2, 3] if labels is None else labels}
        (write_cifar(root) / "test_batch").write_bytes(pickle.dumps(batch))
    return build


def cifar_file(name, damage):
    """A CIFAR folder whose file ``name`` is replaced by ``damage(its bytes)``."""
    def build(root):
        path = write_cifar(root) / name
        path.write_bytes(damage(path.read_bytes()))
    return build


class Evil:
    """Runs a shell command when a plain unpickler loads it."""
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def folder_instead_of(write, rel):
    """A dataset written by ``write`` in which the file ``rel`` (under the data root) is a folder."""
    def build(root):
        write(root)
        (root / rel).unlink()
        (root / rel).mkdir()
    return build


def stories_file(raw: bytes):
    def build(root):
        path = root / "TinyStories" / "TinyStories-train.txt"
        path.parent.mkdir(parents=True)
        path.write_bytes(raw)
    return build


# 60 short lines with a latin-1 byte in line 47, the 12th byte of that line. The old text-mode reader
# reported the line its 8 KiB decode block started after (here: line 0), not the bad byte's line.
LATIN1_AT_LINE_47 = b"".join(b"Line 47 caf\xe9 is where the latin-1 byte sits.\n" if i == 47 else
                             b"Line %02d is a perfectly good line of plain text.\n" % i
                             for i in range(1, 61)) + b"<|endoftext|>\n"


def speech_list(name, append=None, remove=False):
    """Speech Commands with the split list ``name`` appended to, or removed."""
    def build(root):
        path = write_speech_commands(root) / name
        if remove:
            path.unlink()
        else:
            with open(path, "a") as f:
                f.write(append)
    return build


def speech_empty_word(root):
    (write_speech_commands(root) / "bird").mkdir()


def speech_wav(rel, **kwargs):
    """Speech Commands with the clip ``rel`` rewritten by ``write_wav(**kwargs)``."""
    def build(root):
        write_wav(write_speech_commands(root) / rel, **kwargs)
    return build


def speech_wav_cut(rel, keep_bytes):
    """A 1 s clip (header: 16,000 samples) of which only ``keep_bytes`` bytes are left, 44 of them the
    header: what an interrupted download or copy leaves behind."""
    def build(root):
        path = write_wav(write_speech_commands(root) / rel, seconds=1.0)
        path.write_bytes(path.read_bytes()[:keep_bytes])
    return build


def fsdd_wav(name, **kwargs):
    def build(root):
        write_wav(write_fsdd(root, speakers=("alice",), takes=1) / name, **kwargs)
    return build


def fsdd_without_digit(digit):
    def build(root):
        for p in write_fsdd(root, speakers=("alice", "bob"), takes=1).glob(f"{digit}_*.wav"):
            p.unlink()
    return build


def cache_blocked_by_a_file(root):
    """Stories to train a tokenizer on, and a plain file where the cache folder would be created
    (a cache nobody can write into, even root, which ignores read-only permissions)."""
    write_tinystories(root)
    (root.parent / "cache").write_text("not a folder")


def cache_read_only(root):
    write_tinystories(root)
    (root.parent / "cache").mkdir(mode=0o555)


def case(name, build, call, names, match, marks=()):
    return pytest.param(build, call, names, match, id=name, marks=marks)


CASES = [
    # ----- CIFAR-10 -----
    case("cifar: no dataset", lambda root: root.mkdir(), cifar_train, "data",
         r"cifar10 not found: looked for cifar-10-batches-py/.*; fix: point D2V_LAB_DATA at a folder that holds "
         r"it .* `d2v-lab data download cifar10`"),
    case("cifar: garbage pickle", cifar_file("data_batch_2", lambda raw: b"\x00not a pickle at all"), cifar_train,
         f"{CIFAR}/data_batch_2", rf"not a readable CIFAR-10 pickle \(corrupt or truncated: .*\); {RESTORE}"),
    case("cifar: truncated pickle", cifar_file("data_batch_2", lambda raw: raw[: len(raw) // 2]), cifar_train,
         f"{CIFAR}/data_batch_2", rf"not a readable CIFAR-10 pickle \(corrupt or truncated: .*\); {RESTORE}"),
    case("cifar: code in the pickle", cifar_file("data_batch_1", lambda raw: pickle.dumps({b"data": Evil()})),
         cifar_train, f"{CIFAR}/data_batch_1",
         r"refusing to load posix\.system, which a CIFAR-10 file never needs \(it may have been tampered "
         r"with\); delete it and restore"),
    case("cifar: not a dict", cifar_file("test_batch", lambda raw: pickle.dumps([1, 2])), cifar_test,
         f"{CIFAR}/test_batch", rf"expected a pickled dict, found list; {RESTORE}"),
    case("cifar: no labels", cifar_file("test_batch", lambda raw: pickle.dumps({b"data": np.zeros((2, 3072))})),
         cifar_test, f"{CIFAR}/test_batch", rf"CIFAR-10 batch has no b'labels' entry \(keys: b'data'\); {RESTORE}"),
    case("cifar: images 3000 wide", cifar_test_batch(data=np.zeros((4, 3000), np.uint8)), cifar_test,
         f"{CIFAR}/test_batch", rf"b'data' must be uint8 of shape \(N, 3072\), found uint8 \(4, 3000\); {RESTORE}"),
    case("cifar: float images", cifar_test_batch(data=np.zeros((4, 3072), np.float32)), cifar_test,
         f"{CIFAR}/test_batch", rf"b'data' must be uint8 of shape \(N, 3072\), found float32 \(4, 3072\); {RESTORE}"),
    case("cifar: fewer labels than images", cifar_test_batch(labels=[0, 1, 2]), cifar_test, f"{CIFAR}/test_batch",
         rf"4 images but 3 labels; {RESTORE}"),
    case("cifar: label 10", cifar_test_batch(labels=[0, 1, 2, 10]), cifar_test, f"{CIFAR}/test_batch",
         rf"labels must be integers in \[0, 10\), found range \[0, 10\]; {RESTORE}"),
    case("cifar: label -1", cifar_test_batch(labels=[0, -1, 2, 3]), cifar_test, f"{CIFAR}/test_batch",
         rf"labels must be integers in \[0, 10\), found range \[-1, 3\]; {RESTORE}"),
    case("cifar: labels as strings", cifar_test_batch(labels=["0", "1", "2", "3"]), cifar_test, f"{CIFAR}/test_batch",
         rf"b'labels' must be a flat list of 4 integers in \[0, 10\), found strings \(e\.g\. '0'\); {RESTORE}"),
    case("cifar: labels shaped (N, 1)", cifar_test_batch(labels=np.zeros((4, 1), np.int64)), cifar_test,
         f"{CIFAR}/test_batch",
         rf"b'labels' must be a flat list of 4 integers in \[0, 10\), found shape \(4, 1\); {RESTORE}"),
    case("cifar: a folder named data_batch_1", folder_instead_of(write_cifar, "cifar-10-batches-py/data_batch_1"),
         cifar_train, f"{CIFAR}/data_batch_1",
         r"is a folder, but a CIFAR-10 pickle belongs here; move the folder away and restore the file"),
    case("cifar: a folder named batches.meta", folder_instead_of(write_cifar, "cifar-10-batches-py/batches.meta"),
         cifar_test, f"{CIFAR}/batches.meta", r"is a folder, but a CIFAR-10 pickle belongs here; move the folder"),
    # ----- TinyStories -----
    case("stories: latin-1 byte", stories_file(LATIN1_AT_LINE_47), stories_train, f"{STORIES}/TinyStories-train.txt",
         r"not valid UTF-8 at line 47, byte 12 of that line \(invalid continuation byte: b'\\xe9'\); "
         r"re-save the file as UTF-8"),
    case("stories: empty file", stories_file(b""), stories_train, f"{STORIES}/TinyStories-train.txt",
         r"holds no story \(the file is empty or only separators\); restore it from the official download"),
    case("stories: only separators", stories_file(b"\n<|endoftext|>\n  \n<|endoftext|>\n"), stories_train,
         f"{STORIES}/TinyStories-train.txt", r"holds no story .*; restore it"),
    case("stories: a folder named TinyStories-train.txt",
         folder_instead_of(write_tinystories, "TinyStories/TinyStories-train.txt"), stories_train,
         f"{STORIES}/TinyStories-train.txt", r"is a folder, but a TinyStories text file belongs here; move"),
    # ----- Speech Commands: split lists and word folders -----
    case("speech: list names a missing file", speech_list("testing_list.txt", append="cat/zzz_nohash_9.wav\n"),
         speech_index, f"{SC}/testing_list.txt",
         r"names 1 file\(s\) that do not exist, e\.g\. cat/zzz_nohash_9\.wav; restore the clips or remove those lines"),
    case("speech: list names a file that is no clip",
         speech_list("testing_list.txt", append="./_background_noise_/white_noise.wav\n"), speech_index,
         f"{SC}/testing_list.txt", r"names 1 file\(s\) that are not word clips, e\.g\. _background_noise_/white_noise"
                                   r"\.wav; list each clip as <word>/<file>\.wav relative to .* \(e\.g\. cat/aaa"),
    case("speech: list missing", speech_list("validation_list.txt", remove=True), speech_index,
         f"{SC}/validation_list.txt", r"split list missing .*; restore it from the archive, or every clip it holds "
                                      r"out becomes training data"),
    case("speech: a folder named testing_list.txt",
         folder_instead_of(write_speech_commands, "SpeechCommands/speech_commands_v0.01/testing_list.txt"),
         speech_index, f"{SC}/testing_list.txt", r"is a folder, but a split list belongs here"),
    case("speech: a clip in both lists", speech_list("testing_list.txt", append="cat/ccc_nohash_0.wav\n"),
         speech_index, SC, r"1 clip\(s\) are in both split lists, e\.g\. cat/ccc_nohash_0\.wav; a clip belongs to "
                           r"one split: remove it from validation_list\.txt or testing_list\.txt"),
    case("speech: empty word folder", speech_empty_word, speech_index, f"{SC}/bird",
         r"word folder holds no \.wav clip; a word without clips cannot be a class: restore its clips from the "
         r"official archive or remove the folder"),
    # ----- Speech Commands and FSDD: wav files -----
    case("speech: wav cut short", speech_wav_cut("dog/aaa_nohash_0.wav", 44 + 7989 * 2), speech_waves,
         f"{SC}/dog/aaa_nohash_0.wav", r"truncated: the wav header says 16000 samples but only 7989 are in the "
                                       r"file; re-download the dataset or delete this file"),
    case("speech: wav cut inside its header", speech_wav_cut("dog/aaa_nohash_0.wav", 20), speech_waves,
         f"{SC}/dog/aaa_nohash_0.wav", r"not a readable wav file \(.+\); restore it from .* or delete it"),
    case("speech: 8 kHz wav", speech_wav("dog/aaa_nohash_0.wav", rate=8000), speech_waves,
         f"{SC}/dog/aaa_nohash_0.wav", r"sample rate 8000 Hz, but this dataset's files are 16000 Hz; "
                                       r"resample it to 16000 Hz"),
    case("speech: 24-bit wav", speech_wav("dog/aaa_nohash_0.wav", subtype="PCM_24"), speech_waves,
         f"{SC}/dog/aaa_nohash_0.wav", r"expected 16-bit PCM, found PCM_24 \(.*\); convert it"),
    case("speech: float wav", speech_wav("dog/aaa_nohash_0.wav", subtype="FLOAT"), speech_waves,
         f"{SC}/dog/aaa_nohash_0.wav", r"expected 16-bit PCM, found FLOAT \(.*\); convert it"),
    case("speech: stereo wav", speech_wav("dog/aaa_nohash_0.wav", channels=2), speech_waves,
         f"{SC}/dog/aaa_nohash_0.wav", r"expected mono, found 2 channels; convert it"),
    case("speech: a folder named like a clip",
         folder_instead_of(write_speech_commands, "SpeechCommands/speech_commands_v0.01/dog/aaa_nohash_0.wav"),
         speech_waves, f"{SC}/dog/aaa_nohash_0.wav", r"is a folder, but a wav file belongs here; move the folder"),
    case("fsdd: 16 kHz wav", fsdd_wav("3_alice_0.wav", rate=16000), fsdd_waves, f"{FSDD}/3_alice_0.wav",
         r"sample rate 16000 Hz, but this dataset's files are 8000 Hz; resample it to 8000 Hz"),
    case("fsdd: badly named wav", fsdd_wav("noise.wav", rate=8000), fsdd_waves, FSDD,
         r"1 wav file\(s\) not named <digit>_<speaker>_<take>\.wav, e\.g\. noise\.wav; rename them"),
    case("fsdd: a digit without recordings", fsdd_without_digit(7), fsdd_waves, FSDD,
         r"no recording of digit\(s\) 7 \(files 7_<speaker>_<take>\.wav\); a digit without clips cannot be a class"),
    # ----- the tokenizer cache -----
    case("cache: a file where the cache folder goes", cache_blocked_by_a_file, tokenizer, "cache",
         r"cannot write the d2v_lab cache here \(.+\); set D2V_LAB_CACHE to a writable folder"),
    case("cache: read-only cache folder", cache_read_only, tokenizer_as_a_user, "cache",
         r"cannot write the d2v_lab cache here \(.+\); set D2V_LAB_CACHE to a writable folder"),
]


@pytest.mark.parametrize("build,call,names,match", CASES)
def test_bad_input_is_one_line_naming_the_file_the_cause_and_a_fix(build, call, names, match, tmp_path, monkeypatch):
    root = tmp_path / "data"
    monkeypatch.setenv("D2V_LAB_CACHE", str(tmp_path / "cache"))
    build(root)
    with pytest.raises(DataError) as e:
        call(root)
    message, where = str(e.value), str(tmp_path / names)
    assert "\n" not in message, f"not one line: {message!r}"
    assert where in message, f"does not name {where}: {message}"
    assert "; " in message.split(where, 1)[1], f"no fix after the cause: {message}"
    assert re.search(match, message), f"{match!r} not in {message!r}"
