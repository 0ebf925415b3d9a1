"""Data layer on tiny fixtures generated in the canonical layouts: reading, and refusing bad input."""
from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
import torch

from d2v_lab.cli import main
from d2v_lab.data import (
    DataError,
    DatasetNotFound,
    dataset_info,
    load_cifar10,
    load_fsdd,
    load_speech_commands,
    load_stories,
)
from d2v_lab.data import download as dl
from d2v_lab.data.audio import LogMelConfig, hz_to_mel, log_mel, mel_filterbank, mel_to_hz, resample
from d2v_lab.data.root import cache_dir_for, cache_root, data_root
from d2v_lab.data.tokenizer import CLS_ID, PAD_ID, SEP_ID, SPECIAL_TOKENS, encode_padded, load_tokenizer, pack_windows

from builders import write_cifar, write_fsdd, write_speech_commands, write_stories, write_tinystories

# --- data root ------------------------------------------------------------------------------------

def test_data_root_prefers_env(monkeypatch, tmp_path):
    monkeypatch.setenv("D2V_LAB_DATA", str(tmp_path))
    assert data_root() == tmp_path
    monkeypatch.delenv("D2V_LAB_DATA")
    assert data_root().name == "data"
    assert data_root(tmp_path / "x") == tmp_path / "x"


# --- CIFAR-10 -------------------------------------------------------------------------------------

def test_cifar_reads_all_batches_in_numeric_order(tmp_path):
    folder = write_cifar(tmp_path, n_train_batches=2, per_batch=20, n_test=10)
    # a tenth batch must come after the second, not between 1 and 2 as a string sort would put it
    os.rename(folder / "data_batch_2", folder / "data_batch_10")
    train, test = load_cifar10("train", tmp_path), load_cifar10("test", tmp_path)
    assert train.images.shape == (40, 3, 32, 32) and train.images.dtype == np.uint8
    assert test.images.shape == (10, 3, 32, 32)
    assert [f.name for f in train.files] == ["data_batch_1", "data_batch_10"]
    assert train.classes[3] == "cat" and len(train.classes) == 10
    assert train.labels.dtype == np.int64 and set(train.labels) == set(range(10))


def test_cifar_channel_layout_is_rgb_planes(tmp_path):
    folder = write_cifar(tmp_path, n_train_batches=1, per_batch=1)
    row = np.concatenate([np.full(1024, 10), np.full(1024, 20), np.arange(1024) % 256]).astype(np.uint8)
    with open(folder / "data_batch_1", "wb") as f:
        pickle.dump({b"data": row[None], b"labels": [7]}, f)
    img = load_cifar10("train", tmp_path).images[0]
    assert (img[0] == 10).all() and (img[1] == 20).all()
    assert img[2, 0, 5] == 5 and img[2, 1, 0] == 32  # row-major within the blue plane


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_cifar_reads_a_batch_resaved_with_any_pickle_protocol(tmp_path, protocol):
    """Protocols 0-2 pickle bytes through _codecs.encode and 5 (Python 3.14's default) arrays through
    numpy's _frombuffer: the restricted unpickler must allow both, as it allows the official files."""
    folder = write_cifar(tmp_path)
    before = load_cifar10("train", tmp_path)
    for name in ("batches.meta", "data_batch_1", "data_batch_2"):
        with open(folder / name, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        (folder / name).write_bytes(pickle.dumps(batch, protocol=protocol))
    after = load_cifar10("train", tmp_path)
    assert np.array_equal(after.images, before.images) and np.array_equal(after.labels, before.labels)
    assert after.classes == before.classes and after.labels.dtype == np.int64


def test_cifar_reads_a_batch_resaved_after_a_latin1_load(tmp_path):
    """torchvision loads with encoding='latin1', which makes the keys str; re-saved, they stay str."""
    folder = write_cifar(tmp_path)
    before = load_cifar10("test", tmp_path)
    for name in ("batches.meta", "test_batch"):
        with open(folder / name, "rb") as f:
            batch = pickle.load(f, encoding="latin1")
        (folder / name).write_bytes(pickle.dumps(batch))
    after = load_cifar10("test", tmp_path)
    assert np.array_equal(after.images, before.images) and after.classes == before.classes


# --- TinyStories ----------------------------------------------------------------------------------

def test_stories_split_on_separator_and_recognise_names(tmp_path):
    folder = tmp_path / "TinyStories"
    write_stories(folder / "TinyStories-train.txt", ["First story.\nSecond line.", "Second story."])
    write_stories(folder / "TinyStoriesV2-GPT4-train.txt", ["A V2 story."])
    write_stories(folder / "TinyStories-train-lowercase.txt", ["a lower story."])
    write_stories(folder / "TinyStories-valid.txt", ["Valid story."])
    write_stories(folder / "notes.txt", ["not a TinyStories file"])
    stories = load_stories("train", tmp_path)
    assert stories == ["a lower story.", "First story.\nSecond line.", "Second story.", "A V2 story."]
    assert load_stories("train", tmp_path, lowercase_files=True) == ["a lower story."]
    assert load_stories("valid", tmp_path) == ["Valid story."]
    info = dataset_info(tmp_path)["tinystories"]
    assert info["train"] == 4 and info["valid"] == 1 and "notes.txt" not in info["files"]


def test_stories_inline_separator(tmp_path):
    path = tmp_path / "TinyStories" / "TinyStories-valid.txt"
    path.parent.mkdir()
    path.write_text("One.<|endoftext|>Two.\n<|endoftext|>\n", encoding="utf-8")
    assert load_stories("valid", tmp_path) == ["One.", "Two."]


def test_stories_with_windows_line_endings_read_as_with_unix_ones(tmp_path):
    folder = tmp_path / "TinyStories"
    folder.mkdir()
    text = "One.\nSecond line.\n<|endoftext|>\nTwo.\n<|endoftext|>\n"
    (folder / "TinyStories-train.txt").write_bytes(text.replace("\n", "\r\n").encode())
    (folder / "TinyStories-valid.txt").write_bytes(text.encode())
    assert load_stories("train", tmp_path) == load_stories("valid", tmp_path) == ["One.\nSecond line.", "Two."]


def test_tokenizer_trains_once_and_is_reused(fake_root):
    tok = load_tokenizer(fake_root, vocab_size=300)
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == list(range(5))
    cached = list(cache_dir_for(fake_root).glob("tokenizer-*.json"))
    assert len(cached) == 1
    assert [p.name for p in fake_root.rglob("*") if "tokenizer" in p.name] == []  # the data folder stays as it was
    mtime = cached[0].stat().st_mtime_ns
    again = load_tokenizer(fake_root, vocab_size=300)
    assert cached[0].stat().st_mtime_ns == mtime and again.get_vocab() == tok.get_vocab()
    assert tok.encode("The DOG").ids == tok.encode("the dog").ids  # lower-cased by the normaliser
    assert tok.get_vocab_size() <= 300


def test_tokenizer_cache_changes_with_data(fake_root):
    load_tokenizer(fake_root, vocab_size=300)
    write_stories(fake_root / "TinyStories" / "TinyStories-train.txt", ["Completely new words here."] * 5)
    load_tokenizer(fake_root, vocab_size=300)
    assert len(list(cache_dir_for(fake_root).glob("tokenizer-*.json"))) == 2


def test_cache_is_d2v_lab_cache_else_xdg_else_home(monkeypatch, tmp_path):
    monkeypatch.setenv("D2V_LAB_CACHE", str(tmp_path / "mine"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "mine"
    monkeypatch.delenv("D2V_LAB_CACHE")
    assert cache_root() == tmp_path / "xdg" / "d2v_lab"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_root() == tmp_path / "home" / ".cache" / "d2v_lab"


def test_two_data_roots_have_their_own_tokenizer_cache(tmp_path):
    """Same folder name, same stories: the two roots still get separate cache folders."""
    a, b = tmp_path / "a" / "data", tmp_path / "b" / "data"
    for root in (a, b):
        write_tinystories(root)
        load_tokenizer(root, vocab_size=300)
    assert cache_dir_for(a) != cache_dir_for(b) and cache_dir_for(a).parent == cache_dir_for(b).parent
    assert cache_dir_for(a).name.startswith("data-")
    assert [len(list(cache_dir_for(r).glob("tokenizer-*.json"))) for r in (a, b)] == [1, 1]


def test_pack_windows_and_padding(fake_root):
    tok = load_tokenizer(fake_root, vocab_size=300)
    stories = load_stories("train", fake_root)
    windows = pack_windows(stories, tok, seq_len=16)
    assert windows.shape[1] == 16 and (windows[:, 0] == CLS_ID).all()
    n_tokens = sum(len(e.ids) + 1 for e in tok.encode_batch(stories, add_special_tokens=False))
    assert windows.shape[0] == n_tokens // 15
    assert (windows == SEP_ID).any() and not (windows == PAD_ID).any()
    padded = encode_padded(["a cat", stories[0]], tok, seq_len=64)
    assert padded.shape == (2, 64) and padded[0, 0] == CLS_ID
    n = 1 + len(tok.encode("a cat", add_special_tokens=False).ids)
    assert (padded[0, n:] == PAD_ID).all() and (padded[0, :n] != PAD_ID).all()


# --- Speech Commands ------------------------------------------------------------------------------

def test_audio_inputs_in_chunks_equal_the_log_mel_of_all_waveforms(tmp_path):
    from d2v_lab.train.inputs import audio_inputs
    write_speech_commands(tmp_path)
    train = load_speech_commands("training", tmp_path)
    whole = log_mel(torch.from_numpy(train.waveforms(progress=False)))
    for chunk in (1, 4, 512):                       # 6 clips: one per chunk, a partial last chunk, one chunk
        assert torch.equal(audio_inputs(train, progress=False, chunk=chunk), whole)
    assert audio_inputs(train.subset([]), progress=False).shape == (0, 64, 100)


def test_speech_commands_splits_and_words(tmp_path):
    write_speech_commands(tmp_path)
    train = load_speech_commands("training", tmp_path)
    val = load_speech_commands("validation", tmp_path)
    test = load_speech_commands("testing", tmp_path)
    assert (len(train), len(val), len(test)) == (6, 3, 3)
    assert train.classes == ("cat", "dog", "yes")  # _background_noise_ is not a word
    assert set(train.speakers) == {"aaa", "bbb"} and set(val.speakers) == {"ccc"}
    waves = train.waveforms(progress=False)
    assert waves.shape == (6, 16000) and waves.dtype == np.float32
    assert (waves[0, 9600:] == 0).all() and np.abs(waves[0, :9000]).max() > 0.2  # 0.6 s padded to 1 s
    info = dataset_info(tmp_path)["speechcommands"]
    v001 = {"version": "v0.01", "training": 6, "validation": 3, "testing": 3, "speakers": 4,
            "words": ["cat", "dog", "yes"], "path": str(tmp_path / "SpeechCommands/speech_commands_v0.01")}
    assert info == {**v001, "versions": {"v0.01": v001}}


def test_split_lists_written_by_hand_match_the_clips(tmp_path):
    """'./cat/x.wav', 'cat\\x.wav', surrounding spaces and CRLF endings name the same clip as 'cat/x.wav';
    before, they matched nothing and every test clip was silently trained on."""
    folder = write_speech_commands(tmp_path)
    clean = {s: load_speech_commands(s, tmp_path).paths for s in ("training", "validation", "testing")}
    (folder / "testing_list.txt").write_text("./cat/ddd_nohash_0.wav\r\n  dog\\ddd_nohash_0.wav \r\n"
                                             "yes//ddd_nohash_0.wav\r\n\r\n")
    (folder / "validation_list.txt").write_text("".join(f"./{w}/ccc_nohash_0.wav\n" for w in ("cat", "dog", "yes")))
    (folder / ".ipynb_checkpoints").mkdir()  # a hidden folder is a tool's, not a word
    assert {s: load_speech_commands(s, tmp_path).paths for s in clean} == clean
    assert len(clean["testing"]) == 3 and load_speech_commands("testing", tmp_path).classes == ("cat", "dog", "yes")


def test_speech_commands_v002_is_read_first_and_v001_stays_readable(tmp_path):
    write_speech_commands(tmp_path)                                     # v0.01: cat, dog, yes
    write_speech_commands(tmp_path, words=("go", "no", "stop", "yes"), speakers=("eee", "fff", "ccc", "ddd"),
                          version="speech_commands_v0.02")
    info = dataset_info(tmp_path)["speechcommands"]
    assert info["version"] == "v0.02" and list(info["versions"]) == ["v0.02", "v0.01"]
    assert info["versions"]["v0.02"]["training"] == 8 and info["versions"]["v0.01"]["training"] == 6
    assert load_speech_commands("training", tmp_path).classes == ("go", "no", "stop", "yes")
    for version in ("v0.01", "speech_commands_v0.01"):
        old = load_speech_commands("testing", tmp_path, version=version)
        assert old.classes == ("cat", "dog", "yes") and set(old.speakers) == {"ddd"}
    with pytest.raises(ValueError, match=r"version must be one of \['v0.02', 'v0.01'\], not 'v0.03'"):
        load_speech_commands("training", tmp_path, version="v0.03")


def test_cli_data_info_lists_every_speech_commands_version(tmp_path, monkeypatch, capsys):
    write_speech_commands(tmp_path)
    write_speech_commands(tmp_path, version="speech_commands_v0.02")
    monkeypatch.setenv("D2V_LAB_DATA", str(tmp_path))
    assert main(["data", "info"]) == 0
    out = capsys.readouterr().out
    assert "(v0.02)  (read by default)" in out and "(v0.01)\n" in out and out.count("speakers 4") == 2


# --- FSDD -----------------------------------------------------------------------------------------

def test_fsdd_resampled_and_split_by_speaker(tmp_path):
    write_fsdd(tmp_path, speakers=("alice", "bob", "carol"), takes=2)
    train, test = load_fsdd("train", tmp_path), load_fsdd("test", tmp_path)
    assert set(test.speakers) == {"carol"} and "carol" not in set(train.speakers)
    assert (len(train), len(test)) == (40, 20)
    assert test.classes[7] == "seven" and sorted(set(test.labels)) == list(range(10))
    wave = test.waveforms(progress=False)[0]          # digit 0: 0.30 s at 8 kHz -> 4800 samples at 16 kHz
    assert wave.shape == (16000,) and np.abs(wave[:4700]).max() > 0.2 and (wave[4900:] == 0).all()
    custom = load_fsdd("test", tmp_path, test_speakers=("alice", "bob"))
    assert set(custom.speakers) == {"alice", "bob"}
    with pytest.raises(ValueError, match="unknown FSDD speaker"):
        load_fsdd("test", tmp_path, test_speakers=("zed",))
    assert dataset_info(tmp_path)["fsdd"]["clips"] == 60


# --- audio front end ------------------------------------------------------------------------------

def test_resample_keeps_frequency():
    t = np.arange(8000) / 8000
    up = resample(np.sin(2 * np.pi * 1000 * t).astype(np.float32), 8000, 16000)
    assert len(up) == 16000
    assert np.argmax(np.abs(np.fft.rfft(up))) == 1000  # 1 Hz bins over 1 s


def test_mel_filterbank_shape_and_peaks():
    cfg = LogMelConfig()
    fb = mel_filterbank(cfg)
    assert fb.shape == (64, 201) and fb.min() >= 0 and fb.max() <= 1
    centres = mel_to_hz(np.linspace(hz_to_mel(cfg.f_min), hz_to_mel(cfg.f_max), cfg.n_mels + 2))[1:-1]
    peak_hz = fb.argmax(dim=1).numpy() * cfg.sample_rate / cfg.n_fft
    assert np.all(np.abs(peak_hz - centres) <= cfg.sample_rate / cfg.n_fft)  # peaks within one FFT bin
    assert (np.diff(fb.argmax(dim=1).numpy()) >= 0).all()


@pytest.mark.parametrize("freq", [300.0, 1000.0, 4000.0])
def test_log_mel_tone_lands_in_its_band(freq):
    cfg = LogMelConfig()
    t = torch.arange(16000) / 16000
    feats = log_mel(torch.sin(2 * torch.pi * freq * t)[None], cfg)
    assert feats.shape == (1, 64, 100)
    centres = mel_to_hz(np.linspace(hz_to_mel(cfg.f_min), hz_to_mel(cfg.f_max), cfg.n_mels + 2))[1:-1]
    # below ~500 Hz the bands are narrower than the 40 Hz FFT bins, so allow the neighbouring band
    assert abs(int(feats[0].mean(dim=1).argmax()) - int(np.argmin(np.abs(centres - freq)))) <= 1


# --- CLI and downloads ----------------------------------------------------------------------------

def test_cli_info_json_counts(fake_root, capsys):
    assert main(["data", "info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["cifar10"]["train"] == 40 and info["cifar10"]["test"] == 10
    assert info["tinystories"]["train"] == 40 and info["tinystories"]["valid"] == 8
    assert info["speechcommands"]["training"] == 6
    assert info["fsdd"] == {"clips": 60, "speakers": ["alice", "bob", "carol"],
                            "path": str(fake_root / "FSDD" / "recordings")}
    assert "missing" not in info


def test_cli_reports_corrupt_data_and_fails(fake_root, capsys):
    (fake_root / "cifar-10-batches-py" / "test_batch").write_bytes(b"junk")
    assert main(["data", "info"]) == 2
    assert "test_batch" in capsys.readouterr().err


def test_cli_lists_missing_datasets(tmp_path, monkeypatch, capsys):
    write_fsdd(tmp_path, speakers=("alice",), takes=1)
    monkeypatch.setenv("D2V_LAB_DATA", str(tmp_path))
    assert main(["data", "info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert set(info["missing"]) == {"cifar10", "tinystories", "speechcommands"} and "fsdd" in info


def test_download_offline_gives_clear_error(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("Name or service not known")
    monkeypatch.setattr(dl, "_retrieve", offline)
    with pytest.raises(DatasetNotFound, match="(?s)could not download cifar10 .*D2V_LAB_DATA"):
        load_cifar10("train", tmp_path, download=True)


def test_download_checksum_mismatch_is_a_data_error(tmp_path, monkeypatch):
    def bad_hash(*args, **kwargs):
        raise ValueError("SHA256 hash of downloaded file does not match the known hash")
    monkeypatch.setattr(dl, "_retrieve", bad_hash)
    with pytest.raises(DataError, match="does not match its known checksum"):
        dl.ensure_dataset("fsdd", tmp_path)


def test_every_remote_has_a_checksum():
    for name, remotes in dl.REMOTES.items():
        for r in remotes:
            algo, _, digest = r.known_hash.partition(":")
            assert algo in ("md5", "sha256") and len(digest) == {"md5": 32, "sha256": 64}[algo], name
            int(digest, 16)


@pytest.fixture
def local_server(tmp_path):
    """Serve tmp_path/'served' over HTTP on localhost, so downloads run for real without internet."""
    import functools
    import http.server
    import threading
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _tar(source_dir, arcname, out):
    import hashlib
    import tarfile
    with tarfile.open(out, "w:gz") as tar:
        tar.add(source_dir, arcname=arcname)
    return "sha256:" + hashlib.sha256(out.read_bytes()).hexdigest()


def test_download_unpacks_into_canonical_layout(tmp_path, local_server, monkeypatch):
    served, url = local_server
    folder = write_cifar(tmp_path / "src")
    digest = _tar(folder, "cifar-10-batches-py", served / "cifar.tar.gz")
    fsdd = write_fsdd(tmp_path / "src", speakers=("alice",), takes=1)
    fsdd_digest = _tar(fsdd.parent, "free-spoken-digit-dataset-1.0.9", served / "fsdd.tar.gz")
    monkeypatch.setitem(dl.REMOTES, "cifar10", [dl.Remote(f"{url}/cifar.tar.gz", digest, unpack_to=".")])
    monkeypatch.setitem(dl.REMOTES, "fsdd", [dl.Remote(f"{url}/fsdd.tar.gz", fsdd_digest,
                                                       unpack_to=".downloads/fsdd")])
    root = tmp_path / "fresh"
    assert len(load_cifar10("test", root, download=True)) == 10
    assert len(load_fsdd("all", root, download=True)) == 10
    assert (root / "FSDD" / "recordings" / "3_alice_0.wav").is_file()
    # a tampered archive is refused, not unpacked
    monkeypatch.setitem(dl.REMOTES, "cifar10", [dl.Remote(f"{url}/cifar.tar.gz", "sha256:" + "0" * 64,
                                                          unpack_to=".")])
    with pytest.raises(DataError, match="does not match its known checksum"):
        dl.ensure_dataset("cifar10", tmp_path / "other")
