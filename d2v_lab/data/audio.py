"""Audio shared by the speech datasets: strict wav reading, resampling to 16 kHz, 1 s clips, log-mel.

Every clip the models see is 1 s of 16 kHz mono float32 audio (Speech Commands' own format; FSDD's
8 kHz clips are resampled). The log-mel front end is plain torch (STFT power spectrum times a
triangular mel filter bank, HTK mel scale), so it runs on any device without torchaudio.
"""
from __future__ import annotations

from dataclasses import dataclass
from math import gcd
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from tqdm.auto import tqdm

from .root import DataError, unreadable

SAMPLE_RATE = 16_000
CLIP_SAMPLES = SAMPLE_RATE  # 1 s


def _header_frames(path: Path, block_align: int) -> int | None:
    """The frame count a RIFF/WAVE header promises (the ``data`` chunk's size / bytes per frame), or
    None when there is no usable size to compare with. libsndfile (under soundfile) silently
    shortens a cut-off file to the frames present and only logs the mismatch, so we read the chunk
    sizes ourselves: RIFF is a 12-byte preamble followed by (4-byte id, 4-byte little-endian size)
    chunks, each padded to an even size."""
    with open(path, "rb") as f:
        if f.read(4) != b"RIFF" or len(f.read(4)) != 4 or f.read(4) != b"WAVE":
            return None  # RF64, W64, ...: let soundfile's own checks speak
        while True:
            head = f.read(8)
            if len(head) < 8:
                return None
            chunk, size = head[:4], int.from_bytes(head[4:], "little")
            if chunk == b"data":
                # streaming writers leave 0 or 0xFFFFFFFF when they cannot seek back to fill it in
                return None if size in (0, 0xFFFFFFFF) else size // block_align
            f.seek(size + (size & 1), 1)


def read_wav(path: Path, expected_rate: int) -> np.ndarray:
    """Read a mono 16-bit PCM wav as float32 in [-1, 1); refuse anything else (wrong format, rate,
    channels, a file cut short of what its header says, an empty file) with a one-line DataError."""
    fix = "convert it, or restore the file from the dataset's official archive"
    try:
        meta = sf.info(str(path))
    except (RuntimeError, sf.LibsndfileError) as e:  # LibsndfileError subclasses RuntimeError
        if path.is_dir():
            raise unreadable(path, "a wav file", e) from e
        reason = getattr(e, "error_string", None) or str(e)
        raise DataError(f"{path}: not a readable wav file ({reason}); restore it from the dataset's "
                        f"official archive or delete it") from e
    if meta.subtype != "PCM_16":
        raise DataError(f"{path}: expected 16-bit PCM, found {meta.subtype} ({meta.subtype_info}); {fix}")
    if meta.channels != 1:
        raise DataError(f"{path}: expected mono, found {meta.channels} channels; {fix}")
    if meta.samplerate != expected_rate:
        raise DataError(f"{path}: sample rate {meta.samplerate} Hz, but this dataset's files "
                        f"are {expected_rate} Hz; resample it to {expected_rate} Hz, or restore the file "
                        f"from the dataset's official archive")
    audio, _ = sf.read(str(path), dtype="float32")
    if audio.size == 0:
        raise DataError(f"{path}: holds no samples; delete it or restore it from the dataset's official archive")
    promised = _header_frames(path, block_align=2) if meta.format == "WAV" else None
    if promised is not None and len(audio) < promised:
        # a cut-off download or copy: zero-padding it to 1 s would hide the missing speech
        raise DataError(f"{path}: truncated: the wav header says {promised} samples but only {len(audio)} "
                        f"are in the file; re-download the dataset or delete this file")
    return audio


def resample(audio: np.ndarray, orig_rate: int, new_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Polyphase resampling (scipy's anti-aliased ``resample_poly``)."""
    if orig_rate == new_rate:
        return audio
    # imported here: scipy.signal takes ~1.5 s to import, which every start of the CLI paid
    from scipy.signal import resample_poly
    g = gcd(orig_rate, new_rate)
    return resample_poly(audio, new_rate // g, orig_rate // g).astype(np.float32)


def fit_length(audio: np.ndarray, n: int = CLIP_SAMPLES) -> np.ndarray:
    """Zero-pad at the end or trim the end to exactly ``n`` samples (both datasets start at speech
    onset, so the word stays where it is)."""
    if len(audio) >= n:
        return audio[:n]
    return np.pad(audio, (0, n - len(audio)))


def load_clip(path: Path, native_rate: int) -> np.ndarray:
    """One clip as the models see it: checked at its dataset's rate, resampled to 16 kHz, 1 s long."""
    return fit_length(resample(read_wav(path, native_rate), native_rate))


@dataclass(frozen=True)
class ClipSet:
    """Labelled clips of one dataset split; audio is read on demand (the full datasets are GBs)."""
    paths: tuple[Path, ...]
    labels: np.ndarray            # (N,) int64 index into classes
    classes: tuple[str, ...]
    speakers: tuple[str, ...]     # per clip
    sample_rate: int              # the dataset's native rate, checked for every file

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, index) -> "ClipSet":
        index = np.asarray(index, dtype=np.int64)
        return ClipSet(tuple(self.paths[i] for i in index), self.labels[index], self.classes,
                       tuple(self.speakers[i] for i in index), self.sample_rate)

    def waveforms(self, progress: bool = True) -> np.ndarray:
        """All clips as a float32 array (N, 16000) at 16 kHz."""
        out = np.zeros((len(self), CLIP_SAMPLES), dtype=np.float32)
        for i, p in enumerate(tqdm(self.paths, desc="reading wavs", disable=not progress, leave=False)):
            out[i] = load_clip(p, self.sample_rate)
        return out


@dataclass(frozen=True)
class LogMelConfig:
    """Log-mel front end: 25 ms Hann windows every 10 ms, 64 mel bands over 20 Hz-8 kHz."""
    sample_rate: int = SAMPLE_RATE
    n_fft: int = 400
    hop_length: int = 160
    n_mels: int = 64
    f_min: float = 20.0
    f_max: float = 8000.0
    n_frames: int = 100   # 1 s gives 101 centred frames; 100 tile evenly into patches
    eps: float = 1e-6     # log floor, about -60 dB below a full-scale tone's band energy


def hz_to_mel(f):
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def mel_to_hz(m):
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(cfg: LogMelConfig = LogMelConfig()) -> torch.Tensor:
    """Triangular filters (n_mels, n_fft // 2 + 1), HTK mel scale, peak 1, centres equally spaced
    in mel between f_min and f_max."""
    if not 0 <= cfg.f_min < cfg.f_max <= cfg.sample_rate / 2:
        raise ValueError(f"need 0 <= f_min < f_max <= Nyquist ({cfg.sample_rate / 2} Hz)")
    freqs = np.linspace(0, cfg.sample_rate / 2, cfg.n_fft // 2 + 1)
    edges = mel_to_hz(np.linspace(hz_to_mel(cfg.f_min), hz_to_mel(cfg.f_max), cfg.n_mels + 2))
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (freqs[None] - lower) / (centre - lower)
    falling = (upper - freqs[None]) / (upper - centre)
    return torch.from_numpy(np.clip(np.minimum(rising, falling), 0, None)).float()


def log_mel(waves: torch.Tensor, cfg: LogMelConfig = LogMelConfig()) -> torch.Tensor:
    """(B, samples) float waveforms -> (B, n_mels, n_frames) natural-log mel power."""
    window = torch.hann_window(cfg.n_fft, device=waves.device)
    spec = torch.stft(waves, cfg.n_fft, cfg.hop_length, window=window, center=True, return_complex=True)
    power = spec.abs().pow(2)                                   # (B, freqs, frames)
    mel = mel_filterbank(cfg).to(waves.device) @ power           # (B, n_mels, frames)
    return torch.log(mel[..., : cfg.n_frames] + cfg.eps)
