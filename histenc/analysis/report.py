"""Drift report: per-frame metrics over time as a PNG plot and a text table.

The plot has one panel per measure (clarity, colour mean, colour std, AF, and PSNR/SSIM when a
reference is given), section boundaries as vertical orange lines, and the first and last 15 % of
the video shaded: the two parts whose difference is the drift contrast Delta. The table gives
each measure's mean, its start and end means and Delta, then the mean of every measure per section,
so drift can be traced to the section where it starts. Drawn with Pillow (histenc.analysis.chart).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from .chart import Canvas, value_range
from .metrics import DRIFT_FRACTION, edge_count, frame_metrics

# (panel title, series names) in drawing order; a panel is drawn when any of its series exists.
PANELS = (
    ("clarity (Laplacian variance)", ("clarity",)),
    ("colour mean", ("mean_r", "mean_g", "mean_b", "mean_l")),
    ("colour std", ("std_r", "std_g", "std_b", "std_l")),
    ("AF (cycles/pixel)", ("af",)),
    ("PSNR vs reference (dB)", ("psnr",)),
    ("SSIM vs reference", ("ssim",)),
)
SERIES_COLOURS = {"r": (214, 39, 40), "g": (44, 160, 44), "b": (31, 119, 180)}
DEFAULT_COLOUR = (40, 40, 40)
BOUNDARY_COLOUR = (255, 127, 14)
SHADE_COLOUR = (232, 232, 232)
LEFT, RIGHT, TITLE, AXIS = 64, 12, 18, 20


@dataclass
class DriftReport:
    """Per-frame series, section starts, the rendered plot and the text table."""

    metrics: dict[str, torch.Tensor]
    section_starts: list[int]
    image: Image.Image
    table: str
    fps: float = 0.0
    drift: dict[str, float] = field(default_factory=dict)

    def image_tensor(self) -> torch.Tensor:
        """The plot as a ComfyUI IMAGE batch [1, H, W, 3] in 0..1."""
        return torch.from_numpy(np.asarray(self.image.convert("RGB"), dtype=np.float32) / 255.0)[None]


def section_starts_every(frames: int, section_frames: int, first_section_frames: int | None = None) -> list[int]:
    """Start frame of every section when sections have a fixed length (the first may differ)."""
    if section_frames < 1:
        raise ValueError(f"section_frames = {section_frames} must be at least 1 frame.")
    first = section_frames if first_section_frames is None else first_section_frames
    if first < 1:
        raise ValueError(f"first_section_frames = {first} must be at least 1 frame.")
    starts, s = [0], first
    while s < frames:
        starts.append(s)
        s += section_frames
    return starts


def section_starts_from_latent(frames: int, latent_section_frames: int, time_stride: int = 4) -> list[int]:
    """Section starts in video frames for sections of L latent frames (Wan/Hunyuan VAE, stride 4).

    The first latent frame decodes to one video frame and every later one to ``time_stride``, so the
    first section has stride * (L - 1) + 1 video frames and the others stride * L.
    """
    if latent_section_frames < 1 or time_stride < 1:
        raise ValueError(
            f"latent section length {latent_section_frames} and time stride {time_stride} must both be at least 1."
        )
    return section_starts_every(
        frames, time_stride * latent_section_frames, time_stride * (latent_section_frames - 1) + 1
    )


def _check_starts(starts: Sequence[int], frames: int) -> list[int]:
    out = sorted({int(s) for s in starts} | {0})
    if out[-1] >= frames:
        raise ValueError(f"section start {out[-1]} is past the last frame ({frames - 1}); pass starts below {frames}.")
    if out[0] < 0:
        raise ValueError(f"section start {out[0]} is negative; section starts are frame indices from 0.")
    return out


def _fmt(v: float) -> str:
    if not math.isfinite(v):
        return "inf" if v > 0 else ("-inf" if v < 0 else "nan")
    return f"{v:.4g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.3e}"


def _finite_mean(v: torch.Tensor) -> float:
    finite = v[torch.isfinite(v)]
    return float(finite.double().mean()) if finite.numel() else float(v.double().mean())


def _grid(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), rule] + [line(r) for r in rows])


def drift_table(
    metrics: dict[str, torch.Tensor], section_starts: Sequence[int] = (0,), fraction: float = DRIFT_FRACTION
) -> tuple[str, dict[str, float]]:
    """Text table (one row per measure, then one row per section) and Delta per measure."""
    frames = next(iter(metrics.values())).shape[0]
    n = edge_count(frames, fraction)
    pct = f"{fraction * 100:g}%"
    rows, drift = [], {}
    for name, v in metrics.items():
        # Identical frames give infinite PSNR; like the mean column, start and end skip them.
        start, end = _finite_mean(v[:n]), _finite_mean(v[-n:])
        delta = abs(start - end) if math.isfinite(start) and math.isfinite(end) else float("nan")
        drift[name] = delta
        rows.append([name, _fmt(_finite_mean(v)), _fmt(start), _fmt(end), _fmt(delta)])
    header = ["metric", "mean", f"first {pct} ({n} fr)", f"last {pct} ({n} fr)", "drift delta"]
    text = _grid(header, rows)
    starts = _check_starts(section_starts, frames)
    bounds = starts + [frames]
    sec_rows = [
        [str(k), f"{bounds[k]}-{bounds[k + 1] - 1}"]
        + [_fmt(_finite_mean(v[bounds[k] : bounds[k + 1]])) for v in metrics.values()]
        for k in range(len(starts))
    ]
    text += "\n\n" + _grid(["section", "frames"] + list(metrics), sec_rows)
    broken = int(torch.stack([v.isnan() for v in metrics.values()]).any(dim=0).sum())
    if broken:
        text += (
            f"\n\nwarning: {broken} of {frames} frames give NaN measures (NaN or inf pixels in the input); "
            "rows that include them read nan."
        )
    return text, drift


def _series_colour(name: str) -> tuple[int, int, int]:
    return SERIES_COLOURS.get(name.rsplit("_", 1)[-1], DEFAULT_COLOUR) if "_" in name else DEFAULT_COLOUR


def render_plot(
    metrics: dict[str, torch.Tensor],
    section_starts: Sequence[int] = (0,),
    fps: float = 0.0,
    width: int = 960,
    panel_height: int = 150,
    fraction: float = DRIFT_FRACTION,
    drift: dict[str, float] | None = None,
) -> Image.Image:
    """One panel per measure over time; image size is width x (panels * panel_height + AXIS)."""
    if width < LEFT + RIGHT + 32 or panel_height < TITLE + 24:
        raise ValueError(
            f"plot size {width}x{panel_height} per panel is too small; use width >= 108, panel_height >= 42."
        )
    panels = [(title, [s for s in names if s in metrics]) for title, names in PANELS]
    panels = [(title, names) for title, names in panels if names]
    if not panels:
        raise ValueError(f"no plottable measure among {sorted(metrics)}; pass the output of frame_metrics.")
    frames = next(iter(metrics.values())).shape[0]
    starts = _check_starts(section_starts, frames)
    canvas = Canvas(width, len(panels) * panel_height + AXIS)
    x_range = (0, max(frames - 1, 1))
    n = edge_count(frames, fraction)
    for p, (title, names) in enumerate(panels):
        box = (LEFT, p * panel_height + TITLE, width - RIGHT, (p + 1) * panel_height - 6)
        values = [metrics[s].double().numpy() for s in names]
        axes = canvas.axes(box, x_range, value_range(np.concatenate(values)))
        axes.span(0, n - 1, SHADE_COLOUR)
        axes.span(frames - n, frames - 1, SHADE_COLOUR)
        for s in starts[1:]:
            axes.vline(s - 0.5, BOUNDARY_COLOUR)
        for name, v in zip(names, values):
            axes.series(v, _series_colour(name), width=2)
        axes.frame()
        deltas = "  ".join(f"{s}: {_fmt(drift[s])}" for s in names if drift and s in drift)
        canvas.text((LEFT, p * panel_height + 3), f"{title}   drift delta  {deltas}")
        axes.value_labels(_fmt)
    axis_y = len(panels) * panel_height + 4
    ticks = 6
    labels = []
    for k in range(ticks + 1):
        f = (frames - 1) * k / ticks
        labels.append((f, f"{f / fps:.1f}s" if fps > 0 else f"{f:.0f}"))
    axes.x_labels(labels, axis_y)
    canvas.text((4, axis_y), "time" if fps > 0 else "frame")
    return canvas.image


def report_from_metrics(
    metrics: dict[str, torch.Tensor],
    section_starts: Sequence[int] = (0,),
    fps: float = 0.0,
    width: int = 960,
    panel_height: int = 150,
    fraction: float = DRIFT_FRACTION,
) -> DriftReport:
    """Plot and table for per-frame series already computed (the CLI streams them from a file)."""
    if not metrics or any(v.ndim != 1 for v in metrics.values()):
        raise ValueError("metrics must be a non-empty mapping of per-frame [T] series; pass frame_metrics(frames).")
    frames = {v.shape[0] for v in metrics.values()}
    if len(frames) != 1:
        raise ValueError(f"all per-frame series must have the same length, got lengths {sorted(frames)}.")
    starts = _check_starts(section_starts, frames.pop())
    table, drift = drift_table(metrics, starts, fraction)
    image = render_plot(metrics, starts, fps, width, panel_height, fraction, drift)
    return DriftReport(metrics=metrics, section_starts=starts, image=image, table=table, fps=fps, drift=drift)


def build_report(
    frames: torch.Tensor,
    section_starts: Sequence[int] = (0,),
    fps: float = 0.0,
    reference: torch.Tensor | None = None,
    width: int = 960,
    panel_height: int = 150,
    fraction: float = DRIFT_FRACTION,
) -> DriftReport:
    """Drift report of IMAGE frames [T, H, W, 3] in 0..1, optionally against reference frames."""
    return report_from_metrics(frame_metrics(frames, reference), section_starts, fps, width, panel_height, fraction)
