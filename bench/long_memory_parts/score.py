"""Scores of a generated video against the truth: returned objects' regions, whole frames, drift.

A returned region is the bounding box of every pixel the object covers during the visit (where the true
frame differs from the video's background; frame 0 shows the background alone), one pixel wider on every
side and at least ``MIN_SIDE`` pixels a side (SSIM's window needs room), clamped to the frame. A visit's
PSNR pools the squared error over all of its frames (inf when identical); its SSIM is the mean over its
frames, with a ``REGION_SSIM_WINDOW``-pixel Gaussian window. Whole frames are scored the same way over the
generated frames. Drift is FramePack's 15 % rule (histenc.analysis.metrics.drift_contrast): the difference
between the mean of a per-frame measure over the first and over the last 15 % of the generated frames.
"""

from __future__ import annotations

import math
import statistics

import torch

from histenc.analysis.metrics import drift_contrast, frame_metrics, ssim_per_frame

MIN_SIDE = 6
REGION_SSIM_WINDOW = 5
PSNR_CAP = 60.0  # drift of a per-frame PSNR series: identical frames count as 60 dB, not inf


def region(pixels: torch.Tensor, start: int, end: int) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1) of the object shown in frames start..end-1 of ``pixels`` [T, H, W, 3]."""
    background = pixels[0]
    moved = (pixels[start:end] - background).abs().amax(dim=(0, 3)) > 1e-6  # [H, W]
    if not bool(moved.any()):
        raise ValueError(f"frames {start}..{end - 1} show nothing but the background; no region to score.")
    height, width = moved.shape
    ys, xs = torch.nonzero(moved, as_tuple=True)
    box = []
    for lo, hi, size in ((int(ys.min()), int(ys.max()) + 1, height), (int(xs.min()), int(xs.max()) + 1, width)):
        lo, hi = max(0, lo - 1), min(size, hi + 1)
        while hi - lo < min(MIN_SIDE, size):  # grow both ways, then whichever side has room
            lo = max(0, lo - 1)
            if hi - lo < min(MIN_SIDE, size):
                hi = min(size, hi + 1)
        box += [lo, hi]
    return tuple(box)


def pooled_psnr(pred: torch.Tensor, truth: torch.Tensor) -> float:
    """PSNR in dB of all of ``pred`` against ``truth`` at once (pixels 0..1, pred clamped); inf when equal."""
    mse = float((pred.clamp(0, 1).double() - truth.double()).pow(2).mean())
    return math.inf if mse == 0 else -10 * math.log10(mse)


def visit_scores(generated: torch.Tensor, truth: torch.Tensor, visits: list) -> dict[str, list[float]]:
    """PSNR / SSIM of every visit's region (``visits``: (object, first frame, end frame))."""
    out = {"psnr": [], "ssim": []}
    for _, start, end in visits:
        y0, y1, x0, x1 = region(truth, start, end)
        g, t = generated[start:end, y0:y1, x0:x1].clamp(0, 1), truth[start:end, y0:y1, x0:x1]
        out["psnr"].append(pooled_psnr(g, t))
        out["ssim"].append(float(ssim_per_frame(g, t, window_size=REGION_SSIM_WINDOW).mean()))
    return out


def drift(generated: torch.Tensor, truth: torch.Tensor) -> dict[str, float]:
    """FramePack's 15 % drift contrast of PSNR vs the truth, clarity and the mean colour, generated frames only."""
    m = frame_metrics(generated.clamp(0, 1), truth)
    colour = torch.stack([m[f"mean_{c}"] for c in "rgb"]).mean(dim=0)
    return {
        "drift_psnr": float(drift_contrast(m["psnr"].clamp(max=PSNR_CAP))),
        "drift_clarity": float(drift_contrast(m["clarity"])),
        "drift_colour": float(drift_contrast(colour)),
    }


def score_video(generated: torch.Tensor, video, with_drift: bool = True) -> dict[str, list[float]]:
    """Scores of frames [T, H, W, 3] made for ``video`` (frames before its prefix are the given start)."""
    p = video.prefix
    visits = visit_scores(generated, video.pixels, video.returns)
    out = {
        "psnr_returned": visits["psnr"],
        "ssim_returned": visits["ssim"],
        "psnr_frame": [pooled_psnr(generated[p:], video.pixels[p:])],
        "ssim_frame": [float(ssim_per_frame(generated[p:].clamp(0, 1), video.pixels[p:]).mean())],
    }
    if with_drift:
        out.update({k: [v] for k, v in drift(generated[p:], video.pixels[p:]).items()})
    return out


def merge(parts: list[dict[str, list[float]]]) -> dict[str, list[float]]:
    """Per-video score dicts joined key by key (visits of every video in one list)."""
    out: dict[str, list[float]] = {}
    for part in parts:
        for k, v in part.items():
            out.setdefault(k, []).extend(v)
    return out


def finite_mean(values: list[float]) -> float:
    """The mean of the finite values (a region generated exactly gives inf), inf when all are inf."""
    finite = [v for v in values if math.isfinite(v)]
    return statistics.fmean(finite) if finite else (math.inf if values else math.nan)
