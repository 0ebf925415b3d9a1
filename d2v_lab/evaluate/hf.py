"""Encoders that are not d2v_lab checkpoints: the released data2vec models (or any model saved with
``save_pretrained``), read out per layer the way ``features.py`` reads ours, so the probes and the
cross-modal experiment can ask them the same questions.

An encoder is named ``hf:<model id>`` (e.g. ``hf:facebook/data2vec-vision-base``, read from the local
Hugging Face cache, downloaded when it is not there and the hub is reachable) or by a local folder
written by ``save_pretrained`` (read with ``local_files_only``: no network). This module is the only
place that imports ``transformers`` (an optional extra: ``pip install -e ".[hf]"``), and it imports it
only when an encoder is loaded, so d2v_lab works without it.

Each model gets its own preprocessing, as released with it:
  image  its image processor (CIFAR-10's 32x32 pictures resized to the model's input, 224 for the base
         model, and normalised as in its pretraining); features = mean of the patch tokens ([CLS] left
         out, as ``features.layer_features`` leaves out ours)
  text   its tokenizer on the story text (a window of ``max_tokens`` tokens around the word asked
         about); features = mean of the word's tokens, or of the window's non-special tokens
  audio  its feature extractor on the 1 s, 16 kHz waveforms; features = mean of the non-padding frames
Features come as ``{"mean": (L+1, N, D)}``: layer 0 the embeddings (hidden_states[0]), layer l the
output of block l, the layout ``layer_features`` returns. Batched, on the best device, with progress bars.
"""
from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from d2v_lab.train.device import autocast_for, pick_device

from .features import pool, pooling_weights

HF_PREFIX = "hf:"
INSTALL = 'pip install -e ".[hf]"'
# the released data2vec base models (self-supervised only, not fine-tuned), one per modality
RELEASED = {"image": "facebook/data2vec-vision-base", "text": "facebook/data2vec-text-base",
            "audio": "facebook/data2vec-audio-base"}
MODEL_TYPES = {"data2vec-vision": "image", "data2vec-text": "text", "data2vec-audio": "audio"}
SAMPLE_RATE = 16000      # our clips (data/audio.py); the audio feature extractor must expect the same
TEXT_TOKENS = 128        # a story window, in the model's tokens, specials included


class EncoderUnavailable(ValueError):
    """A Hugging Face encoder that cannot be loaded: transformers missing, a model id neither cached nor
    downloadable, a folder that is not a saved model. A ValueError: the CLI reports it in one line, exit 2."""


def is_hf_spec(spec) -> bool:
    """Whether ``spec`` names a Hugging Face encoder: ``hf:<id>``, or a folder holding a saved model
    (a ``config.json`` with a ``model_type`` and no ``checkpoint.pt``: a d2v_lab run folder also has a
    config.json, but never a model_type)."""
    if str(spec).startswith(HF_PREFIX):
        return True
    folder = Path(spec)
    if not (folder / "config.json").is_file() or (folder / "checkpoint.pt").exists():
        return False
    try:
        return "model_type" in json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return False


def download_command(model_id: str) -> str:
    return f"huggingface-cli download {model_id}"


def _transformers():
    try:
        import transformers  # lazily: the hf extra is optional
    except ImportError as e:
        raise EncoderUnavailable(f"Hugging Face encoders need the optional extra: {INSTALL} "
                                 f"(transformers could not be imported: {e})") from None
    return transformers


def transformers_installed() -> bool:
    """Whether the hf extra is installed, without importing transformers (seconds of imports)."""
    try:
        return importlib.util.find_spec("transformers") is not None
    except ValueError:                      # a module set to None in sys.modules (tests)
        return False


def offline() -> bool:
    """The hub's own switch (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE): then only the cache is read."""
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def is_cached(model_id: str) -> bool:
    """Whether the hub model ``model_id`` is in the local Hugging Face cache (its config.json and weights),
    without any network access and without importing transformers: cheap enough to ask at every start."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:                # huggingface_hub comes with transformers: no extra, no cache
        return False
    found = lambda name: isinstance(try_to_load_from_cache(model_id, name), str)  # noqa: E731
    return found("config.json") and (found("model.safetensors") or found("pytorch_model.bin"))


@dataclass
class HFEncoder:
    """A loaded Hugging Face encoder: the model (eval mode, on ``device``), its preprocessing and its modality."""
    name: str                 # the model id or the folder, as given (without "hf:")
    modality: str             # image | text | audio
    model: Any                # a transformers PreTrainedModel
    preprocess: Any           # image processor | tokenizer | feature extractor
    device: torch.device
    note: str = ""            # e.g. a default feature extractor used because none was saved

    @property
    def source(self) -> str:
        return f"{HF_PREFIX}{self.name}"

    @property
    def n_layers(self) -> int:
        """L + 1: the embeddings and every block."""
        return int(self.model.config.num_hidden_layers) + 1


def _modality(config, spec: str) -> str:
    if config.model_type in MODEL_TYPES:
        return MODEL_TYPES[config.model_type]
    # another encoder family: tell the modality by what its config describes
    if hasattr(config, "conv_dim"):
        return "audio"
    if hasattr(config, "image_size") and hasattr(config, "patch_size"):
        return "image"
    if hasattr(config, "vocab_size"):
        return "text"
    raise EncoderUnavailable(f"{spec}: cannot tell the modality of a {config.model_type!r} model")


def _unreachable(model_id: str, cause: Exception) -> str:
    why = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
    return (f"hf:{model_id} is not in the local Hugging Face cache and could not be downloaded ({why[:160]}); "
            f"get it on a machine with internet with `{download_command(model_id)}` (and copy the cache, "
            f"~/.cache/huggingface, here), or run this command with internet access")


def load_encoder(spec, modality: str | None = None, device: str = "auto") -> HFEncoder:
    """The encoder ``spec`` names (``hf:<id>`` or a saved folder), its preprocessing, on ``device``
    ("auto": CUDA, else MPS, else CPU). ``modality``, when given, must be the model's."""
    spec = str(spec)
    name = spec[len(HF_PREFIX):] if spec.startswith(HF_PREFIX) else spec
    local = Path(name).is_dir()
    if spec.startswith(HF_PREFIX) and not local and not name:
        raise EncoderUnavailable(f"{spec!r}: name a model after 'hf:', e.g. hf:{RELEASED['image']}")
    tf = _transformers()

    def load(cls, **extra):
        """``cls.from_pretrained``: a folder or the cache first (never the network), then the hub."""
        try:
            return cls.from_pretrained(name, local_files_only=True, **extra)
        except (OSError, ValueError) as e:
            if local:
                raise EncoderUnavailable(f"{name}: not a complete saved model ({e})") from None
            if offline():
                raise EncoderUnavailable(_unreachable(name, e)) from None
        try:
            return cls.from_pretrained(name, **extra)
        except Exception as e:  # noqa: BLE001 (a failed download surfaces as OSError, or as the HTTP client's own error)
            raise EncoderUnavailable(_unreachable(name, e)) from None

    config = load(tf.AutoConfig)
    found = _modality(config, spec)
    if modality is not None and found != modality:
        raise EncoderUnavailable(f"{spec}: a model of modality {found!r} ({config.model_type}), given as the "
                                 f"{modality} encoder")
    model = load(tf.AutoModel)
    note = ""
    if found == "image":
        preprocess = load(tf.AutoImageProcessor)
    elif found == "text":
        preprocess = load(tf.AutoTokenizer)
    else:
        try:
            preprocess = load(tf.AutoFeatureExtractor)
        except EncoderUnavailable:
            # a model saved without preprocessor_config.json: data2vec-audio's own settings (raw 16 kHz
            # waveform, normalised to zero mean and unit variance per clip)
            preprocess = tf.Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=SAMPLE_RATE, padding_value=0.0,
                                                     do_normalize=True, return_attention_mask=True)
            note = "no saved feature extractor: the data2vec-audio default (16 kHz, normalised per clip)"
        if getattr(preprocess, "sampling_rate", SAMPLE_RATE) != SAMPLE_RATE:
            raise EncoderUnavailable(f"{spec}: its feature extractor expects {preprocess.sampling_rate} Hz "
                                     f"audio; the clips here are {SAMPLE_RATE} Hz")
    target = pick_device(device)
    return HFEncoder(name, found, model.eval().to(target), preprocess, target, note)


def random_init(encoder: HFEncoder, seed: int = 0) -> HFEncoder:
    """The same architecture and preprocessing with fresh random weights (the model class's own
    initialisation): what the architecture gives without pretraining, the probe's "random init"."""
    torch.manual_seed(seed)
    model = type(encoder.model)(encoder.model.config).eval().to(encoder.device)
    return HFEncoder(f"{encoder.name} (random init)", encoder.modality, model, encoder.preprocess, encoder.device)


# --- per-layer features -----------------------------------------------------------------------------

@torch.no_grad()
def _pooled_layers(encoder: HFEncoder, batches: Iterable[tuple[dict, Any]], total: int, desc: str,
                   progress: bool) -> dict[str, np.ndarray]:
    """Run ``encoder`` on each (model inputs, keep) batch and mean-pool every hidden state over the
    positions ``keep`` marks: a (B, T) tensor, or a function of T (the hidden length) giving one.
    Returns {"mean": (L+1, N, D)} in fp32."""
    autocast = autocast_for("auto", encoder.device.type)
    parts = []
    with tqdm(total=total, desc=desc, disable=not progress, leave=False) as bar:
        for inputs, keep in batches:
            inputs = {k: v.to(encoder.device) for k, v in inputs.items()}
            with autocast():
                out = encoder.model(**inputs, output_hidden_states=True)
            layers = torch.stack([h.float() for h in out.hidden_states])         # (L+1, B, T, D)
            keep = keep(layers.shape[2]) if callable(keep) else keep
            weights = pooling_weights(keep.to(layers.device))                    # {"mean": (B, 1, T), ...}
            parts.append(pool(layers, {"mean": weights["mean"]})["mean"].cpu())  # (L+1, B, D)
            bar.update(layers.shape[1])
    return {"mean": torch.cat(parts, 1).numpy()}


def _chunks(n: int, batch_size: int) -> Iterable[slice]:
    return (slice(i, min(i + batch_size, n)) for i in range(0, n, batch_size))


def image_features(encoder: HFEncoder, images, batch_size: int = 64, progress: bool = True) -> dict[str, np.ndarray]:
    """(N, 3, H, W) uint8 pictures -> {"mean": (L+1, N, D)}: the mean of the patch tokens at every layer.
    The image processor resizes (CIFAR's 32x32 to the model's input size) and normalises."""
    images = np.asarray(images)
    proc = encoder.preprocess

    def batches():
        for s in _chunks(len(images), batch_size):
            pixels = proc(images=list(images[s].transpose(0, 2, 3, 1)), input_data_format="channels_last",
                          return_tensors="pt")["pixel_values"]
            n_patches = (pixels.shape[-2] // _patch(encoder)) * (pixels.shape[-1] // _patch(encoder))

            def keep(T, b=len(pixels), n=n_patches):                           # the [CLS] prefix left out
                k = torch.zeros(b, T)
                k[:, T - n:] = 1
                return k
            yield {"pixel_values": pixels}, keep
    return _pooled_layers(encoder, batches(), len(images), f"{encoder.name} image features", progress)


def _patch(encoder: HFEncoder) -> int:
    p = encoder.model.config.patch_size
    return p[0] if isinstance(p, (tuple, list)) else int(p)


def text_windows(tokenizer, texts: Sequence[str], spans: Sequence[tuple[int, int]], max_tokens: int = TEXT_TOKENS,
                 select: str = "span") -> tuple[dict, torch.Tensor]:
    """Model inputs for a window of each text around ``spans[i]`` (characters), and the positions to
    average: the tokens that overlap the span (``select="span"``, e.g. one word) or every non-special
    token of the window (``select="window"``).

    The window is chosen as ``pairing.text_features`` chooses ours: ``max_tokens`` minus the special
    tokens, starting a quarter of the window before the span's first token (or where the text allows).
    It is cut in characters and tokenized again with the special tokens, so every tokenizer adds its
    own ([CLS] ... [SEP], <s> ... </s>)."""
    if select not in ("span", "window"):
        raise ValueError(f"select must be 'span' or 'window', got {select!r}")
    body = max_tokens - tokenizer.num_special_tokens_to_add(pair=False)
    whole = tokenizer(list(texts), add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    cut, rel = [], []
    for text, offsets, (a, b) in zip(texts, whole, spans):
        word = [t for t, (s, e) in enumerate(offsets) if s < b and e > a]
        first = word[0] if word else 0
        start = max(0, min(first - body // 4, len(offsets) - body))
        stop = min(len(offsets), start + body)
        lo, hi = (offsets[start][0], offsets[stop - 1][1]) if stop > start else (0, len(text))
        cut.append(text[lo:hi])
        rel.append((a - lo, b - lo))
    enc = tokenizer(cut, padding=True, truncation=True, max_length=max_tokens, return_offsets_mapping=True,
                    return_special_tokens_mask=True, return_tensors="pt")
    offsets, special = enc.pop("offset_mapping"), enc.pop("special_tokens_mask")
    content = enc["attention_mask"].bool() & ~special.bool()                      # (N, T)
    if select == "window":
        return dict(enc), content.float()
    a = torch.tensor([r[0] for r in rel])[:, None]
    b = torch.tensor([r[1] for r in rel])[:, None]
    overlaps = (offsets[..., 0] < b) & (offsets[..., 1] > a)
    return dict(enc), (content & overlaps).float()


def text_features(encoder: HFEncoder, texts: Sequence[str], spans: Sequence[tuple[int, int]],
                  select: str = "span", max_tokens: int = TEXT_TOKENS, batch_size: int = 32,
                  progress: bool = True) -> dict[str, np.ndarray]:
    """Texts -> {"mean": (L+1, N, D)}: at every layer the mean of the tokens ``text_windows`` selects."""
    def batches():
        for s in _chunks(len(texts), batch_size):
            inputs, keep = text_windows(encoder.preprocess, texts[s], spans[s], max_tokens, select)
            yield inputs, keep
    return _pooled_layers(encoder, batches(), len(texts), f"{encoder.name} text features", progress)


def audio_features(encoder: HFEncoder, waves, batch_size: int = 32, progress: bool = True) -> dict[str, np.ndarray]:
    """(N, samples) float 16 kHz waveforms -> {"mean": (L+1, N, D)}: the mean of the non-padding
    frames (20 ms each for data2vec-audio) at every layer. The feature extractor normalises each clip."""
    waves = np.asarray(waves, dtype=np.float32)
    proc = encoder.preprocess

    def batches():
        for s in _chunks(len(waves), batch_size):
            inputs = proc(list(waves[s]), sampling_rate=SAMPLE_RATE, padding=True, return_tensors="pt")
            inputs = {k: v for k, v in inputs.items() if k in ("input_values", "attention_mask")}
            samples = inputs.get("attention_mask")

            def keep(T, b=len(waves[s]), samples=samples):
                if samples is None or not hasattr(encoder.model, "_get_feature_vector_attention_mask"):
                    return torch.ones(b, T)
                return encoder.model._get_feature_vector_attention_mask(T, samples).float().cpu()
            yield inputs, keep
    return _pooled_layers(encoder, batches(), len(waves), f"{encoder.name} audio features", progress)
