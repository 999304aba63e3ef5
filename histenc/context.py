"""The one contract every context mode meets.

A context mode turns the latent history of a video into a few extra tokens for the DiT:

    source.context(history, grid, dit) -> ContextTokens(tokens [B, N, D], positions [N, 3], extent [N, 3])

Positions live on the DiT's patch grid of the section being generated: time is counted in
latent frames with the section's first frame at t = 0 (history is at t < 0), height and width
in patch cells (a Wan/Hunyuan cell is 2x2 latent pixels). A token that summarises a box of
cells (a coarse encoder token, a FramePack kernel) starts at ``positions`` and spans
``extent`` cells per axis; its rotary phases are the mean of the phases over that box, which is
FramePack's RoPE alignment and reduces to the plain phase when extent is 1.

The DiT adapter (histenc.dit) is the only place that knows how to put such tokens into a
family's forward pass; context modes never touch the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence, runtime_checkable

import torch


@dataclass(frozen=True)
class SectionGrid:
    """Latent size of the section being generated, and the DiT patch that tiles it."""

    frames: int
    height: int
    width: int
    patch: tuple[int, int, int] = (1, 2, 2)

    @property
    def cells(self) -> tuple[int, int, int]:
        """Patch-grid size (t, h, w) of the section: what the DiT's RoPE indexes."""
        pt, ph, pw = self.patch
        return (-(-self.frames // pt), -(-self.height // ph), -(-self.width // pw))

    @property
    def tokens(self) -> int:
        t, h, w = self.cells
        return t * h * w


@dataclass
class ContextTokens:
    """Context tokens at the DiT's width plus where they sit in RoPE space."""

    tokens: torch.Tensor  # [B, N, D]
    positions: torch.Tensor  # [N, 3] float: (t, h, w) start of each token's box, in patch cells
    extent: torch.Tensor | None = None  # [N, 3] int >= 1: box size in cells; None means all ones

    def __post_init__(self) -> None:
        if self.tokens.ndim != 3:
            raise ValueError(f"context tokens must be [batch, tokens, width], got shape {tuple(self.tokens.shape)}.")
        n = self.tokens.shape[1]
        if self.positions.shape != (n, 3):
            raise ValueError(
                f"context positions must be [{n}, 3] to match {n} tokens, got shape {tuple(self.positions.shape)}."
            )
        if self.extent is not None:
            if self.extent.shape != (n, 3):
                raise ValueError(f"context extent must be [{n}, 3], got shape {tuple(self.extent.shape)}.")
            if n and int(self.extent.min()) < 1:
                raise ValueError("context extent must be at least 1 cell on every axis.")

    @property
    def count(self) -> int:
        return self.tokens.shape[1]

    @property
    def width(self) -> int:
        return self.tokens.shape[2]

    def extent_or_ones(self) -> torch.Tensor:
        if self.extent is not None:
            return self.extent
        return torch.ones(self.count, 3, dtype=torch.long, device=self.positions.device)

    def to(self, device=None, dtype=None) -> "ContextTokens":
        ext = None if self.extent is None else self.extent.to(device)
        return ContextTokens(self.tokens.to(device=device, dtype=dtype), self.positions.to(device), ext)

    @staticmethod
    def empty(batch: int, width: int, device=None, dtype=torch.float32) -> "ContextTokens":
        return ContextTokens(
            torch.zeros(batch, 0, width, device=device, dtype=dtype), torch.zeros(0, 3, device=device)
        )

    @staticmethod
    def cat(parts: Sequence["ContextTokens"]) -> "ContextTokens":
        """Concatenate the outputs of several sources (e.g. encoder + small raw window)."""
        parts = [p for p in parts if p.count > 0] or list(parts[:1])
        if not parts:
            raise ValueError("no context to concatenate.")
        widths = {p.width for p in parts}
        if len(widths) != 1:
            raise ValueError(f"context sources disagree on the token width: {sorted(widths)}.")
        batch = max(p.tokens.shape[0] for p in parts)
        tokens = torch.cat([p.tokens.expand(batch, -1, -1) for p in parts], dim=1)
        positions = torch.cat([p.positions.float() for p in parts], dim=0)
        if all(p.extent is None for p in parts):
            return ContextTokens(tokens, positions)
        extent = torch.cat([p.extent_or_ones().long() for p in parts], dim=0)
        return ContextTokens(tokens, positions, extent)


class DiTPatchifier(Protocol):
    """What a context source may ask of the DiT: its width, patch and patch embedding."""

    width: int
    in_channels: int
    patch: tuple[int, int, int]

    def patchify(self, latents: torch.Tensor) -> torch.Tensor:
        """[B, C, T, H, W] latents -> [B, T' * H' * W', width] tokens with the DiT's own patch embedding."""
        ...


@runtime_checkable
class ContextSource(Protocol):
    """A context mode: history latents in, context tokens with RoPE positions out."""

    def context(self, history: torch.Tensor, grid: SectionGrid, dit: DiTPatchifier) -> ContextTokens: ...


def check_history(history: torch.Tensor, channels: int, name: str = "history") -> None:
    """One clear sentence for the usual ways a history latent is wrong."""
    if not isinstance(history, torch.Tensor) or history.ndim != 5:
        shape = tuple(history.shape) if isinstance(history, torch.Tensor) else type(history).__name__
        raise ValueError(
            f"{name} must be a video latent [batch, channels, frames, height, width], got {shape}; "
            "pass a video LATENT (e.g. from the long-video sampler or an Empty...Latent node)."
        )
    if history.shape[1] != channels:
        raise ValueError(
            f"{name} has {history.shape[1]} latent channels but the model expects {channels}; "
            "use a latent made by this model family's VAE."
        )


def grid_positions(t: int, h: int, w: int, t0: float = 0.0, step=(1, 1, 1), device=None) -> torch.Tensor:
    """Start positions [t*h*w, 3] of a regular grid of boxes, row-major (t, h, w), like a flatten."""
    st, sh, sw = step
    tt = torch.arange(t, device=device, dtype=torch.float32) * st + t0
    hh = torch.arange(h, device=device, dtype=torch.float32) * sh
    ww = torch.arange(w, device=device, dtype=torch.float32) * sw
    g = torch.stack(torch.meshgrid(tt, hh, ww, indexing="ij"), dim=-1)
    return g.reshape(-1, 3)
