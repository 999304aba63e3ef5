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
    token_chunks: list = field(default_factory=list)  # [B, n, D] per appended chunk
    feature_chunks: list | None = None  # [B, n, F] per chunk when penultimate features are kept
    pending: torch.Tensor | None = None  # [B, C, P, H, W] frames of an unfinished group, P < group
    last_committed: torch.Tensor | None = None  # [B, C, 1, H, W] the last committed frame (prefix check)

    @property
    def pending_frames(self) -> int:
        return 0 if self.pending is None else int(self.pending.shape[2])

    @property
    def seen(self) -> int:
        """History frames this state accounts for (committed plus pending)."""
        return self.committed + self.pending_frames

    @property
    def keeps_features(self) -> bool:
        return self.feature_chunks is not None

    def tokens(self) -> torch.Tensor | None:
        if not self.token_chunks:
            return None
        if len(self.token_chunks) > 1:  # merge once so later reads are free
            self.token_chunks = [torch.cat(self.token_chunks, dim=1)]
        return self.token_chunks[0]

    def features(self) -> torch.Tensor | None:
        if not self.feature_chunks:
            return None
        if len(self.feature_chunks) > 1:
            self.feature_chunks = [torch.cat(self.feature_chunks, dim=1)]
        return self.feature_chunks[0]

    def continues(self, history: torch.Tensor) -> bool:
        """Whether ``history`` extends what this state has seen.

        Checks the shape, the last committed frame and the pending frames exactly; a change to
        older frames is not detected (call ``reset`` on the encoder after editing the past).
        """
        b, c, t, h, w = history.shape
        if (b, c, h, w) != (self.batch, self.channels, self.height, self.width) or t < self.seen:
            return False
        if self.last_committed is not None:
            frame = history[:, :, self.committed - 1:self.committed]
            if not torch.equal(frame.to(self.last_committed), self.last_committed):
                return False
        if self.pending_frames:
            part = history[:, :, self.committed:self.seen]
            if not torch.equal(part.to(self.pending), self.pending):
                return False
        return True

    def nbytes(self, include_tokens: bool = True) -> int:
        parts = [c for c in self.caches if c is not None]
        parts += [p for p in (self.pending, self.last_committed) if p is not None]
        if include_tokens:
            parts += list(self.token_chunks) + list(self.feature_chunks or [])
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
        for name, value in (("tokens", self.tokens()), ("features", self.features()), ("pending", self.pending),
                            ("last_committed", self.last_committed)):
            if value is not None:
                out[name] = value
        if self.feature_chunks is not None and "features" not in out:
            out["features_kept"] = torch.tensor([1])
        return {k: v.detach().to("cpu").contiguous() for k, v in out.items()}

    @staticmethod
    def from_dict(data: dict[str, torch.Tensor], device=None) -> "EncoderState":
        if "shape" not in data or "cache_count" not in data:
            raise ValueError("encoder state is missing its 'shape' or 'cache_count' entry; it was not saved by EncoderState.to_dict.")
        b, c, h, w, committed = (int(v) for v in data["shape"].tolist())
        move = (lambda t: t if device is None else t.to(device))  # noqa: E731
        caches = [move(data[f"cache.{i}"]) if f"cache.{i}" in data else None for i in range(int(data["cache_count"][0]))]
        keeps = "features" in data or "features_kept" in data
        return EncoderState(
            batch=b, channels=c, height=h, width=w, committed=committed, caches=caches,
            token_chunks=[move(data["tokens"])] if "tokens" in data else [],
            feature_chunks=([move(data["features"])] if "features" in data else []) if keeps else None,
            pending=move(data["pending"]) if "pending" in data else None,
            last_committed=move(data["last_committed"]) if "last_committed" in data else None,
        )
