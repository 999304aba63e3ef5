"""Which history frames matter most for the next section: FramePack's frame orderings.

``time``: nearest in time first (the default packing order).
``similarity``: most similar to an estimate of the next section first (cosine per latent pixel).
``hybrid``: similarity plus ``lambda_time`` times a Gaussian of the time gap in seconds, so the
order changes smoothly as the section moves forward but can still return to a revisited scene.

The cosine is averaged over pixels rather than summed, so ``lambda_time`` means the same at any
resolution (the order by similarity alone is unchanged by that scaling).
"""

from __future__ import annotations

import torch

from ..units import seconds_per_latent_frame

ORDERINGS = ("time", "similarity", "hybrid")
SECONDS_PER_LATENT_FRAME = seconds_per_latent_frame(24.0)  # the default: a 24 fps video, VAE time stride 4


def check_ordering(ordering: str) -> str:
    if ordering not in ORDERINGS:
        raise ValueError(f"frame ordering must be one of {', '.join(ORDERINGS)}, got {ordering!r}.")
    return ordering


def cosine_similarity(frames: torch.Tensor, estimate: torch.Tensor) -> torch.Tensor:
    """Mean over pixels (and batch) of the channel cosine between each frame and the estimate.

    frames [B, C, T, H, W], estimate [B, C, S, H, W] (averaged over its S frames) -> [T].
    """
    target = estimate.float().mean(dim=2, keepdim=True)
    cos = torch.nn.functional.cosine_similarity(frames.float(), target, dim=1, eps=1e-8)  # [B, T, H, W]
    return cos.mean(dim=(0, 2, 3))


def time_similarity(times: torch.Tensor, seconds_per_frame: float = SECONDS_PER_LATENT_FRAME) -> torch.Tensor:
    """exp(-(gap in seconds)^2) between each frame's time index and the section start (t = 0)."""
    gap = times.double() * seconds_per_frame
    return torch.exp(-gap * gap).float()


def importance(
    frames: torch.Tensor,
    times: torch.Tensor,
    ordering: str = "time",
    estimate: torch.Tensor | None = None,
    lambda_time: float = 1.0,
    seconds_per_frame: float = SECONDS_PER_LATENT_FRAME,
) -> torch.Tensor:
    """Scores [T], higher = more important. ``estimate`` defaults to the frame nearest the section."""
    check_ordering(ordering)
    times = times.to(frames.device)
    if ordering == "time":
        return -times.abs().float()
    if estimate is None:
        nearest = int(times.abs().argmin())
        estimate = frames[:, :, nearest : nearest + 1]
    score = cosine_similarity(frames, estimate.to(frames.device))
    if ordering == "hybrid":
        score = score + float(lambda_time) * time_similarity(times, seconds_per_frame).to(score.device)
    return score


def most_important_first(scores: torch.Tensor, times: torch.Tensor) -> list[int]:
    """Frame indices sorted by score (ties: nearer in time first, then older first), as a list."""
    keys = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), abs(int(times[i])), int(times[i])))
    return keys
