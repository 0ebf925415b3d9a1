"""Training-time augmentation of the raw batch: image translation + flips, audio time shift, mel-axis
warp and time stretch. Checked on constructed inputs whose answer is known."""
from __future__ import annotations

import pytest
import torch

from d2v_lab.model.masking import MaskConfig
from d2v_lab.model.modalities import AudioAdapter, ImageAdapter, scale_axes
from d2v_lab.train.config import DataConfig

SPAN = MaskConfig("span", 0.5, span=5)


def impulse(mel: int, frame: int, n: int = 1) -> torch.Tensor:
    """(n, 64, 100) silence at -5 with one loud cell."""
    x = torch.full((n, 64, 100), -5.0)
    x[:, mel, frame] = 5.0
    return x


def test_scale_axes_with_factor_one_is_the_identity():
    x = torch.randn(3, 64, 100)
    assert torch.allclose(scale_axes(x, torch.ones(3), torch.ones(3)), x, atol=1e-4)  # float grid arithmetic


@pytest.mark.parametrize("time_scale, mel_scale", [(0.5, 1.0), (1.0, 0.5), (2.0, 2.0), (0.8, 1.25)])
def test_scale_axes_moves_a_cell_to_its_coordinate_divided_by_the_factor(time_scale, mel_scale):
    # output (m, t) reads input (m * mel_scale, t * time_scale): the loud input cell (band 20, frame
    # 40) lands at (20 / mel_scale, 40 / time_scale)
    out = scale_axes(impulse(20, 40), torch.tensor([time_scale]), torch.tensor([mel_scale]))[0]
    mel, frame = divmod(int(out.argmax()), 100)
    assert (mel, frame) == (20 / mel_scale, 40 / time_scale)
    assert out.min() == -5.0 and out.max() <= 5.0  # interpolation never leaves the input's range


def test_scale_axes_fills_what_it_reads_beyond_the_input_with_silence():
    x = torch.randn(2, 64, 100)
    out = scale_axes(x, torch.tensor([2.0, 1.0]), torch.tensor([1.0, 2.0]))
    floor = x.amin(dim=(1, 2))
    assert torch.all(out[0, :, 51:] == floor[0])   # frames 51.. read beyond frame 99
    assert torch.all(out[1, 33:, :] == floor[1])   # bands 33.. read beyond band 63
    assert torch.allclose(out[0, :, :50], x[0, :, ::2], atol=1e-4)  # frame t reads frame 2t exactly


def test_audio_shift_only_moves_the_clip_later_and_pads_with_silence():
    x = impulse(10, 0, n=64)
    x[:, :, -1] = 0.0   # a non-silent last frame: shifted out, never wrapped round to the front
    adapter = AudioAdapter(32, SPAN)
    out = adapter.augment(x, torch.Generator().manual_seed(0))
    shifts = out[:, 10].argmax(1)   # where the loud frame 0 went
    assert torch.all((0 <= shifts) & (shifts <= 10)) and len(set(shifts.tolist())) > 5
    expected = torch.stack([torch.cat([torch.full((64, int(s)), -5.0), x[i, :, :100 - int(s)]], dim=1)
                            for i, s in enumerate(shifts)])
    assert torch.equal(out, expected)  # a shift with silence in front, nothing else, when warp and stretch are off


def test_audio_warp_and_stretch_stay_within_their_range_and_are_seeded():
    adapter = AudioAdapter(32, SPAN, freq_warp=0.2, time_stretch=0.1)
    x = impulse(40, 50, n=256)
    out = adapter.augment(x, torch.Generator().manual_seed(1), max_shift=0)
    mel, frame = torch.div(out.flatten(1).argmax(1), 100, rounding_mode="floor"), out.flatten(1).argmax(1) % 100
    # the loud cell lands at 40 / warp with warp in [0.8, 1.2], 50 / stretch with stretch in [0.9, 1.1]
    assert mel.min() >= round(40 / 1.2) and mel.max() <= round(40 / 0.8) and mel.unique().numel() > 10
    assert frame.min() >= round(50 / 1.1) and frame.max() <= round(50 / 0.9) and frame.unique().numel() > 5
    again = adapter.augment(x, torch.Generator().manual_seed(1), max_shift=0)
    assert torch.equal(out, again)


def test_image_augment_without_padding_only_flips():
    x = torch.randint(0, 256, (32, 3, 32, 32), dtype=torch.uint8)
    out = ImageAdapter(32, MaskConfig("block", 0.6)).augment(x, torch.Generator().manual_seed(0), pad=0)
    flipped = torch.tensor([torch.equal(o, i.flip(-1)) for o, i in zip(out, x)])
    kept = torch.tensor([torch.equal(o, i) for o, i in zip(out, x)])
    assert torch.all(flipped | kept) and 0 < flipped.sum() < len(x)


@pytest.mark.parametrize("kw", [{"freq_warp": 1.0}, {"time_stretch": -0.1}])
def test_impossible_audio_augmentation_is_refused(kw):
    with pytest.raises(ValueError, match="must be in"):
        DataConfig(**kw)
    with pytest.raises(ValueError, match="must be in"):
        AudioAdapter(32, SPAN, **kw)
