"""Decoding a long latent video in bounded memory: chunks of latent frames with a causal warm-up.

The Wan / Hunyuan VAEs are causal in time: latent frame 0 decodes to one frame, every later
latent frame to ``stride`` frames, and each frame depends on a few frames before it. A chunk
[a, b) is decoded together with ``warmup`` latent frames before it and the frames those produce
are dropped, so chunk seams see (almost) the same past as a full decode. A chunk after the first
always gets at least one warm-up frame: the VAE decodes the first latent frame of a call to a
single frame (a video start), so without one the chunk would lose ``stride - 1`` frames. How close is measured in
tests/nodes/test_decode_nodes.py; a larger warm-up is closer and slower.

ComfyUI's Wan 2.1 VAE needs no warm-up: the node lets the host's own decode carry its causal cache through the
whole video and cuts the frames at this plan's chunk ends (``warmup=0``), which is exact.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Chunk:
    decode_start: int  # first latent frame given to the VAE (warm-up included)
    start: int  # first latent frame whose pixels are kept
    end: int  # exclusive
    skip: int  # decoded pixel frames to drop from the front (the warm-up's)


def chunk_plan(latent_frames: int, chunk: int, warmup: int = 2, stride: int = 4) -> list[Chunk]:
    """Chunks covering [0, latent_frames); decoding each and dropping ``skip`` frames rebuilds the video."""
    if latent_frames < 1:
        raise ValueError(f"the latent has {latent_frames} frames; there is nothing to decode.")
    if chunk < 1:
        raise ValueError(f"chunk size must be at least 1 latent frame, got {chunk}.")
    if warmup < 0:
        raise ValueError(f"warm-up must be 0 or more latent frames, got {warmup}.")
    plan = []
    for start in range(0, latent_frames, chunk):
        begin = max(0, start - max(1, warmup))
        w = start - begin
        skip = 0 if w == 0 else 1 + stride * (w - 1)
        plan.append(Chunk(begin, start, min(start + chunk, latent_frames), skip))
    return plan


def pixel_frames(latent_frames: int, stride: int = 4) -> int:
    return 0 if latent_frames <= 0 else 1 + stride * (latent_frames - 1)
