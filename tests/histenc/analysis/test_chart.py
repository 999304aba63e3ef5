"""The shared chart module: value ranges, data-to-pixel maps, line series that skip non-finite points."""

import math

import numpy as np
import pytest

from histenc.analysis.chart import Canvas, value_range
from histenc.train.loop import render_loss_plot

RED, BLUE = (200, 0, 0), (0, 0, 200)


def pixels_of(canvas: Canvas, colour) -> np.ndarray:
    """(row, column) of every pixel drawn in ``colour``."""
    return np.argwhere((np.asarray(canvas.image) == colour).all(axis=-1))


def test_value_range_skips_non_finite_values_and_widens_flat_series():
    assert value_range([3.0, float("nan"), -1.0, float("inf")]) == (-1.0, 3.0)
    assert value_range([]) == (0.0, 1.0) == value_range([float("nan")])
    assert value_range([2.0, 2.0], flat_pad=0.5) == (1.5, 2.5)
    assert value_range([0.8, 0.8]) == pytest.approx((0.4, 1.2))  # by half its own size when no pad is given
    lo, hi = value_range([0.0])
    assert lo < 0.0 < hi and hi - lo < 1e-5


def test_axes_map_the_ranges_onto_the_box_with_y_up():
    axes = Canvas(100, 60).axes((10, 5, 90, 45), (0, 8), (-1.0, 1.0))
    assert (axes.x(0), axes.x(8), axes.x(4)) == (10, 90, 50)
    assert (axes.y(-1.0), axes.y(1.0), axes.y(0.0)) == (45, 5, 25)
    with pytest.raises(ValueError, match="must each run from low to high"):
        Canvas(100, 60).axes((10, 5, 90, 45), (0, 8), (1.0, 1.0))


def test_series_breaks_nothing_on_non_finite_points_and_draws_a_lone_point_as_a_dot():
    canvas = Canvas(100, 60)
    axes = canvas.axes((10, 5, 90, 45), (0, 4), (0.0, 1.0))
    axes.series([0.0, float("nan"), 0.5, math.inf, 1.0], RED)
    drawn = pixels_of(canvas, RED)
    assert drawn[:, 1].min() == 10 and drawn[:, 1].max() == 90  # from the first to the last finite point
    assert drawn[:, 0].min() == 5 and drawn[:, 0].max() == 45

    alone = Canvas(100, 60)
    alone.axes((10, 5, 90, 45), (0, 4), (0.0, 1.0)).series([float("nan"), 0.5], BLUE, dot=False)
    assert len(pixels_of(alone, BLUE)) == 0
    alone.axes((10, 5, 90, 45), (0, 4), (0.0, 1.0)).series([float("nan"), 0.5], BLUE)
    rows, cols = pixels_of(alone, BLUE).T
    assert abs(rows.mean() - 25) <= 1 and abs(cols.mean() - 30) <= 1  # a dot at x = 1, y = 0.5


def test_span_frame_and_labels_stay_inside_their_places():
    canvas = Canvas(120, 60)
    axes = canvas.axes((40, 10, 110, 50), (0, 10), (0.0, 2.0))
    axes.span(0, 5, BLUE)
    shaded = pixels_of(canvas, BLUE)
    assert shaded[:, 1].min() == 40 and shaded[:, 1].max() == 75 and shaded[:, 0].max() == 50
    axes.frame(RED)
    axes.value_labels()
    frame = pixels_of(canvas, RED)
    assert {frame[:, 1].min(), frame[:, 1].max(), frame[:, 0].min(), frame[:, 0].max()} == {40, 110, 10, 50}
    text = np.argwhere(np.asarray(canvas.image)[:, :40].min(axis=-1) < 128)
    assert text.size and text[:, 0].min() >= 10  # the value labels sit in the left margin, from the top row down


def test_the_loss_plot_draws_the_curve_and_its_running_mean():
    losses = [2.0 / (1 + i) for i in range(40)]
    img = np.asarray(render_loss_plot(losses))
    assert img.shape == (320, 640, 3)
    mean_line = np.argwhere((img == (20, 60, 160)).all(axis=-1))
    assert mean_line[:, 1].min() <= 66 and mean_line[:, 1].max() >= 622  # spans the plot from step 1 to 40
    assert mean_line[mean_line[:, 1].argmin(), 0] < mean_line[mean_line[:, 1].argmax(), 0]  # falls to the right
    empty = np.asarray(render_loss_plot([float("nan")]))
    assert not (empty == (20, 60, 160)).all(axis=-1).any()
