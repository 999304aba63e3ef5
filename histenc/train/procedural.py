"""Procedural long-memory videos: objects appear, leave, and come back later.

A model that only sees the last few frames cannot know what a returning object looks like; one
that remembers the past can. Every object is shown at least twice with other content in between,
and keeps its colour, shape and home position on each return, so the second visit is predictable
from the first. Videos are deterministic per seed (training sets and held-out sets are just
different seeds) and come with the ground truth of which object is visible in every frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

SHAPES = ("square", "disc", "diamond", "cross", "ring")
PALETTE = (  # well separated hues, so identity is visible even at 32x32
    (0.95, 0.20, 0.15),
    (0.15, 0.55, 0.95),
    (0.20, 0.85, 0.25),
    (0.95, 0.85, 0.10),
    (0.80, 0.25, 0.90),
    (0.10, 0.90, 0.85),
    (1.00, 0.55, 0.10),
    (0.95, 0.95, 0.95),
)
NONE = -1


@dataclass(frozen=True)
class ProceduralObject:
    colour: tuple[float, float, float]
    shape: str
    centre: tuple[float, float]  # home position (y, x) in pixels
    radius: float

    def describe(self, names=("red", "blue", "green", "yellow", "purple", "cyan", "orange", "white")) -> str:
        return f"{names[PALETTE.index(self.colour)]} {self.shape}"


@dataclass
class ProceduralVideo:
    frames: torch.Tensor  # [T, H, W, 3] float in [0, 1]
    visible: torch.Tensor  # [T] long: index into objects, or -1 when only the background shows
    objects: list[ProceduralObject]
    seed: int

    @property
    def caption(self) -> str:
        return "objects that come and go: " + ", ".join(o.describe() for o in self.objects)

    def visits(self) -> list[tuple[int, int, int]]:
        """(object, first frame, end frame) of every contiguous visit, in time order."""
        out, v = [], self.visible.tolist()
        start = 0
        for i in range(1, len(v) + 1):
            if i == len(v) or v[i] != v[start]:
                if v[start] != NONE:
                    out.append((v[start], start, i))
                start = i
        return out


def _timeline(
    frames: int, objects: int, visit: tuple[int, int], gap: tuple[int, int], g: torch.Generator
) -> torch.Tensor:
    """Visits in rounds (every object once per round, shuffled, never the same twice in a row) with gaps."""
    need = 2 * objects * (visit[1] + gap[1])  # two full rounds even at the longest draws
    if frames < need:
        raise ValueError(
            f"procedural video of {frames} frames is too short for {objects} objects to appear twice "
            f"(needs at least {need}); use more frames, fewer objects or shorter visits."
        )
    visible = torch.full((frames,), NONE, dtype=torch.long)
    t, last = 0, NONE
    while t < frames:
        order = torch.randperm(objects, generator=g).tolist()
        if order[0] == last and objects > 1:
            order = order[1:] + order[:1]
        for obj in order:
            t += int(torch.randint(gap[0], gap[1] + 1, (1,), generator=g))
            length = int(torch.randint(visit[0], visit[1] + 1, (1,), generator=g))
            visible[t : t + length] = obj
            t, last = t + length, obj
            if t >= frames:
                break
    return visible


def _background(size: int, g: torch.Generator) -> torch.Tensor:
    coarse = torch.rand(1, 3, 4, 4, generator=g) * 0.3 + 0.15
    return F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=True)[0].clamp(0, 1).permute(1, 2, 0)


def _mask(shape: str, dy: torch.Tensor, dx: torch.Tensor, r: float) -> torch.Tensor:
    if shape == "square":
        return (dy.abs() <= r * 0.8) & (dx.abs() <= r * 0.8)
    if shape == "disc":
        return dy**2 + dx**2 <= r**2
    if shape == "diamond":
        return dy.abs() + dx.abs() <= r
    if shape == "cross":
        return ((dy.abs() <= r * 0.3) & (dx.abs() <= r)) | ((dx.abs() <= r * 0.3) & (dy.abs() <= r))
    d = (dy**2 + dx**2).sqrt()
    return (d <= r) & (d >= r * 0.55)


def generate(
    seed: int = 0,
    frames: int = 64,
    size: int = 32,
    objects: int = 3,
    visit: tuple[int, int] = (4, 7),
    gap: tuple[int, int] = (1, 3),
) -> ProceduralVideo:
    """One deterministic video of ``frames`` frames at ``size`` x ``size`` with ``objects`` recurring objects."""
    if not 1 <= objects <= len(PALETTE):
        raise ValueError(f"procedural objects is {objects}; use 1 to {len(PALETTE)}.")
    if size < 8:
        raise ValueError(f"procedural size is {size}; use at least 8 pixels.")
    if not (1 <= visit[0] <= visit[1] and 0 <= gap[0] <= gap[1]):
        raise ValueError(
            f"procedural visit {visit} / gap {gap} must be (min, max) with 1 <= visit min and 0 <= gap min."
        )
    g = torch.Generator().manual_seed(int(seed))
    colours = torch.randperm(len(PALETTE), generator=g)[:objects].tolist()
    shapes = torch.randperm(len(SHAPES), generator=g).tolist()
    objs = []
    for i in range(objects):
        r = size * (0.14 + 0.08 * float(torch.rand(1, generator=g)))
        cy, cx = (r + (size - 2 * r) * torch.rand(2, generator=g)).tolist()
        objs.append(ProceduralObject(PALETTE[colours[i]], SHAPES[shapes[i % len(SHAPES)]], (cy, cx), r))
    visible = _timeline(frames, objects, visit, gap, g)
    background = _background(size, g)
    phase = torch.rand(objects, generator=g) * 6.283
    axis = torch.arange(size, dtype=torch.float32)
    ys, xs = torch.meshgrid(axis, axis, indexing="ij")
    out = background.expand(frames, size, size, 3).clone()
    for t in range(frames):
        k = int(visible[t])
        if k == NONE:
            continue
        o = objs[k]
        wobble = 0.06 * size * torch.sin(torch.tensor(0.5 * t) + phase[k])  # small drift, so frames are not static
        m = _mask(o.shape, ys - o.centre[0], xs - (o.centre[1] + float(wobble)), o.radius)
        out[t][m] = torch.tensor(o.colour)
    return ProceduralVideo(out, visible, objs, int(seed))


def generate_set(count: int, seed: int = 0, **kwargs) -> list[ProceduralVideo]:
    """``count`` videos with seeds seed, seed + 1, ...; keep training and held-out seed ranges apart."""
    return [generate(seed + i, **kwargs) for i in range(count)]


def write_image_sequence(video: ProceduralVideo, folder: str | Path) -> Path:
    """PNG frames in ``folder`` plus a caption sidecar ``folder.txt``: the dataset builder's input layout."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pixels = (video.frames * 255).round().clamp(0, 255).to(torch.uint8).numpy()
    for t, frame in enumerate(pixels):
        Image.fromarray(frame).save(folder / f"{t:05d}.png")
    folder.with_suffix(".txt").write_text(video.caption + "\n")
    return folder
