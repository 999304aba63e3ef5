"""Command line drift report for a video file.

    python -m histenc.cli_report video.mp4 --out report.png [--table report.txt] [--section-frames 81]
        [--first-section-frames 81] [--reference original.mp4] [--stride 1] [--max-side 0]

Decodes with PyAV in chunks and keeps only the per-frame numbers, so a minute of 480p video needs
no more memory than one chunk of frames.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from .metrics import frame_metrics
from .report import DriftReport, report_from_metrics, section_starts_every


def _resize(frames: torch.Tensor, max_side: int) -> torch.Tensor:
    h, w = frames.shape[1:3]
    if max_side <= 0 or max(h, w) <= max_side:
        return frames
    scale = max_side / max(h, w)
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    planes = torch.nn.functional.interpolate(frames.permute(0, 3, 1, 2), size=size, mode="area")
    return planes.permute(0, 2, 3, 1)


def read_video_chunks(
    path: str | Path, chunk: int = 32, stride: int = 1, max_side: int = 0
) -> Iterator[tuple[torch.Tensor, float]]:
    """Yield (IMAGE chunk [t, H, W, 3] in 0..1, frames per second of the kept frames) from a video file."""
    import av  # only the command line needs PyAV

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"video file {str(path)!r} does not exist; pass the path of a video PyAV can read.")
    if stride < 1:
        raise ValueError(f"stride = {stride} must be at least 1.")
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError(f"{str(path)!r} has no video stream; pass a video file.")
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 0) / stride
        batch: list[np.ndarray] = []
        for k, frame in enumerate(container.decode(stream)):
            if k % stride:
                continue
            batch.append(frame.to_ndarray(format="rgb24"))
            if len(batch) == chunk:
                yield _resize(torch.from_numpy(np.stack(batch)).float() / 255.0, max_side), fps
                batch = []
        if batch:
            yield _resize(torch.from_numpy(np.stack(batch)).float() / 255.0, max_side), fps


def video_report(
    path: str | Path,
    section_frames: int = 0,
    first_section_frames: int = 0,
    reference: str | Path | None = None,
    stride: int = 1,
    max_side: int = 0,
    width: int = 960,
    panel_height: int = 150,
) -> DriftReport:
    """Drift report of a video file; section lengths are in frames of the file (before ``stride``)."""
    parts: dict[str, list[torch.Tensor]] = {}
    fps = 0.0
    ref_iter = read_video_chunks(reference, stride=stride, max_side=max_side) if reference else None
    for frames, fps in read_video_chunks(path, stride=stride, max_side=max_side):
        ref = None
        if ref_iter is not None:
            ref = next(ref_iter, (None, 0.0))[0]
            if ref is None or ref.shape != frames.shape:
                raise ValueError(
                    f"reference {str(reference)!r} does not match {str(path)!r} frame for frame "
                    "(length or size differ); pass a reference of the same length and resolution."
                )
        for key, value in frame_metrics(frames, ref).items():
            parts.setdefault(key, []).append(value)
    if not parts:
        raise ValueError(f"no frames could be decoded from {str(path)!r}; check that the file is a video.")
    metrics = {key: torch.cat(value) for key, value in parts.items()}
    total = next(iter(metrics.values())).shape[0]
    starts = [0]
    if section_frames > 0:
        first = first_section_frames if first_section_frames > 0 else section_frames
        starts = sorted({s // stride for s in section_starts_every(total * stride, section_frames, first)})
        starts = [s for s in starts if s < total]
    return report_from_metrics(metrics, starts, fps, width, panel_height)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Plot drift metrics of a video over time.")
    parser.add_argument("video", help="video file to analyse")
    parser.add_argument("--out", default=None, help="PNG path (default: <video>.drift.png)")
    parser.add_argument("--table", default=None, help="text table path (default: <video>.drift.txt)")
    parser.add_argument("--section-frames", type=int, default=0, help="frames per section (0: no sections)")
    parser.add_argument("--first-section-frames", type=int, default=0, help="frames of the first section if different")
    parser.add_argument("--reference", default=None, help="video of the same length to compute PSNR/SSIM against")
    parser.add_argument("--stride", type=int, default=1, help="analyse every n-th frame")
    parser.add_argument("--max-side", type=int, default=0, help="downscale so the longer side is at most this")
    parser.add_argument("--width", type=int, default=960, help="plot width in pixels")
    parser.add_argument("--panel-height", type=int, default=150, help="height of each plot panel in pixels")
    args = parser.parse_args(argv)
    try:
        report = video_report(
            args.video,
            args.section_frames,
            args.first_section_frames,
            args.reference,
            args.stride,
            args.max_side,
            args.width,
            args.panel_height,
        )
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out or f"{args.video}.drift.png")
    table = Path(args.table or f"{args.video}.drift.txt")
    report.image.save(out)
    table.write_text(report.table + "\n")
    print(report.table)
    print(f"wrote {out} and {table}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
