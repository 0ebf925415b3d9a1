"""data2vec, written once for every modality.

Baevski et al. 2022, "data2vec: A General Framework for Self-supervised Learning in Speech, Vision and
Language" (1.0), and Baevski et al. 2022, "Efficient Self-supervised Learning with Contextualized Target
Representations for Vision, Speech and Language" (2.0). One idea (Sec. 3 of both):

    a student sees a MASKED input and predicts, at the masked positions, what a teacher (an EMA of the
    student, ``ema.py``) computes for the UNMASKED input: the normalised average of its top-K blocks'
    FFN outputs (``targets.py``).

``Data2Vec`` wraps an injected ``Adapter`` (the modality: tokens, masking) and ``Encoder`` (the
Transformer) and knows nothing else about the modality. ``forward`` returns the loss.

version=1 (data2vec 1.0): the student encodes ALL tokens, the masked ones replaced by a learned mask
  embedding (text: BERT corruption); a regression head (linear; 2 layers for text) maps the student's
  output at masked positions to the targets; loss = smooth L1 (beta) or L2 at masked positions only.
version=2 (data2vec 2.0, Sec. 3): the student encodes ONLY the visible tokens; its outputs are put back
  in place, masked slots filled with N(0, 0.01^2) noise, and a small convolutional decoder predicts the
  targets; L2 loss at masked positions. M masked copies of each sample share one teacher pass
  ("multi-mask", Sec. 3 "Multi-mask training"), which amortises the teacher's cost.

Differences from the released fairseq code, where the code departs from the papers (we follow the papers):
- 1.0 text: fairseq's ``target_tokens`` hold the real tokens only at masked positions (fairseq issue
  #4881), so its teacher does not see the full unmasked input; here it does. fairseq also masks 35% in
  spans of 4 without BERT's 80/10/10; we use BERT's 15% 80/10/10 as the paper says.
- 1.0 vision: the data2vec_vision code regresses block outputs (after the residual) with an extra final
  layer norm; the paper, and this file, use FFN outputs (final norm configurable).
- fairseq's EMA copies (rather than averages) some embedding/positional parameters; here the teacher is
  an EMA of the whole student encoder including its input adapter.
- fairseq sums the loss over channels and scales it by 1/sqrt(D); we average over channels, a constant
  factor that Adam's update is invariant to.

Further differences, checked against the fairseq source (issue 14, item 3, findings 1-5):
- (1) Mask ratio. fairseq's 2.0 audio masking (mask_prob=0.5, mask_length=5; compute_mask_indices with
  min_masks=1, require_same_masks=True) draws int(0.5 * T / 5 + U) span starts per row and lets spans
  overlap, so a row is ~42% masked (simulated: 41.9% at T=50, 41.0% at T=500); it then cuts every row
  to the batch minimum: 34% / 29% / 26% of T=50 for 8 / 64 / 256 rows (36-39% at T=500). Our
  ``span_mask`` masks exactly round(ratio * T) per row: the ratio asked is the ratio got (fairseq's
  rule at our 50 tokens and 256 rows, 64 clips x 4 masks, would give ratio 0.26).
- (2) [CLS] loss weight. fairseq adds cls_loss * sample_size * (sum of the [CLS] squared errors) and
  divides the whole loss by sample_size (masked tokens), so against the mean regression error its
  weight is cls_loss * R, R = rows per GPU (clips x clone_batch); ours multiplies a mean. Ours =
  fairseq's * R: its image recipe (0.01, 16 clips x 16 clones) is our cls_loss = 2.56. fairseq also
  reads the [CLS] prediction straight off the encoder output; we pass it through ``cls_head``.
- (3) Pre-LN. Our blocks normalise before attention and FFN, plus a final norm (stable with short
  warm-ups; Xiong et al. 2020). fairseq's 2.0 (Data2VecMultiConfig.layer_norm_first=False, set by no
  v2 recipe) and 1.0 audio (Wav2Vec2Config.layer_norm_first=False) are post-LN: r = norm1(x + attn(x)),
  x = norm2(r + FFN(r)), with a LayerNorm on the embedded input. The target is the same quantity, the
  FFN output before the residual. (fairseq's layer_norm_first=True block drops the FFN skip:
  r = x = mlp(norm2(x)).)
- (4) Decoder conv groups: fairseq's audio and image recipes use decoder_groups=16 (text: 1); our
  ``decoder_groups`` defaults to 1, a full convolution.
- (5) Audio input statistics. fairseq standardises each waveform over all its samples before masking
  (task normalize=true), so the clip's mean and std, masked frames included, reach the student. Our
  ``AudioAdapter`` uses fixed dataset statistics, so no log-mel value of a masked frame reaches the
  visible tokens (test_audio_student_input_does_not_depend_on_masked_frames; what remains is the STFT
  windows' overlap: a frame next to a masked span shares up to 15 ms of waveform with it).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .ema import ema_update, make_teacher
from .modalities import Adapter
from .targets import build_targets
from .transformer import Encoder, EncoderOutput


@dataclass(frozen=True)
class Data2VecConfig:
    version: int = 2                 # 1 = data2vec 1.0, 2 = data2vec 2.0 (visible-only student + decoder)
    top_k: int = 4                   # K: how many top blocks the targets average
    target_layer_norm: str = "instance"  # per-block norm before averaging: instance | layer | none
    target_final_norm: str = "none"  # norm of the average: layer | instance | none
    loss: str = "l2"                 # l2 | smooth_l1
    loss_beta: float = 2.0           # smooth L1's beta (1.0: vision 2, text 4)
    head_layers: int = 1             # 1.0 regression head: 1 linear layer, or 2 (text)
    num_masks: int = 1               # 2.0 multi-mask M
    decoder_dim: int = 192           # 2.0 decoder width, depth and kernel
    decoder_layers: int = 2
    decoder_kernel: int = 3
    decoder_groups: int = 1          # 2.0 decoder conv groups (fairseq's audio/image recipes: 16; text: 1)
    mask_noise_std: float = 0.01     # 2.0: masked slots enter the decoder as this much Gaussian noise
    cls_loss: float = 0.0            # 2.0: weight of the [CLS] token's global target (mean of the targets);
                                     # > 0 also gives image/audio adapters a [CLS] token
    tau0: float = 0.999              # EMA decay: tau0 -> tau_end over tau_ramp_steps updates
    tau_end: float = 0.9999
    tau_ramp_steps: int = 1000
    tau_init_share: float = 0.0      # > 0: tau0, tau_end, tau_ramp_steps follow the run length instead, so the
                                     # final teacher keeps this share of its initial weights (ema.derive_schedule)

    def __post_init__(self):
        if self.version not in (1, 2):
            raise ValueError(f"version must be 1 or 2, got {self.version}")
        if self.loss not in ("l2", "smooth_l1"):
            raise ValueError(f"loss must be 'l2' or 'smooth_l1', got {self.loss!r}")
        if self.num_masks < 1:
            raise ValueError(f"num_masks must be >= 1, got {self.num_masks}")
        if self.decoder_groups < 1 or self.decoder_dim % self.decoder_groups:
            raise ValueError(f"decoder_groups must be >= 1 and divide decoder_dim={self.decoder_dim}, "
                             f"got {self.decoder_groups}")
        if self.cls_loss > 0 and self.target_layer_norm == "instance" and self.target_final_norm == "none":
            raise ValueError("cls_loss needs a final target norm: instance-normalised targets average to 0 "
                             "in every channel, so the [CLS] target (their mean) would be constant. Set "
                             "target_final_norm='layer' (as data2vec 2.0 does for images).")


@dataclass
class Data2VecOutput:
    loss: torch.Tensor          # scalar: regression loss (+ cls_loss * global loss)
    pred: torch.Tensor          # (n_masked, D) predictions at the masked positions
    target: torch.Tensor        # (n_masked, D) the teacher's targets there
    mask: torch.Tensor          # (B * M, T) the masks used
    cls_loss: torch.Tensor | None = None  # the [CLS] token's global-target loss, when trained
    reg_loss: torch.Tensor | None = None  # the regression loss alone (= loss without a [CLS] loss)

    @property
    def target_std(self) -> float:
        """Per-channel std of the targets over masked positions, averaged over channels. A value near
        0 means every position gets the same target: representation collapse."""
        return float(self.target.float().std(dim=0).mean())

    @property
    def pred_std(self) -> float:
        return float(self.pred.detach().float().std(dim=0).mean())


class Backbone(nn.Module):
    """Adapter + Transformer: the student, what the teacher copies, and what probes read."""

    def __init__(self, adapter: Adapter, encoder: Encoder):
        super().__init__()
        self.adapter, self.encoder = adapter, encoder

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, generator=None,
                return_layers: bool = False, part_of: tuple[int, int] | None = None) -> EncoderOutput:
        return self.encoder(self.adapter(x, mask, generator, part_of), self.adapter.padding_mask(x), return_layers)


class ConvDecoder(nn.Module):
    """data2vec 2.0 decoder (fairseq ``Decoder1d``/``Decoder2d``): blocks of grouped conv -> parameter-free
    LayerNorm -> GELU with a residual, over the full sequence (1-D) or patch grid (2-D), then a linear
    projection to the target width. Convolutions give it positions for free."""

    def __init__(self, dim_in: int, dim: int, layers: int, kernel: int, dim_out: int,
                 grid: tuple[int, int] | None = None, groups: int = 1):
        super().__init__()
        conv = nn.Conv2d if grid else nn.Conv1d
        self.grid = grid
        self.convs = nn.ModuleList(conv(dim_in if i == 0 else dim, dim, kernel, padding=kernel // 2, groups=groups)
                                   for i in range(layers))
        self.proj = nn.Linear(dim, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        h = x.transpose(1, 2)                                   # (B, C, T)
        if self.grid:
            h = h.reshape(B, -1, *self.grid)                    # (B, C, H, W)
        for conv in self.convs:
            y = conv(h)
            y = F.gelu(F.layer_norm(y.movedim(1, -1), y.shape[1:2]).movedim(-1, 1))
            h = y + h if y.shape == h.shape else y
        return self.proj(h.flatten(2).transpose(1, 2))         # (B, T, dim_out)


class Data2Vec(nn.Module):
    def __init__(self, adapter: Adapter, encoder: Encoder, cfg: Data2VecConfig = Data2VecConfig()):
        super().__init__()
        self.cfg = cfg
        if cfg.top_k > len(encoder.blocks):
            raise ValueError(f"top_k={cfg.top_k} exceeds the encoder depth {len(encoder.blocks)}")
        self.student = Backbone(adapter, encoder)
        self.teacher = make_teacher(self.student)
        D = encoder.cfg.dim
        if cfg.cls_loss > 0:
            if adapter.prefix == 0:
                raise ValueError("cls_loss > 0 needs an adapter with a [CLS] token (cls_token=True)")
            self.cls_head = nn.Linear(D, D)
        if cfg.version == 1:
            self.head = nn.Linear(D, D) if cfg.head_layers == 1 else \
                nn.Sequential(nn.Linear(D, 2 * D), nn.GELU(), nn.Linear(2 * D, D))
        else:
            if D % cfg.decoder_groups:
                raise ValueError(f"decoder_groups={cfg.decoder_groups} must divide the encoder width {D} "
                                 f"(the decoder's first conv reads it)")
            self.decoder = ConvDecoder(D, cfg.decoder_dim, cfg.decoder_layers, cfg.decoder_kernel, D,
                                       grid=adapter.grid, groups=cfg.decoder_groups)

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()  # the teacher never uses dropout or stochastic depth
        return self

    @torch.no_grad()
    def targets(self, x: torch.Tensor, teacher: nn.Module | None = None) -> torch.Tensor:
        """(B, T - prefix, D) fp32 targets for the UNMASKED input x (Eq. 1 of data2vec 1.0), for every
        token but the never-masked prefix ([CLS]), which is left out of the normalisation too."""
        out = (teacher or self.teacher)(x, return_layers=True)
        P = self.student.adapter.prefix
        return build_targets([a[:, P:] for a in out.ffn], self.cfg.top_k, self.cfg.target_layer_norm,
                             self.cfg.target_final_norm)

    def forward(self, x: torch.Tensor, generator=None, mask: torch.Tensor | None = None,
                teacher: nn.Module | None = None, part_of: tuple[int, int] | None = None) -> Data2VecOutput:
        """One data2vec loss on a raw batch x. ``mask`` (B*M, T) overrides sampling; ``teacher``
        overrides the EMA teacher (e.g. a frozen snapshot for held-out evaluation).

        ``part_of=(first, total)``: x is samples [first, first + B) of a batch of ``total`` that is
        split across processes or micro-batches (train/loop.py). The decoder's noise (2.0) and BERT's
        corruption (1.0 text) are then drawn for all ``total`` samples and this part's rows kept, so
        the parts together see exactly what the whole batch would (given the same state of torch's
        global RNG and of ``generator``: the caller's job)."""
        adapter, M = self.student.adapter, self.cfg.num_masks
        if adapter.padding_mask(x) is not None:
            raise ValueError("pretraining batches must not contain padding")
        y = self.targets(x, teacher).repeat_interleave(M, dim=0)         # one teacher pass for M masks
        x = x.repeat_interleave(M, dim=0) if M > 1 else x
        if mask is None:
            mask = adapter.sample_mask(x.shape[0], generator)
        mask = mask.to(x.device)
        P = adapter.prefix
        body = mask[:, P:]                                               # the maskable tokens
        if self.cfg.version == 1:
            rows = None if part_of is None else (part_of[0] * M, part_of[1] * M)
            h = self.student(x, mask, generator, part_of=rows).x         # every token, masked ones replaced
            pred = self.head(h[:, P:][body])
        else:
            h = self._encode_visible(x, mask, part_of)
            pred = self.decoder(h[:, P:])[body]
        target = y[body]
        pred = pred.float()
        if self.cfg.loss == "l2":
            loss = F.mse_loss(pred, target)     # a mean over masked positions (and channels)
        else:
            loss = F.smooth_l1_loss(pred, target, beta=self.cfg.loss_beta)
        reg_loss, cls_loss = loss, None
        if self.cfg.cls_loss > 0:  # data2vec 2.0: [CLS] regresses the mean target of its input
            cls_loss = F.mse_loss(self.cls_head(h[:, 0]).float(), y.mean(dim=1))   # a mean over rows
            loss = loss + self.cfg.cls_loss * cls_loss
        return Data2VecOutput(loss, pred, target, mask, cls_loss, reg_loss)

    def _encode_visible(self, x: torch.Tensor, mask: torch.Tensor,
                        part_of: tuple[int, int] | None = None) -> torch.Tensor:
        """data2vec 2.0: encode only visible tokens (prefix included), then scatter them back; masked
        slots get noise (see ``forward`` for ``part_of``). Returns (B, T, D)."""
        tokens = self.student.adapter(x)                                  # (B, T, D) with positions
        B, T, D = tokens.shape
        n_visible = int((~mask[0]).sum())
        if not (mask.sum(dim=1) == T - n_visible).all():
            raise ValueError("data2vec 2.0 needs the same number of masked tokens in every row")
        visible = tokens[~mask].view(B, n_visible, D)
        h = self.student.encoder(visible).x
        if part_of is None:
            noise = torch.randn(B, T, D, device=h.device, dtype=h.dtype)
        else:   # B rows = this part's samples x M masks; the whole batch has total x M rows
            first, total = part_of
            rows = first * self.cfg.num_masks
            noise = torch.randn(total * self.cfg.num_masks, T, D, device=h.device, dtype=h.dtype)[rows:rows + B]
        full = noise * self.cfg.mask_noise_std
        return full.masked_scatter(~mask[..., None], h)

    def update_teacher(self, tau: float) -> None:
        ema_update(self.teacher, self.student, tau)
