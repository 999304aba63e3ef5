"""The context payload a node puts in ``transformer_options``: history, sources, and the resolved tokens.

A node hands the adapter a ``ContextPayload`` through ``transformer_options[PAYLOAD_KEY]``;
the adapter (a DIFFUSION_MODEL wrapper registered under ``JOINT_KEY``) asks the payload for context
tokens (computed once per section with the DiT's own patch embedding) and places them beside the
section tokens.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..context import ContextSource, ContextTokens, SectionGrid, check_history, contiguous_before

PAYLOAD_KEY = "histenc_context"
JOINT_KEY = "histenc_context"  # the joint's key among the MODEL's DIFFUSION_MODEL wrappers: one joint per MODEL


class ContextPayload:
    """History plus the context sources that summarise it, resolved lazily on the model's device.

    ``history`` is in the model's input space (after the latent format's process_in), [B, C, T, H, W]:
    finished frames before the section, oldest first; ``history_times`` gives each one's time in latent
    frames relative to the section's first frame (< 0; default -T .. -1, the frames touching it), so an
    anchor made earlier or the start image keeps its true time (RoPE random access). ``future`` (same
    space) holds finished frames AFTER the section, which endpoint and inverted sampling orders make
    first; ``future_offsets`` gives each one's distance in latent frames past the section's last frame
    (0: adjacent; default 0, 1, 2, ...). FramePack packs both sides; sources that look back only (the
    sliding window, the causal history encoder) summarise ``history`` and place it at its times.
    ``clean_context`` forces the context tokens' timestep to 0 (None: only when the model is fed
    per-frame timesteps, as Wan 2.2 is).
    """

    def __init__(
        self,
        sources: Sequence[ContextSource],
        history: torch.Tensor | None,
        clean_context: bool | None = None,
        future: torch.Tensor | None = None,
        future_offsets: Sequence[int] | None = None,
        history_times: Sequence[int] | None = None,
    ):
        self.sources = list(sources)
        self.history = history
        self.history_times = None
        if history is not None and history_times is not None:
            times = [int(t) for t in history_times]
            if len(times) != history.shape[2] or sorted(set(times)) != times or (times and times[-1] >= 0):
                raise ValueError(
                    f"history times must be {history.shape[2]} distinct ascending negative integers, one per frame, "
                    f"got {times[:8]}."
                )
            self.history_times = None if contiguous_before(times) else times
        self.clean_context = clean_context
        self.future = None if future is None or future.shape[2] == 0 else future
        if self.future is not None and future_offsets is not None and len(future_offsets) != self.future.shape[2]:
            raise ValueError(
                f"future offsets name {len(future_offsets)} frames but the future has {self.future.shape[2]}; "
                "give one offset per frame."
            )
        self.future_offsets = None if future_offsets is None else [int(o) for o in future_offsets]
        self._cache: tuple[tuple, ContextTokens] | None = None
        self.info = None  # the model's ModelInfo, set when the payload is attached to a MODEL

    def __deepcopy__(self, memo):
        # ComfyUI deep-copies model_options on every MODEL clone; a payload is read-only data plus a
        # cache, so every clone shares the one object (and what it measured).
        return self

    def future_times(self, grid: SectionGrid) -> list[int]:
        """Time index of every future frame on the section's grid (the section covers 0..frames-1)."""
        offsets = self.future_offsets if self.future_offsets is not None else range(self.future.shape[2])
        return [grid.frames + o for o in offsets]

    def resolve(self, dit, grid: SectionGrid) -> ContextTokens:
        key = (str(dit.device), dit.dtype, grid)
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        before = None if self.history is None or self.history.shape[2] == 0 else self.history
        if (before is None and self.future is None) or not self.sources:
            ctx = ContextTokens.empty(1, dit.width, device=dit.device, dtype=dit.dtype)
        else:
            for frames, name in ((before, "history"), (self.future, "frames after the section")):
                if frames is not None:
                    check_history(frames, dit.in_channels, name=name)
            with torch.no_grad():
                parts = []
                after_times = None if self.future is None else self.future_times(grid)
                for s in self.sources:
                    if self.future is not None or self.history_times is not None:
                        parts.append(
                            s.context_both(
                                before, self.future, grid, dit, after_times=after_times, before_times=self.history_times
                            )
                        )
                    else:
                        parts.append(s.context(before, grid, dit))
            ctx = (
                ContextTokens.cat(parts).to(device=dit.device, dtype=dit.dtype)
                if parts
                else ContextTokens.empty(1, dit.width, device=dit.device, dtype=dit.dtype)
            )
        if ctx.width != dit.width:
            raise ValueError(
                f"context tokens are {ctx.width} wide but this model's DiT is {dit.width} wide; "
                "use a history encoder or packing weights made for this model."
            )
        self._cache = (key, ctx)
        return ctx

    def count(self, dit, grid: SectionGrid) -> int:
        return self.resolve(dit, grid).count
