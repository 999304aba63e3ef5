"""Seconds <-> frames <-> latent frames and the size rule: one answer for the sampler, planner and schedule node."""

import pytest

from histenc.longvideo.storyboard import schedule_sections
from histenc.units import check_size, latent_frames, seconds_per_latent_frame, span_latent_frames, video_frames


def test_a_minute_at_16_fps_is_241_latent_frames_for_everyone():
    assert video_frames(60, 16) == 960
    assert latent_frames(60, 16) == 241 == schedule_sections(60, 16, 9).latent_frames


@pytest.mark.parametrize("seconds, fps", [(0.1, 16), (1, 16), (2.5, 24), (61.3, 16), (5, 30)])
def test_latent_frames_follow_the_causal_vae(seconds, fps):
    frames = video_frames(seconds, fps)
    assert latent_frames(seconds, fps) == 1 + (frames - 1 + 3) // 4 == schedule_sections(seconds, fps, 4).latent_frames


def test_no_history_is_no_latent_frames_and_spans_count_four_frames_each():
    assert latent_frames(0, 16) == 0
    assert span_latent_frames(1, 16) == 4 and span_latent_frames(0.01, 16) == 1
    assert seconds_per_latent_frame(24) == pytest.approx(4 / 24)
    assert seconds_per_latent_frame(16, frame_stride=2) == pytest.approx(0.5)


def test_sizes_must_be_whole_patches_of_the_vae():
    assert check_size(832, 480, 8) == (60, 104)
    assert check_size(1280, 704, 16) == (44, 80)
    with pytest.raises(
        ValueError,
        match=r"width 830 is not a multiple of 16 \(VAE x8 times DiT patch x2\); "
        "use 816 or 832",
    ):
        check_size(830, 480, 8)
    with pytest.raises(ValueError, match="height 8 is too small; use a positive multiple of 32"):
        check_size(64, 8, 16)
