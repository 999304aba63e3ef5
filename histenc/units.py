"""Seconds, video frames, latent frames and pixel sizes: the one set of conversions the pack uses.

A video of ``seconds`` at ``fps`` has ``round(seconds * fps)`` frames (half up). A causal video VAE
(Wan, HunyuanVideo: time stride 4) encodes the first frame alone and every ``time_stride`` frames
after it together, so F frames make ``1 + ceil((F - 1) / time_stride)`` latent frames: 60 s at
16 fps is 960 frames and 241 latent frames. Width and height must be whole multiples of the VAE's
spatial compression times the DiT's spatial patch (16 for Wan 2.1 and HunyuanVideo, 32 for Wan 2.2 5B).
"""

from __future__ import annotations

import math

TIME_STRIDE = 4  # Wan / HunyuanVideo VAEs: 4 video frames per latent frame after the first


def video_frames(seconds: float, fps: float) -> int:
    """Frames of ``seconds`` of video at ``fps`` (rounded half up; 0 seconds: none)."""
    return max(0, math.floor(seconds * fps + 0.5))


def latent_frames_of(frames: int, time_stride: int = TIME_STRIDE) -> int:
    """Latent frames the VAE makes of ``frames`` video frames."""
    return 0 if frames < 1 else 1 + -(-(frames - 1) // time_stride)


def latent_frames(seconds: float, fps: float, time_stride: int = TIME_STRIDE) -> int:
    """Latent frames of ``seconds`` of video at ``fps``."""
    return latent_frames_of(video_frames(seconds, fps), time_stride)


def span_latent_frames(seconds: float, fps: float, time_stride: int = TIME_STRIDE) -> int:
    """Latent frames a span of ``seconds`` inside a video covers (every latent frame after the first
    covers ``time_stride`` frames): a 1-second section at 16 fps is 4 latent frames, at least 1."""
    return max(1, math.floor(seconds * fps / time_stride + 0.5))


def seconds_per_latent_frame(fps: float, time_stride: int = TIME_STRIDE, frame_stride: int = 1) -> float:
    """Seconds one latent frame spans in a clip sampled every ``frame_stride`` frames of a video at ``fps``."""
    return time_stride * frame_stride / fps


def check_size(width: int, height: int, spatial: int, patch: int = 2) -> tuple[int, int]:
    """(latent height, latent width) of a ``width`` x ``height`` video, or one sentence naming the size to use."""
    step = spatial * patch
    for name, value in (("width", width), ("height", height)):
        if value < step:
            raise ValueError(
                f"{name} {value} is too small; use a positive multiple of {step} "
                f"(VAE x{spatial} times DiT patch x{patch})."
            )
        if value % step:
            raise ValueError(
                f"{name} {value} is not a multiple of {step} (VAE x{spatial} times DiT patch x{patch}); "
                f"use {max(step, value // step * step)} or {(value // step + 1) * step}."
            )
    return height // spatial, width // spatial
