"""Small line charts drawn with Pillow: the training loss curve and the drift report's panels.

A ``Canvas`` is the image; an ``Axes`` is one plot area on it that maps data to pixels and draws
its frame, value labels, shaded spans, vertical markers and line series. Both charts of the pack
go through these, so they share one look and one way of skipping non-finite points.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

Colour = tuple[int, int, int]
BLACK: Colour = (0, 0, 0)
LABEL_X = 4  # value labels sit in the left margin


def value_range(values: Iterable[float], flat_pad: float | None = None) -> tuple[float, float]:
    """(lo, hi) of the finite values; (0, 1) when there are none.

    A flat series is widened so it draws mid-height: by ``flat_pad`` on each side, or (None) by half
    its own magnitude, which keeps tiny values such as SSIM differences readable.
    """
    v = np.asarray(list(values), dtype=np.float64)
    finite = v[np.isfinite(v)]
    if not finite.size:
        return 0.0, 1.0
    lo, hi = float(finite.min()), float(finite.max())
    if hi - lo < 1e-12:
        if flat_pad is None:
            return lo - 0.5 * max(abs(lo), 1e-6), hi + 0.5 * max(abs(hi), 1e-6)
        return lo - flat_pad, hi + flat_pad
    return lo, hi


class Canvas:
    """An RGB image with a drawing context and the default font."""

    def __init__(self, width: int, height: int, background: str | Colour = "white"):
        self.image = Image.new("RGB", (width, height), background)
        self.draw = ImageDraw.Draw(self.image)
        self.font = ImageFont.load_default()

    def text(self, xy: tuple[float, float], text: str, colour: Colour = BLACK) -> None:
        self.draw.text(xy, text, fill=colour, font=self.font)

    def axes(
        self, box: tuple[float, float, float, float], x_range: tuple[float, float], y_range: tuple[float, float]
    ) -> "Axes":
        """A plot area ``box`` = (left, top, right, bottom) in pixels showing ``x_range`` by ``y_range``."""
        return Axes(self, box, x_range, y_range)


class Axes:
    """One plot area: data coordinates to pixels (y grows upwards) and the marks drawn in it."""

    def __init__(
        self,
        canvas: Canvas,
        box: tuple[float, float, float, float],
        x_range: tuple[float, float],
        y_range: tuple[float, float],
    ):
        self.canvas = canvas
        self.left, self.top, self.right, self.bottom = box
        self.x_lo, self.x_hi = x_range
        self.y_lo, self.y_hi = y_range
        if not self.x_hi > self.x_lo or not self.y_hi > self.y_lo:
            raise ValueError(
                f"chart ranges x {x_range} and y {y_range} must each run from low to high; "
                "widen a flat range first (value_range does)."
            )

    def x(self, v: float) -> float:
        return self.left + (self.right - self.left) * ((v - self.x_lo) / (self.x_hi - self.x_lo))

    def y(self, v: float) -> float:
        return self.bottom - (self.bottom - self.top) * (v - self.y_lo) / (self.y_hi - self.y_lo)

    def frame(self, colour: Colour = BLACK) -> None:
        self.canvas.draw.rectangle([self.left, self.top, self.right, self.bottom], outline=colour)

    def span(self, x_from: float, x_to: float, fill: Colour) -> None:
        """Shade the full height between two x values."""
        self.canvas.draw.rectangle([self.x(x_from), self.top, self.x(x_to), self.bottom], fill=fill)

    def vline(self, x: float, colour: Colour, width: int = 1) -> None:
        px = self.x(x)
        self.canvas.draw.line([(px, self.top), (px, self.bottom)], fill=colour, width=width)

    def series(
        self, ys: Sequence[float], colour: Colour, width: int = 1, xs: Sequence[float] | None = None, dot: bool = True
    ) -> None:
        """A line through the finite points (x defaults to the index); a lone point is a dot when ``dot``."""
        xs = range(len(ys)) if xs is None else xs
        pts = [(self.x(x), self.y(float(y))) for x, y in zip(xs, ys) if math.isfinite(float(y))]
        if len(pts) > 1:
            self.canvas.draw.line(pts, fill=colour, width=width)
        elif pts and dot:
            ((px, py),) = pts
            self.canvas.draw.ellipse([px - 2, py - 2, px + 2, py + 2], fill=colour)

    def value_labels(self, fmt: Callable[[float], str] = lambda v: f"{v:.4g}") -> None:
        """The top and bottom values of the y range, in the left margin."""
        self.canvas.text((LABEL_X, self.top), fmt(self.y_hi))
        self.canvas.text((LABEL_X, self.bottom - 10), fmt(self.y_lo))

    def x_labels(self, ticks: Iterable[tuple[float, str]], y: float, room: int = 30) -> None:
        """Labels at data x values on pixel row ``y``, kept ``room`` pixels inside the right edge."""
        for value, label in ticks:
            self.canvas.text((min(self.x(value), self.right - room), y), label)
