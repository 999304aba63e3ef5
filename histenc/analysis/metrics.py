"""Per-frame quality measures and the start-end drift contrast, on ComfyUI IMAGE frames.

Frames are [T, H, W, C] floats in 0..1 (ComfyUI's IMAGE layout). Every per-frame measure returns a
[T] tensor so that any of them can feed ``drift_contrast``, FramePack's
Delta_M = |M(first 15 % of frames) - M(last 15 %)|: a video that does not drift looks the same at
both ends, whatever the measure.

Filters and the PSNR/SSIM formulas come from kornia so the numbers match a known implementation.
"""

from __future__ import annotations

import math
from typing import Sequence

import kornia
import torch

from ..trflow import average_frequency

DRIFT_FRACTION = 0.15


def as_planes(frames: torch.Tensor, name: str = "frames") -> torch.Tensor:
    """[T, H, W, C] (IMAGE) -> [T, C, H, W] float32, with a clear error for other shapes."""
    if frames.ndim != 4 or frames.shape[-1] not in (1, 3, 4):
        raise ValueError(
            f"{name} must be IMAGE frames [frames, height, width, channels] with 1, 3 or 4 channels, "
            f"got shape {tuple(frames.shape)}."
        )
    return frames[..., :3].permute(0, 3, 1, 2).float()


def _check_pair(pred: torch.Tensor, target: torch.Tensor) -> None:
    if pred.shape != target.shape:
        raise ValueError(
            f"frames to compare must have the same shape, got {tuple(pred.shape)} and {tuple(target.shape)}; "
            "resize or trim one of them first."
        )


def psnr_per_frame(pred: torch.Tensor, target: torch.Tensor, max_val: float = 1.0) -> torch.Tensor:
    """PSNR in dB of every frame pair (inf where identical)."""
    _check_pair(pred, target)
    p, t = as_planes(pred, "pred"), as_planes(target, "target")
    return torch.stack([kornia.metrics.psnr(p[i], t[i], max_val) for i in range(p.shape[0])])


def ssim_per_frame(
    pred: torch.Tensor, target: torch.Tensor, window_size: int = 11, max_val: float = 1.0, chunk: int = 16
) -> torch.Tensor:
    """Mean SSIM of every frame pair (Gaussian window, sigma 1.5; no eps bias)."""
    _check_pair(pred, target)
    p, t = as_planes(pred, "pred"), as_planes(target, "target")
    if min(p.shape[-2:]) <= window_size // 2:
        raise ValueError(
            f"frames of size {tuple(p.shape[-2:])} are too small for an SSIM window of {window_size}; "
            "use larger frames or a smaller window_size."
        )
    out = []
    for s in range(0, p.shape[0], chunk):
        ssim_map = kornia.metrics.ssim(p[s : s + chunk], t[s : s + chunk], window_size, max_val=max_val, eps=0.0)
        out.append(ssim_map.mean(dim=(1, 2, 3)))
    return torch.cat(out)


def luma(planes: torch.Tensor) -> torch.Tensor:
    """[T, C, H, W] -> [T, 1, H, W] Rec. 601 luma (the frame itself when it has one channel)."""
    return kornia.color.rgb_to_grayscale(planes) if planes.shape[1] == 3 else planes[:, :1]


def sharpness_per_frame(frames: torch.Tensor, chunk: int = 16) -> torch.Tensor:
    """Clarity proxy: variance of the 3x3 Laplacian (8-neighbour, unnormalised) of luma.

    Blur and over-smoothing lower it; noise and over-sharpening raise it, so its drift is the
    interesting part, not its level.
    """
    planes = as_planes(frames)
    out = []
    for s in range(0, planes.shape[0], chunk):
        lap = kornia.filters.laplacian(luma(planes[s : s + chunk]), kernel_size=3, normalized=False)
        out.append(lap.flatten(1).var(dim=1, unbiased=False))
    return torch.cat(out)


def colour_stats_per_frame(frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-frame, per-channel mean and standard deviation: ([T, C], [T, C])."""
    planes = as_planes(frames).flatten(2)
    return planes.mean(dim=2), planes.std(dim=2, unbiased=False)


def af_per_frame(frames: torch.Tensor, chunk: int = 16) -> torch.Tensor:
    """Average frequency (T-RFlow's AF, cycles per pixel) of every frame."""
    planes = as_planes(frames)
    return torch.cat([average_frequency(planes[s : s + chunk]) for s in range(0, planes.shape[0], chunk)])


def edge_count(frames: int, fraction: float = DRIFT_FRACTION) -> int:
    """Frames in the start (and end) part: ceil(fraction * T), at least 1, at most T // 2 when T >= 2."""
    if frames < 1:
        raise ValueError(f"the drift contrast needs at least one frame, got {frames}.")
    if not (0.0 < fraction <= 0.5):
        raise ValueError(f"drift fraction {fraction} must be in (0, 0.5]; the paper uses 0.15.")
    n = max(1, math.ceil(fraction * frames - 1e-9))
    return min(n, max(1, frames // 2))


def start_end_means(values: torch.Tensor, fraction: float = DRIFT_FRACTION) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of a per-frame series ([T] or [T, K]) over its first and its last ``fraction`` of frames."""
    n = edge_count(values.shape[0], fraction)
    v = values.double()
    return v[:n].mean(dim=0), v[-n:].mean(dim=0)


def drift_contrast(values: torch.Tensor, fraction: float = DRIFT_FRACTION) -> torch.Tensor:
    """Delta_M = |mean of the first 15 % - mean of the last 15 %| of any per-frame series [T] or [T, K]."""
    start, end = start_end_means(values, fraction)
    return (start - end).abs()


def frame_metrics(
    frames: torch.Tensor, reference: torch.Tensor | None = None, chunk: int = 16
) -> dict[str, torch.Tensor]:
    """The named per-frame series the drift report plots: clarity, colour mean/std per channel, AF.

    With ``reference`` (same shape) it adds PSNR and SSIM against it. Processes ``chunk`` frames at a
    time so long videos fit in memory.
    """
    as_planes(frames)
    if reference is not None:
        _check_pair(frames, reference)
    parts: dict[str, list[torch.Tensor]] = {}
    for s in range(0, frames.shape[0], chunk):
        f = frames[s : s + chunk]
        mean, std = colour_stats_per_frame(f)
        named = {"clarity": sharpness_per_frame(f, chunk)}
        channels = "rgb" if mean.shape[1] == 3 else "l"
        for c, ch in enumerate(channels):
            named[f"mean_{ch}"] = mean[:, c]
        for c, ch in enumerate(channels):
            named[f"std_{ch}"] = std[:, c]
        named["af"] = af_per_frame(f, chunk)
        if reference is not None:
            r = reference[s : s + chunk]
            named["psnr"] = psnr_per_frame(f, r)
            named["ssim"] = ssim_per_frame(f, r, chunk=chunk)
        for key, value in named.items():
            parts.setdefault(key, []).append(value.detach().float().cpu())
    return {key: torch.cat(value) for key, value in parts.items()}


def query_reconstruction(
    queried: torch.Tensor, history: torch.Tensor, indices: Sequence[int] | torch.Tensor
) -> dict[str, torch.Tensor]:
    """Frame-query reconstruction: PSNR/SSIM of queried frames against the history frames they ask for.

    ``queried`` [K, H, W, C] are the frames the model reconstructed for history frames ``indices``
    (K of them) of ``history`` [T, H, W, C]. Returns per-query ``psnr`` and ``ssim`` [K] and their
    means (``mean_psnr`` ignores identical frames, whose PSNR is infinite).
    """
    idx = torch.as_tensor(indices, dtype=torch.long).flatten()
    if idx.numel() != queried.shape[0]:
        raise ValueError(f"got {queried.shape[0]} queried frames but {idx.numel()} indices; pass one index per frame.")
    t = history.shape[0]
    if idx.numel() and (int(idx.min()) < -t or int(idx.max()) >= t):
        raise ValueError(
            f"frame indices {idx.tolist()} fall outside the history of {t} frames; pick indices below {t}."
        )
    truth = history[idx]
    psnr = psnr_per_frame(queried, truth)
    ssim = ssim_per_frame(queried, truth)
    finite = psnr[torch.isfinite(psnr)]
    return {
        "psnr": psnr,
        "ssim": ssim,
        "mean_psnr": finite.mean() if finite.numel() else torch.tensor(float("inf")),
        "mean_ssim": ssim.mean(),
    }
