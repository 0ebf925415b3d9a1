"""The thin modality adapters: the only place where images, text and audio differ.

An adapter turns a raw batch into tokens (B, T, D) with positions, knows how its modality is masked,
and (for data2vec 1.0) how a masked token is shown to the student. Everything else, the teacher, the
targets, the loss, the training loop, is written once in ``data2vec.py`` and ``train.py``.

- ``ImageAdapter``: 32x32 RGB -> 4x4 patches -> 64 tokens on an 8x8 grid (ViT; Dosovitskiy et al. 2021).
- ``TextAdapter``: BPE ids -> token embeddings; position 0 is [CLS] and never masked (BERT/RoBERTa).
- ``AudioAdapter``: 1 s log-mel (64 x 100 frames) -> one token per 2 frames (20 ms, wav2vec 2.0's frame rate).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from d2v_lab.data.tokenizer import MASK_ID, PAD_ID, SPECIAL_TOKENS

from .masking import MaskConfig, bert_corrupt, sample_mask

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)  # per-channel pixel statistics of the CIFAR-10 training set
CIFAR_STD = (0.2470, 0.2435, 0.2616)
# Mean and std of the log-mel (data.audio.log_mel, natural log) over every bin and frame of the default audio
# pretraining clips: Speech Commands v0.02 training + validation (2,903 clips of the shared subset) and FSDD's
# training speakers (2,000 clips). Fixed numbers, like CIFAR_MEAN: the student's input must not depend on
# anything computed from the frames it is not shown (see AudioAdapter).
LOGMEL_MEAN = -8.59
LOGMEL_STD = 5.07


def sincos_1d(n: int, dim: int) -> torch.Tensor:
    """Fixed sinusoidal positions (Vaswani et al. 2017): (n, dim)."""
    pos = torch.arange(n, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    out = torch.zeros(n, dim)
    out[:, 0::2], out[:, 1::2] = torch.sin(pos * freq), torch.cos(pos * freq)
    return out


def sincos_2d(h: int, w: int, dim: int) -> torch.Tensor:
    """2-D sin-cos positions (MAE / data2vec 2.0 images): half the channels encode the row, half the
    column. (h * w, dim), row-major like the patch sequence."""
    rows = sincos_1d(h, dim // 2)[:, None, :].expand(h, w, dim // 2)
    cols = sincos_1d(w, dim // 2)[None, :, :].expand(h, w, dim // 2)
    return torch.cat([rows, cols], dim=-1).reshape(h * w, dim)


class Adapter(nn.Module):
    """Base: raw batch -> (B, T, D) tokens with positions. Subclasses define ``embed`` and the layout.

    ``cls_token=True`` prepends one learned summary token (data2vec 2.0 images): it is never masked,
    and ``Data2Vec`` trains it to predict the mean of the targets, a global target for the whole input.
    """
    modality: str
    num_tokens: int                       # all tokens, prefix included
    grid: tuple[int, int] | None = None   # 2-D layout of the non-prefix tokens (block masks, 2-D decoder)
    prefix: int = 0                       # leading tokens that are never masked ([CLS])

    def __init__(self, dim: int, mask: MaskConfig, cls_token: bool = False):
        super().__init__()
        self.dim, self.mask_cfg = dim, mask
        self.mask_embedding = nn.Parameter(torch.zeros(dim))  # data2vec 1.0: what a masked slot shows
        nn.init.trunc_normal_(self.mask_embedding, std=0.02)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim)) if cls_token else None
        if cls_token:
            nn.init.trunc_normal_(self.cls, std=0.02)
            self.prefix = 1

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, ...) raw input -> (B, T, D) content tokens, without positions."""
        raise NotImplementedError

    def positions(self) -> torch.Tensor:
        return self.pos  # (T, D), a buffer or a parameter set by the subclass

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, generator=None,
                part_of: tuple[int, int] | None = None) -> torch.Tensor:
        """Tokens with positions. With ``mask`` (data2vec 1.0 student), masked slots show the learned
        mask embedding instead of their content; their position is kept. (``part_of``: rows
        [first, first + B) of ``total``, for what draws random numbers: text's BERT corruption.)"""
        tokens = self.embed(x)
        if mask is not None:
            m = mask[:, self.prefix:, None]
            tokens = torch.where(m, self.mask_embedding.to(tokens.dtype), tokens)
        tokens = tokens + self.positions().to(tokens.dtype)
        if self.cls is not None:
            tokens = torch.cat([self.cls.to(tokens.dtype).expand(len(tokens), -1, -1), tokens], dim=1)
        return tokens

    def sample_mask(self, batch: int, generator=None, device=None) -> torch.Tensor:
        """(batch, num_tokens) bool, on ``device`` (default: the generator's device, else the CPU)."""
        return sample_mask(self.mask_cfg, batch, self.num_tokens, self.grid, self.prefix, generator, device)

    def padding_mask(self, x: torch.Tensor) -> torch.Tensor | None:
        """(B, T) True at padding tokens, or None when the modality never pads."""
        return None

    def augment(self, x: torch.Tensor, generator=None, **options) -> torch.Tensor:
        """Training-time augmentation of the raw batch (the teacher and student see the same view):
        ``apply_augment`` of ``draw_augment``'s draws."""
        return self.apply_augment(x, self.draw_augment(len(x), generator, **options), **options)

    def draw_augment(self, batch: int, generator=None, **options) -> dict[str, torch.Tensor]:
        """The random draws of the augmentation of ``batch`` samples, from ``generator``: tensors with
        the sample first, so rows [a, b) of the draws are the draws of samples [a, b). Drawn apart from
        their use so that several processes (or micro-batches) can draw for the whole batch and each
        apply its own rows: the union is then the one-process batch, bit for bit."""
        return {}

    def apply_augment(self, x: torch.Tensor, draws: dict[str, torch.Tensor], **options) -> torch.Tensor:
        """Augment ``x`` (on any device) with ``draws`` (one row per sample of x)."""
        return x


class ImageAdapter(Adapter):
    modality = "image"

    def __init__(self, dim: int, mask: MaskConfig, cls_token: bool = False, image_size: int = 32, patch: int = 4):
        super().__init__(dim, mask, cls_token)
        if image_size % patch:
            raise ValueError(f"patch {patch} does not tile image size {image_size}")
        side = image_size // patch
        self.grid, self.num_tokens, self.patch = (side, side), self.prefix + side * side, patch
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)
        self.register_buffer("pos", sincos_2d(side, side, dim), persistent=False)
        self.register_buffer("mean", torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CIFAR_STD).view(1, 3, 1, 1), persistent=False)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, 3, H, W) uint8 pixels."""
        x = (x.float() / 255.0 - self.mean) / self.std
        return self.proj(x.to(self.proj.weight.dtype)).flatten(2).transpose(1, 2)

    def draw_augment(self, batch: int, generator=None, pad: int = 4) -> dict[str, torch.Tensor]:
        """Per sample: a translation (dy, dx) of up to ``pad`` pixels each way and a coin for the flip."""
        dy, dx = torch.randint(0, 2 * pad + 1, (2, batch, 1), generator=generator)   # (B, 1) each
        flip = torch.rand(batch, generator=generator) < 0.5
        return {"dy": dy, "dx": dx, "flip": flip}

    def apply_augment(self, x: torch.Tensor, draws: dict[str, torch.Tensor], pad: int = 4) -> torch.Tensor:
        """Random translation by up to ``pad`` pixels (reflect padding) and horizontal flips."""
        B, _, H, W = x.shape
        d = {k: v.to(x.device) for k, v in draws.items()}
        padded = torch.nn.functional.pad(x.float(), (pad,) * 4, mode="reflect").to(x.dtype)
        rows = d["dy"] + torch.arange(H, device=x.device)                   # (B, H)
        cols = d["dx"] + torch.arange(W, device=x.device)                   # (B, W)
        out = padded[torch.arange(B, device=x.device)[:, None, None], :, rows[:, :, None], cols[:, None, :]]
        out = out.permute(0, 3, 1, 2)                                       # (B, H, W, C) -> (B, C, H, W)
        return torch.where(d["flip"][:, None, None, None], out.flip(-1), out).contiguous()


class TextAdapter(Adapter):
    """data2vec 1.0 text follows BERT: masked positions get [MASK] 80%, a random token 10%, their own
    token 10% (Sec. 3.2). The released fairseq config instead masks 35% in spans of 4 with no random
    or kept tokens; we follow the paper."""
    modality = "text"
    prefix = 1  # [CLS]

    def __init__(self, dim: int, mask: MaskConfig, vocab_size: int, seq_len: int):
        super().__init__(dim, mask)  # [CLS] is the first input id: no extra token
        self.num_tokens, self.vocab_size = seq_len, vocab_size
        self.tok = nn.Embedding(vocab_size, dim, padding_idx=PAD_ID)
        self.pos = nn.Parameter(torch.zeros(seq_len, dim))
        nn.init.trunc_normal_(self.tok.weight, std=0.02)
        nn.init.trunc_normal_(self.pos, std=0.02)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.tok(x)

    def positions(self) -> torch.Tensor:
        return self.pos

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, generator=None,
                part_of: tuple[int, int] | None = None) -> torch.Tensor:
        if mask is not None:  # BERT corruption of the ids, then embed as usual
            x = bert_corrupt(x, mask, MASK_ID, (len(SPECIAL_TOKENS), self.vocab_size), generator, part_of=part_of)
        T = x.shape[1]
        return self.tok(x) + self.pos[:T].to(self.tok.weight.dtype)

    def padding_mask(self, x: torch.Tensor) -> torch.Tensor | None:
        pad = x == PAD_ID
        return pad if pad.any() else None


class AudioAdapter(Adapter):
    """Log-mel frames -> tokens. The log-mel is standardised with FIXED dataset statistics (LOGMEL_MEAN,
    LOGMEL_STD), then every ``patch`` frames (64 mels each) become one token.

    Why not standardise each clip on its own (which would remove recording gain)? The clip's mean and std
    would be computed over ALL frames, the masked ones included, before masking: every visible token would
    carry two numbers about the frames the student must predict. With fixed statistics a token depends on
    its own frames only (tests/model/test_data2vec.py checks that changing masked frames leaves the
    student's visible tokens bit-identical). Gain differences stay in the input: the mean log-mel of a
    Speech Commands clip varies by about 1.8 across clips (sd), against a spread of about 4.2 within a clip.

    ``freq_warp`` / ``time_stretch`` > 0 make training see more voices than the few speakers of the
    data: each clip's mel axis is scaled by a random factor in [1 - w, 1 + w] (vocal tract length
    perturbation, Jaitly & Hinton 2013) and its time axis by one in [1 - s, 1 + s] (speed
    perturbation, Ko et al. 2015)."""
    modality = "audio"

    def __init__(self, dim: int, mask: MaskConfig, cls_token: bool = False, n_mels: int = 64, n_frames: int = 100,
                 patch: int = 2, freq_warp: float = 0.0, time_stretch: float = 0.0):
        super().__init__(dim, mask, cls_token)
        if n_frames % patch:
            raise ValueError(f"patch {patch} does not tile {n_frames} frames")
        if not (0 <= freq_warp < 1 and 0 <= time_stretch < 1):
            raise ValueError(f"freq_warp and time_stretch must be in [0, 1), got {freq_warp}, {time_stretch}")
        self.freq_warp, self.time_stretch = freq_warp, time_stretch
        self.num_tokens, self.patch = self.prefix + n_frames // patch, patch
        self.proj = nn.Linear(n_mels * patch, dim)
        self.norm = nn.LayerNorm(dim)
        self.register_buffer("pos", sincos_1d(n_frames // patch, dim), persistent=False)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, n_mels, n_frames) log-mel."""
        x = (x.float() - LOGMEL_MEAN) / LOGMEL_STD   # per element: no statistic of the clip (see class doc)
        B, M, F = x.shape
        frames = x.transpose(1, 2).reshape(B, F // self.patch, self.patch * M)
        return self.norm(self.proj(frames.to(self.proj.weight.dtype)))

    def draw_augment(self, batch: int, generator=None, max_shift: int = 10) -> dict[str, torch.Tensor]:
        """Per clip: a time shift of 0..``max_shift`` frames, and (when on) the time and mel-axis factors."""
        draws = {"shift": torch.randint(0, max_shift + 1, (batch,), generator=generator)}
        if self.freq_warp or self.time_stretch:
            time_scale, mel_scale = 1 + (2 * torch.rand(2, batch, generator=generator) - 1) * torch.tensor(
                [[self.time_stretch], [self.freq_warp]])
            draws.update(time_scale=time_scale, mel_scale=mel_scale)
        return draws

    def apply_augment(self, x: torch.Tensor, draws: dict[str, torch.Tensor], max_shift: int = 10) -> torch.Tensor:
        """Random time shift by up to ``max_shift`` frames (100 ms), so the word does not always start
        at frame 0; then the random mel-axis warp and time stretch. Uncovered cells get the clip's
        minimum (silence)."""
        B, _, F = x.shape
        d = {k: v.to(x.device) for k, v in draws.items()}
        idx = (torch.arange(F, device=x.device)[None, :] - d["shift"][:, None])   # (B, F) source frame
        floor = x.amin(dim=(1, 2), keepdim=True)
        out = x.gather(2, idx.clamp(min=0)[:, None, :].expand_as(x))
        out = torch.where((idx >= 0)[:, None, :], out, floor)
        if "time_scale" not in d:
            return out
        return scale_axes(out, d["time_scale"], d["mel_scale"])


def scale_axes(x: torch.Tensor, time_scale: torch.Tensor, mel_scale: torch.Tensor) -> torch.Tensor:
    """(B, M, F) spectrograms -> output cell (mel m, frame t) = x at (m * mel_scale, t * time_scale),
    bilinearly interpolated, per clip. Both axes are scaled about their origin (lowest band, clip start):
    a factor < 1 stretches an axis (a slower word; formants moved up, a shorter vocal tract), > 1
    compresses it. Cells that read beyond the input get the clip's minimum (silence)."""
    B, M, F = x.shape
    floor = x.amin(dim=(1, 2), keepdim=True)
    theta = torch.zeros(B, 2, 3, device=x.device)  # affine_grid's coordinates run from -1 to 1: origin -1 stays at -1
    theta[:, 0, 0], theta[:, 0, 2] = time_scale, time_scale - 1
    theta[:, 1, 1], theta[:, 1, 2] = mel_scale, mel_scale - 1
    grid = nn.functional.affine_grid(theta, [B, 1, M, F], align_corners=True)
    scaled = nn.functional.grid_sample((x - floor).float()[:, None], grid, align_corners=True)[:, 0]
    return (scaled + floor).to(x.dtype)
