"""One section's latent: given frames before and after the new ones, and how each model is shown them."""

import torch

from histenc.dit.info import ModelInfo
from histenc.longvideo.section import native_conditioning, section_latent

T2V = ModelInfo("wan", "wan2.1", "t2v", 32, 4, 4, 8, 4, (1, 2, 2), 2, 2, False)
I2V = ModelInfo("wan", "wan2.1", "i2v", 32, 4, 12, 8, 4, (1, 2, 2), 2, 2, False)


def frames(n, value):
    return torch.full((1, 4, n, 2, 2), float(value))


def test_continuation_before_and_the_next_section_after_are_given_and_dropped():
    history, future = frames(5, 1), frames(3, 2)
    layout = section_latent(3, new=2, history=history, future=future, start=None, continuation=2, size=(4, 2, 2))
    assert (layout.drop, layout.new, layout.known, layout.tail, layout.length) == (2, 2, 2, 2, 6)
    assert layout.given()[0, 0, :, 0, 0].tolist() == [1, 1, 0, 0, 1, 1]
    native = native_conditioning(layout, T2V)
    assert native.concat is None
    assert native.latent[0, 0, :, 0, 0].tolist() == [1, 1, 0, 0, 2, 2]  # latent replacement
    assert native.noise_mask[0, 0, :, 0, 0].tolist() == [0, 0, 1, 1, 0, 0]
    sampled = torch.arange(6.0).view(1, 1, 6, 1, 1)
    assert layout.new_frames(sampled).flatten().tolist() == [2, 3]


def test_the_start_image_is_the_first_new_frame_and_stays():
    layout = section_latent(0, new=3, history=None, future=None, start=frames(1, 7), continuation=1, size=(4, 2, 2))
    assert (layout.drop, layout.known, layout.tail, layout.length) == (0, 1, 0, 3)
    native = native_conditioning(layout, T2V)
    assert native.latent[0, 0, :, 0, 0].tolist() == [7, 0, 0]
    assert native.given()[0, 0, :, 0, 0].tolist() == [1, 0, 0]


def test_i2v_models_get_the_frames_through_the_image_channels_over_grey():
    layout = section_latent(1, new=2, history=frames(4, 1), future=None, start=None, continuation=1, size=(4, 2, 2))
    native = native_conditioning(layout, I2V, grey=frames(3, 0.5))
    assert native.noise_mask is None and bool((native.latent == 0).all())
    assert native.concat["concat_latent_image"][0, 0, :, 0, 0].tolist() == [1, 0.5, 0.5]
    assert native.concat["concat_mask"][0, 0, :, 0, 0].tolist() == [0, 1, 1]
    assert bool((native.given() == 0).all())  # nothing is given through the latent itself


def test_nothing_given_is_plain_noise_sampling():
    layout = section_latent(0, new=2, history=None, future=None, start=None, continuation=1, size=(4, 2, 2))
    native = native_conditioning(layout, T2V)
    assert native.noise_mask is None and native.concat is None and layout.length == 2
    assert layout.new_frames(torch.ones(1, 4, 2, 2, 2)).shape[2] == 2


def test_keep_given_writes_the_given_frames_back_and_leaves_the_new_ones():
    layout = section_latent(0, new=3, history=None, future=None, start=frames(1, 7), continuation=1, size=(4, 2, 2))
    native = native_conditioning(layout, T2V)
    sampled = torch.full((1, 4, 3, 2, 2), 0.25)
    kept = native.keep_given(sampled)
    assert kept[0, :, :, 0, 0].tolist() == [[7.0, 0.25, 0.25]] * 4
    i2v = native_conditioning(layout, I2V, grey=frames(3, 0.5))  # nothing given through the latent
    assert torch.equal(i2v.keep_given(sampled), sampled)
