"""Detail-rich procedural videos whose detail persists: the data of the encoder ranking benchmark.

Flat-coloured shapes (histenc.train.procedural) hold almost nothing a low-resolution copy loses, so
an encoder ranking on them measures little. Here every pixel carries detail that stays over time:

* a static background: a colour ramp, two sinusoidal gratings and a fixed per-pixel texture;
* sprites with their own per-pixel texture (a random palette pattern) that keep it, with a small
  wander around a home position, leaving and coming back in rounds (every sprite is seen at least
  twice with other content in between), so a returning sprite is predictable only from memory.

Videos are deterministic per seed; train, validation and test sets are disjoint seed ranges.
``TexturedLatents`` is the VAE stand-in: the fixed, exactly invertible ``PixelLatents`` map with this
data's pixel statistics (2x2 pixels x RGB = 12 values into Wan's 16 channels, nothing lost).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from histenc.train.toy_dit import PixelLatents

NONE = -1


@dataclass(frozen=True)
class TexturedVideo:
    frames: torch.Tensor  # [T, H, W, 3] in 0..1
    visible: torch.Tensor  # [T, objects] bool: which sprites are shown in each frame
    homes: torch.Tensor  # [objects, 2] top-left (y, x) of each sprite's home
    sprite: int  # sprite size in pixels
    seed: int


class TexturedLatents(PixelLatents):
    """PixelLatents with this data's pixel mean and spread, so latents come out near unit scale."""

    MEAN, STD = 0.45, 0.16

    def __init__(self, seed: int = 0):
        super().__init__(16, seed=seed)


def _background(size: int, g: torch.Generator) -> torch.Tensor:
    axis = torch.arange(size, dtype=torch.float32)
    ys, xs = torch.meshgrid(axis, axis, indexing="ij")
    base = 0.25 + 0.4 * torch.rand(3, generator=g)
    ramp = 0.15 * (torch.rand(3, generator=g) - 0.5)
    img = base.view(3, 1, 1) + ramp.view(3, 1, 1) * (ys + xs) / size
    for _ in range(2):  # gratings of 2..5 cycles per frame, each with its own colour
        fy, fx = (torch.randint(-5, 6, (2,), generator=g)).float().tolist()
        fy, fx = (fy, fx) if (fy, fx) != (0.0, 0.0) else (3.0, 2.0)
        phase = float(torch.rand(1, generator=g)) * 2 * math.pi
        colour = 0.12 * (torch.rand(3, generator=g) - 0.5) * 2
        img = img + colour.view(3, 1, 1) * torch.sin(2 * math.pi * (fy * ys + fx * xs) / size + phase)
    img = img + 0.07 * (torch.rand(3, size, size, generator=g) - 0.5) * 2  # fixed per-pixel texture
    return img.permute(1, 2, 0)


def _sprite(size: int, g: torch.Generator) -> torch.Tensor:
    palette = torch.rand(3, 3, generator=g) * 0.9 + 0.05
    pattern = torch.randint(0, 3, (size, size), generator=g)
    return palette[pattern]  # [size, size, 3]


def _timeline(frames: int, objects: int, visit: tuple[int, int], gap: tuple[int, int], g) -> torch.Tensor:
    """Visits in rounds: each sprite once per round in shuffled order, never the same twice in a row."""
    visible = torch.zeros(frames, objects, dtype=torch.bool)
    t, last = 0, NONE
    while t < frames:
        order = torch.randperm(objects, generator=g).tolist()
        if order[0] == last and objects > 1:
            order = order[1:] + order[:1]
        for k in order:
            t += int(torch.randint(gap[0], gap[1] + 1, (1,), generator=g))
            length = int(torch.randint(visit[0], visit[1] + 1, (1,), generator=g))
            visible[t : t + length, k] = True
            t, last = t + length, k
            if t >= frames:
                break
    return visible


def generate(
    seed: int,
    frames: int = 32,
    size: int = 16,
    objects: int = 3,
    sprite: int = 6,
    visit: tuple[int, int] = (3, 6),
    gap: tuple[int, int] = (0, 2),
) -> TexturedVideo:
    if size < sprite + 4:
        raise ValueError(
            f"textured video size {size} is too small for {sprite}-pixel sprites; use at least {sprite + 4}."
        )
    g = torch.Generator().manual_seed(int(seed))
    background = _background(size, g)
    sprites = [_sprite(sprite, g) for _ in range(objects)]
    homes = torch.randint(1, size - sprite - 1, (objects, 2), generator=g)
    phases = torch.rand(objects, generator=g) * 2 * math.pi
    visible = _timeline(frames, objects, visit, gap, g)
    out = background.expand(frames, size, size, 3).clone()
    for t in range(frames):
        for k in range(objects):
            if not visible[t, k]:
                continue
            dy = round(math.sin(0.6 * t + float(phases[k])))  # a one-pixel wander: frames are never static
            dx = round(math.cos(0.4 * t + float(phases[k])))
            y = int(homes[k, 0]) + dy
            x = int(homes[k, 1]) + dx
            out[t, y : y + sprite, x : x + sprite] = sprites[k]
    return TexturedVideo(out.clamp(0, 1), visible, homes, sprite, int(seed))


def generate_set(count: int, seed: int, **kwargs) -> list[TexturedVideo]:
    return [generate(seed + i, **kwargs) for i in range(count)]
