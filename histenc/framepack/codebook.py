"""History discretisation: every latent pixel of the history snapped to its nearest codebook entry.

A K-means codebook fitted over the latent pixels of real videos makes the history the model sees
at inference look like the history it saw in training, whatever errors crept into the generated
frames; fewer entries forget more detail and drift less. The quantised history is still a
latent, so any context source (packing, encoder, window) consumes it unchanged.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from scipy.cluster.vq import kmeans2

from ..context import ContextSource, ContextTokens, SectionGrid, check_history
from .packing import FramePackContext
from ..weights import load_weights, save_weights

WEIGHTS_FORMAT = "histenc.codebook"
WEIGHTS_VERSION = 1


def latent_pixels(latents: torch.Tensor) -> torch.Tensor:
    """[B, C, T, H, W] (or [B, C, H, W]) -> [B*T*H*W, C]: one row per latent pixel."""
    if not isinstance(latents, torch.Tensor) or latents.ndim not in (4, 5):
        shape = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
        raise ValueError(f"latents must be [batch, channels, (frames,) height, width], got {shape}; pass a LATENT.")
    return latents.movedim(1, -1).reshape(-1, latents.shape[1])


class HistoryCodebook:
    """K entries of C channels; ``quantize`` maps a latent to its nearest entries."""

    def __init__(self, entries: torch.Tensor):
        if entries.ndim != 2 or entries.shape[0] < 1:
            raise ValueError(
                f"a codebook must be [entries, channels] with at least 1 entry, got {tuple(entries.shape)}."
            )
        self.entries = entries.float().cpu()

    @property
    def size(self) -> int:
        return self.entries.shape[0]

    @property
    def channels(self) -> int:
        return self.entries.shape[1]

    @staticmethod
    def fit(
        latents: torch.Tensor, k: int = 128, seed: int = 0, max_pixels: int = 200_000, iterations: int = 20
    ) -> "HistoryCodebook":
        """K-means (scipy's kmeans2, k-means++ start, fixed seed) over up to ``max_pixels`` pixels."""
        if int(k) < 1:
            raise ValueError(f"codebook size must be at least 1, got {k}; 128 or 256 is usual.")
        data = latent_pixels(latents).float().cpu()
        rng = np.random.default_rng(seed)
        if data.shape[0] > max_pixels:
            data = data[torch.from_numpy(rng.choice(data.shape[0], max_pixels, replace=False))]
        if data.shape[0] < k:
            raise ValueError(
                f"cannot fit {k} codebook entries to {data.shape[0]} latent pixels; use a smaller size or more latents."
            )
        with warnings.catch_warnings():  # an empty cluster keeps its start point; not worth a warning
            warnings.simplefilter("ignore")
            centroids, _ = kmeans2(data.double().numpy(), int(k), iter=iterations, minit="++", rng=rng)
        return HistoryCodebook(torch.from_numpy(centroids).float())

    def _check(self, latents: torch.Tensor) -> None:
        if latents.shape[1] != self.channels:
            raise ValueError(
                f"latents have {latents.shape[1]} channels but the codebook has {self.channels}; "
                "use a codebook fitted on this model family's latents."
            )

    def quantize(self, latents: torch.Tensor, chunk: int = 65_536) -> torch.Tensor:
        """Indices [B, T, H, W] (or [B, H, W]) of the nearest entry per latent pixel."""
        self._check(latents)
        pixels = latent_pixels(latents)
        entries = self.entries.to(pixels.device)
        out = torch.empty(pixels.shape[0], dtype=torch.long, device=pixels.device)
        for i in range(0, pixels.shape[0], chunk):
            out[i : i + chunk] = torch.cdist(pixels[i : i + chunk].float(), entries).argmin(dim=1)
        return out.reshape(latents.shape[0], *latents.shape[2:])

    def lookup(self, indices: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
        """Indices [B, ...] -> latents [B, C, ...] made of codebook entries."""
        return self.entries.to(indices.device)[indices].movedim(-1, 1).to(dtype)

    def apply(self, latents: torch.Tensor) -> torch.Tensor:
        """The latent with every pixel replaced by its nearest entry (same shape and dtype)."""
        return self.lookup(self.quantize(latents), latents.dtype)

    def save(self, path) -> None:
        save_weights(
            path,
            {"entries": self.entries},
            {"format": WEIGHTS_FORMAT, "version": WEIGHTS_VERSION, "size": self.size, "channels": self.channels},
        )

    @staticmethod
    def load(path, channels: int | None = None) -> "HistoryCodebook":
        expect = {"format": WEIGHTS_FORMAT, "version": WEIGHTS_VERSION}
        if channels is not None:
            expect["channels"] = int(channels)
        tensors, _ = load_weights(path, expect=expect)
        if "entries" not in tensors:
            raise ValueError(f"codebook file {path} has no 'entries' tensor; fit and save the codebook again.")
        return HistoryCodebook(tensors["entries"])


class DiscreteHistory(ContextSource):
    """Context source wrapper: quantise the history, then hand it to another source."""

    def __init__(self, source, codebook: HistoryCodebook):
        self.source, self.codebook = source, codebook

    def describe(self) -> dict:
        return {"type": "DiscreteHistory", "codebook": int(self.codebook.size), "source": self.source.describe()}

    def tokens_for(self, grid: SectionGrid, history_frames: int) -> int:
        return self.source.tokens_for(grid, history_frames)

    def weight_bytes(self) -> int:
        return self.source.weight_bytes()  # the codebook itself stays on the CPU with the history

    def context(self, history: torch.Tensor, grid: SectionGrid, dit) -> ContextTokens:
        check_history(history, self.codebook.channels)
        return self.source.context(self.codebook.apply(history), grid, dit)

    def context_both(self, before, after, grid: SectionGrid, dit, after_times=None, before_times=None) -> ContextTokens:
        """Both sides discretised, then packed by the wrapped source: an inverted ``+D`` schedule sees its
        planned frames after the section from its first step (FramePack Sec. 3.3 discretises all history)."""
        sides = []
        for frames, name in ((before, "frames before the section"), (after, "frames after the section")):
            if frames is not None and frames.shape[2]:
                check_history(frames, self.codebook.channels, name=name)
                frames = self.codebook.apply(frames)
            sides.append(frames)
        return self.source.context_both(*sides, grid, dit, after_times=after_times, before_times=before_times)


def framepacks(sources) -> list[FramePackContext]:
    """The FramePack sources in a context list, looking through history discretisation."""
    found = []
    for source in sources or []:
        while isinstance(source, DiscreteHistory):
            source = source.source
        if isinstance(source, FramePackContext):
            found.append(source)
    return found
