"""Drift report: plot size and boundaries, table rows and numbers, and the video command line."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from histenc.analysis.cli_report import main as cli_main
from histenc.analysis.metrics import drift_contrast, frame_metrics
from histenc.analysis.report import (
    AXIS,
    BOUNDARY_COLOUR,
    LEFT,
    RIGHT,
    build_report,
    render_plot,
    section_starts_every,
    section_starts_from_latent,
)

METRIC_ROWS = ["clarity", "mean_r", "mean_g", "mean_b", "std_r", "std_g", "std_b", "af"]


def drifting_frames(t: int = 40, size: int = 16, seed: int = 0) -> torch.Tensor:
    """Textured frames whose brightness rises linearly over time."""
    g = torch.Generator().manual_seed(seed)
    texture = torch.rand(1, size, size, 3, generator=g) * 0.2
    ramp = torch.linspace(0.1, 0.7, t).view(t, 1, 1, 1)
    return (texture + ramp).clamp(0, 1)


def table_rows(table: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines() if line.startswith("| ")]


def test_report_image_size_and_table_rows():
    frames = drifting_frames()
    report = build_report(frames, section_starts=[0, 13, 26], fps=8.0, width=400, panel_height=100)
    assert report.image.size == (400, 4 * 100 + AXIS)  # clarity, colour mean, colour std, AF
    assert report.image_tensor().shape == (1, 4 * 100 + AXIS, 400, 3)
    rows = table_rows(report.table)
    assert rows[0][:2] == ["metric", "mean"]
    assert [r[0] for r in rows[1:9]] == METRIC_ROWS
    assert rows[9][:2] == ["section", "frames"] and rows[9][2:] == METRIC_ROWS
    assert [r[1] for r in rows[10:]] == ["0-12", "13-25", "26-39"]
    expected = float(drift_contrast(frame_metrics(frames)["mean_r"]))
    assert report.drift["mean_r"] == pytest.approx(expected, rel=1e-6)
    assert float(rows[2][4]) == pytest.approx(expected, rel=1e-3)
    assert expected == pytest.approx(0.6 * (36.5 - 2.5) / 39, abs=1e-5)  # 6 frames at each end


def test_reference_adds_psnr_and_ssim_panels(tmp_path):
    frames = drifting_frames(t=12)
    report = build_report(frames, reference=frames.flip(0), width=300, panel_height=80)
    assert report.image.size == (300, 6 * 80 + AXIS)
    assert [r[0] for r in table_rows(report.table)[1:11]] == METRIC_ROWS + ["psnr", "ssim"]
    path = tmp_path / "report.png"
    report.image.save(path)
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size == (300, 6 * 80 + AXIS)


def test_section_boundaries_are_drawn_where_sections_start():
    metrics = {"clarity": torch.zeros(41)}
    img = np.asarray(render_plot(metrics, section_starts=[0, 20], width=400, panel_height=100))
    x = round(LEFT + (400 - RIGHT - LEFT) * (19.5 / 40))
    column = img[30:90, x - 1 : x + 2].reshape(-1, 3)
    assert (column == BOUNDARY_COLOUR).all(axis=1).sum() >= 40
    plain = np.asarray(render_plot(metrics, section_starts=[0], width=400, panel_height=100))
    assert not (plain[30:90, x - 1 : x + 2].reshape(-1, 3) == BOUNDARY_COLOUR).all(axis=1).any()


def test_section_starts_and_errors():
    assert section_starts_every(100, 30) == [0, 30, 60, 90]
    assert section_starts_every(100, 30, first_section_frames=31) == [0, 31, 61, 91]
    with pytest.raises(ValueError, match="past the last frame"):
        build_report(drifting_frames(t=10), section_starts=[0, 10])
    with pytest.raises(ValueError, match="at least 1"):
        section_starts_every(10, 0)


def write_video(path, frames: torch.Tensor, fps: int = 8) -> None:
    import av

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("ffv1", rate=fps)  # lossless, so decoded frames equal the input
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "bgr0"
        for f in (frames * 255).round().to(torch.uint8).numpy():
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_cli_writes_the_same_report_for_a_video_file(tmp_path):
    frames = (drifting_frames(t=20, size=32) * 255).round() / 255
    video = tmp_path / "clip.mkv"
    write_video(video, frames)
    out, table = tmp_path / "r.png", tmp_path / "r.txt"
    code = cli_main([str(video), "--out", str(out), "--table", str(table), "--section-frames", "8", "--width", "320"])
    assert code == 0
    with Image.open(out) as img:
        assert img.size == (320, 4 * 150 + AXIS)
    text = table.read_text()
    direct = build_report(frames, section_starts=[0, 8, 16], fps=8.0)
    assert table_rows(text) == table_rows(direct.table)


def test_cli_reports_a_missing_file(tmp_path, capsys):
    assert cli_main([str(tmp_path / "none.mp4")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_latent_sections_agree_with_the_section_schedule():
    from histenc.longvideo.storyboard import schedule_sections

    for seconds, fps, latent in [(10.0, 16.0, 9), (3.0, 24.0, 4), (2.0, 16.0, 1)]:
        schedule = schedule_sections(seconds, fps, latent, time_stride=4)
        expected = [s.pixel_start for s in schedule.sections if s.pixel_start < schedule.frames]
        assert section_starts_from_latent(schedule.frames, latent) == expected


def test_frames_with_nan_pixels_are_flagged():
    frames = drifting_frames(t=10)
    frames[3, 2, 2, 0] = float("nan")
    report = build_report(frames)
    assert "warning: 1 of 10 frames give NaN measures" in report.table
    assert "warning" not in build_report(drifting_frames(t=10)).table
