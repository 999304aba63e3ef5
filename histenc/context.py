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

import abc
from dataclasses import dataclass
from typing import Protocol, Sequence

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
        return ContextTokens(torch.zeros(batch, 0, width, device=device, dtype=dtype), torch.zeros(0, 3, device=device))

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


class ContextSource(abc.ABC):
    """A context mode: history latents in, context tokens with RoPE positions out.

    Every source answers three questions, so no caller has to probe for methods:
    ``context`` (the tokens), ``tokens_for`` (how many, without tensors: the VRAM planner and the
    FramePack Schedule node ask it) and ``describe`` (its settings as JSON values, so a resumed
    job can tell whether they changed). ``context_both`` is the two-sided form used when finished
    frames after the section exist (endpoint and inverted sampling orders); a source that only
    looks back keeps the default, which summarises the frames before the section.
    """

    @abc.abstractmethod
    def context(self, history: torch.Tensor, grid: SectionGrid, dit: DiTPatchifier) -> ContextTokens:
        """Context tokens for ``history`` [B, C, T, H, W] (model space) before a section on ``grid``."""

    @abc.abstractmethod
    def tokens_for(self, grid: SectionGrid, history_frames: int) -> int:
        """How many tokens ``context`` returns for ``history_frames`` latent frames of history."""

    def describe(self) -> dict:
        """Settings that shape the tokens, as JSON values: by default the type and its plain attributes."""
        return {"type": type(self).__name__, **{k: v for k, v in sorted(vars(self).items()) if _plain(v)}}

    def weight_bytes(self) -> int:
        """Bytes of the source's own weights that sit on the DiT's device while it runs (the VRAM planner adds
        them to the peak); a source without weights keeps the default, 0."""
        return 0

    def context_both(
        self,
        before: torch.Tensor | None,
        after: torch.Tensor | None,
        grid: SectionGrid,
        dit: DiTPatchifier,
        after_times: Sequence[int] | None = None,
        before_times: Sequence[int] | None = None,
    ) -> ContextTokens:
        """Tokens for finished frames on both sides of the section, each frame at its own time on ``grid``.

        ``before_times`` (ascending, all < 0) and ``after_times`` (all >= grid.frames) default to the frames
        touching the section; a sampling order that makes sections out of time order hands over frames with
        gaps between them (an earlier anchor, the start image). This default serves sources that look back
        only: it summarises the frames before the section as if they were contiguous, then moves every token
        to the true times of the frames it covers (``at_times``), so RoPE skips the gaps.
        """
        if before is None or before.shape[2] == 0:
            return ContextTokens.empty(1, dit.width, device=dit.device, dtype=dit.dtype)
        ctx = self.context(before, grid, dit)
        return ctx if before_times is None else at_times(ctx, before_times, dit.patch[0])


class StatefulSource(ContextSource):
    """A context source that keeps state across the sections of one long video (the clip KV cache,
    the video extension). The long-video loop calls these hooks on every stateful source, in order:

    ``before_section`` -> ``condition_section`` -> (sampling) -> ``after_section``; on resume every
    section read from disk is shown again through ``before_section`` + ``after_section`` in the order
    it was made, so the state matches an uninterrupted run. ``reset`` starts a new video. Each hook
    that takes a ``model`` returns the model the section samples with (ComfyUI: a MODEL clone).
    The defaults do nothing.
    """

    def before_section(self, model, index: int, start: int, known: int, prompt: str, conditioning):
        """Before section ``index`` (first new latent frame ``start``, ``known`` given frames before it)."""
        return model

    def condition_section(self, model, condition: torch.Tensor, given: torch.Tensor):
        """``condition``: the section's latent in model space, zero off the given frames; ``given``: 1 on them."""
        return model

    def after_section(self, model, latents: torch.Tensor, index: int, prompt: str, conditioning) -> None:
        """The finished section's clean latents in model space."""

    def reset(self) -> None:
        """Forget everything: the next section starts a new video."""


def stateful(sources: Sequence[ContextSource]) -> list[StatefulSource]:
    """The sources of a context list that take part in the section hooks."""
    return [s for s in sources if isinstance(s, StatefulSource)]


def check_sources(sources: Sequence) -> list[ContextSource]:
    """A context list, or one sentence naming the entry that is not a context source."""
    out = list(sources)
    for i, s in enumerate(out):
        if not isinstance(s, ContextSource):
            raise ValueError(
                f"context entry {i} is a {type(s).__name__}, not a context source; connect a context "
                "node's output (Sliding Window, History Encoder Context, FramePack Context, ...)."
            )
    return out


def _plain(value) -> bool:
    return isinstance(value, (int, float, str, bool, type(None))) or (
        isinstance(value, (list, tuple)) and all(_plain(v) for v in value)
    )


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


def contiguous_before(times: Sequence[int]) -> bool:
    """Whether frame times before a section are the plain run -n .. -1 that ``context`` assumes."""
    return [int(t) for t in times] == list(range(-len(times), 0))


def at_times(ctx: ContextTokens, times: Sequence[int], patch_t: int = 1) -> ContextTokens:
    """``ctx`` made from frames laid end to end before the section (t = -n .. -1), moved to the frames' true
    times ``times`` (ascending, < 0): each token's box starts at the true time of its first frame and spans to
    its last frame's, so a box never covers a frame it did not see except the skipped times inside it."""
    times = [int(t) for t in times]
    n = len(times)
    if n == 0 or ctx.count == 0 or contiguous_before(times):
        return ctx
    if sorted(set(times)) != times or times[-1] >= 0:
        raise ValueError(f"frame times before a section must be distinct, ascending and negative, got {times[:8]}.")
    pt = int(patch_t)
    table = torch.tensor(times, dtype=torch.long)
    ext = ctx.extent_or_ones().to("cpu").long()
    first = (torch.round(ctx.positions[:, 0].to("cpu").float() * pt).long() + n).clamp(0, n - 1)
    last = (first + ext[:, 0] * pt - 1).clamp(0, n - 1)
    t0 = torch.div(table[first], pt, rounding_mode="floor")
    t1 = torch.div(table[last], pt, rounding_mode="floor")
    positions = ctx.positions.clone()
    positions[:, 0] = t0.to(positions)
    extent = ext.clone()
    extent[:, 0] = t1 - t0 + 1
    return ContextTokens(ctx.tokens, positions, extent.to(ctx.positions.device))
