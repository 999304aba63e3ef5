"""What an incremental history encoder remembers between sections.

The state is the encoder's tokens for every complete stride group seen so far, the last few
input frames of each causal convolution (``k - s`` frames per layer, a few MB at 480p) and the
raw latent frames of an unfinished group. It is independent of the model weights and
round-trips through a flat dict of tensors, so it can be saved next to the history with
``histenc.weights.save_weights`` and a long generation can resume without re-encoding.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class EncoderState:
    batch: int
    channels: int
    height: int
    width: int
    committed: int = 0  # history frames already turned into cached tokens (a multiple of the group)
    caches: list = field(default_factory=list)  # per causal conv: its last input frames, or None
    token_buffer: torch.Tensor | None = None  # [B, capacity, D]; the first ``count`` rows are the tokens
    feature_buffer: torch.Tensor | None = None  # [B, capacity, F] penultimate features, when kept
    count: int = 0  # cached tokens (and features)
    keeps_features: bool = False
    pending: torch.Tensor | None = None  # [B, C, P, H, W] frames of an unfinished group, P < group
    last_committed: torch.Tensor | None = None  # [B, C, 1, H, W] the last committed frame (prefix check)

    @property
    def pending_frames(self) -> int:
        return 0 if self.pending is None else int(self.pending.shape[2])

    @property
    def seen(self) -> int:
        """History frames this state accounts for (committed plus pending)."""
        return self.committed + self.pending_frames

    def add(self, tokens: torch.Tensor, features: torch.Tensor | None = None) -> None:
        """Append a chunk's tokens (and features) in place; capacity grows by half when full.

        Amortised growth keeps each append proportional to the chunk and lets ``tokens()`` return a
        view, so a section's context never copies the whole cached history.
        """
        need = self.count + tokens.shape[1]
        self.token_buffer = _grow(self.token_buffer, self.count, need, tokens)
        self.token_buffer[:, self.count : need] = tokens
        if self.keeps_features and features is not None:
            self.feature_buffer = _grow(self.feature_buffer, self.count, need, features)
            self.feature_buffer[:, self.count : need] = features
        self.count = need

    def tokens(self) -> torch.Tensor | None:
        return None if self.token_buffer is None else self.token_buffer[:, : self.count]

    def features(self) -> torch.Tensor | None:
        return None if self.feature_buffer is None else self.feature_buffer[:, : self.count]

    def continues(self, history: torch.Tensor) -> bool:
        """Whether ``history`` extends what this state has seen.

        Checks the shape, the last committed frame and the pending frames exactly; a change to
        older frames is not detected (call ``reset`` on the encoder after editing the past).
        """
        b, c, t, h, w = history.shape
        if (b, c, h, w) != (self.batch, self.channels, self.height, self.width) or t < self.seen:
            return False
        if self.last_committed is not None:
            frame = history[:, :, self.committed - 1 : self.committed]
            if not torch.equal(frame.to(self.last_committed), self.last_committed):
                return False
        if self.pending_frames:
            part = history[:, :, self.committed : self.seen]
            if not torch.equal(part.to(self.pending), self.pending):
                return False
        return True

    def nbytes(self, include_tokens: bool = True) -> int:
        parts = [c for c in self.caches if c is not None]
        parts += [p for p in (self.pending, self.last_committed) if p is not None]
        if include_tokens:
            parts += [t for t in (self.tokens(), self.features()) if t is not None]
        return sum(p.numel() * p.element_size() for p in parts)

    def to_dict(self) -> dict[str, torch.Tensor]:
        """Flat, contiguous CPU tensors (safetensors-ready)."""
        out = {
            "shape": torch.tensor([self.batch, self.channels, self.height, self.width, self.committed]),
            "cache_count": torch.tensor([len(self.caches)]),
        }
        for i, cache in enumerate(self.caches):
            if cache is not None:
                out[f"cache.{i}"] = cache
        for name, value in (
            ("tokens", self.tokens()),
            ("features", self.features()),
            ("pending", self.pending),
            ("last_committed", self.last_committed),
        ):
            if value is not None:
                out[name] = value
        if self.keeps_features and "features" not in out:
            out["features_kept"] = torch.tensor([1])
        return {k: v.detach().to("cpu").contiguous() for k, v in out.items()}

    @staticmethod
    def from_dict(data: dict[str, torch.Tensor], device=None) -> "EncoderState":
        if "shape" not in data or "cache_count" not in data:
            raise ValueError(
                "encoder state is missing its 'shape' or 'cache_count' entry; it was not saved by EncoderState.to_dict."
            )
        b, c, h, w, committed = (int(v) for v in data["shape"].tolist())
        move = lambda t: t if device is None else t.to(device)  # noqa: E731
        caches = [
            move(data[f"cache.{i}"]) if f"cache.{i}" in data else None for i in range(int(data["cache_count"][0]))
        ]
        keeps = "features" in data or "features_kept" in data
        tokens = move(data["tokens"]) if "tokens" in data else None
        return EncoderState(
            batch=b,
            channels=c,
            height=h,
            width=w,
            committed=committed,
            caches=caches,
            token_buffer=tokens,
            feature_buffer=move(data["features"]) if "features" in data else None,
            count=0 if tokens is None else int(tokens.shape[1]),
            keeps_features=keeps,
            pending=move(data["pending"]) if "pending" in data else None,
            last_committed=move(data["last_committed"]) if "last_committed" in data else None,
        )


def _grow(buffer: torch.Tensor | None, used: int, need: int, like: torch.Tensor) -> torch.Tensor:
    if buffer is not None and buffer.shape[1] >= need:
        return buffer
    capacity = max(need, (buffer.shape[1] * 3) // 2 if buffer is not None else 2 * need)
    grown = like.new_empty(like.shape[0], capacity, like.shape[2])
    if used:
        grown[:, :used] = buffer[:, :used]
    return grown
