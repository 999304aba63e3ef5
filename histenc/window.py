"""Sliding window: the last N clean latent frames of the history, at full resolution.

The simplest context mode and FramePack's degenerate schedule ``f{N}k1``: tokens come from the
DiT's own patch embedding, placed just before the section in time (t = -N .. -1).
"""

from __future__ import annotations

import torch

from .context import ContextSource, ContextTokens, SectionGrid, grid_positions


class SlidingWindow(ContextSource):
    """Context source: the last ``frames`` latent frames of the history, unchanged."""

    def __init__(self, frames: int):
        if int(frames) < 1:
            raise ValueError(f"sliding window frames must be at least 1, got {frames}.")
        self.frames = int(frames)

    def tokens_for(self, grid: SectionGrid, history_frames: int) -> int:
        t, h, w = grid.cells
        n = min(self.frames, history_frames)
        return -(-n // grid.patch[0]) * h * w

    def context(self, history: torch.Tensor, grid: SectionGrid, dit) -> ContextTokens:
        if tuple(history.shape[3:]) != (grid.height, grid.width):
            raise ValueError(
                f"history is {history.shape[4]}x{history.shape[3]} latent pixels but the section is "
                f"{grid.width}x{grid.height}; generate the history at the same width and height."
            )
        window = history[:, :, -self.frames :]
        n = window.shape[2]
        tokens = dit.patchify(window)
        pt, ph, pw = dit.patch
        cells = (-(-n // pt), -(-grid.height // ph), -(-grid.width // pw))
        positions = grid_positions(*cells, t0=-float(cells[0]), device=tokens.device)
        return ContextTokens(tokens, positions)
