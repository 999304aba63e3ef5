"""Optional additions around the history encoder: several sources at once, and cross-attention.

``CombinedContext`` concatenates the tokens of several context sources, e.g. a 4x4x2 encoder
(spatial detail) with a 2x2x8 one (temporal reach) and a 3-frame raw ``SlidingWindow`` (smooth
continuation of the last shot). Each keeps its own positions, so the DiT sees every token at
the time and place it summarises.

``CrossAttentionEnhancer`` is the IP-Adapter-style refinement: per DiT block, a cross-attention
from the block's hidden states to the encoder's penultimate (512-wide) features, whose output
projection starts at zero, so adding it changes nothing until it is trained. Wiring, for the
DiT adapter's block loop (features from ``HistoryEncoder.features(history)``, once per section)::

    for i, block in enumerate(blocks):
        x = block(x, ...)
        x = x + enhancer.residual(i, x, features)   # or only on x[:, :n_section]

The enhancer is model-agnostic: it only needs the block count and the DiT width.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from histenc.context import ContextTokens, SectionGrid
from histenc.window import SlidingWindow


class CombinedContext:
    """Context source that concatenates other sources' tokens (several encoders, plus a raw window)."""

    def __init__(self, sources: Sequence):
        self.sources = list(sources)
        if not self.sources:
            raise ValueError("CombinedContext needs at least one context source; pass an encoder or a window.")

    @classmethod
    def encoders_with_window(cls, encoders: Sequence, window_frames: int = 0) -> "CombinedContext":
        """Encoders plus, when ``window_frames`` > 0, the last raw latent frames beside them."""
        sources = list(encoders)
        if window_frames > 0:
            sources.append(SlidingWindow(window_frames))
        return cls(sources)

    def context(self, history: torch.Tensor, grid: SectionGrid, dit) -> ContextTokens:
        return ContextTokens.cat([s.context(history, grid, dit) for s in self.sources])

    def reset(self) -> None:
        for s in self.sources:
            if hasattr(s, "reset"):
                s.reset()


class EnhancerLayer(nn.Module):
    """One block's cross-attention: queries from the hidden states, keys/values from encoder features."""

    def __init__(self, width: int, feature_dim: int = 512, inner: int = 512, heads: int = 8):
        super().__init__()
        if inner % heads:
            raise ValueError(f"cross-attention width {inner} is not divisible by {heads} heads; choose a divisor.")
        self.heads = heads
        self.norm_hidden = nn.LayerNorm(width, elementwise_affine=False)
        self.norm_features = nn.LayerNorm(feature_dim)
        self.q = nn.Linear(width, inner)
        self.k = nn.Linear(feature_dim, inner)
        self.v = nn.Linear(feature_dim, inner)
        self.out = nn.Linear(inner, width)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, hidden: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        b = hidden.shape[0]
        if features.shape[0] != b:
            features = features.expand(b, -1, -1)
        split = lambda z: z.unflatten(-1, (self.heads, -1)).transpose(1, 2)  # noqa: E731
        q = split(self.q(self.norm_hidden(hidden)))
        f = self.norm_features(features)
        a = F.scaled_dot_product_attention(q, split(self.k(f)), split(self.v(f)))
        return self.out(a.transpose(1, 2).flatten(2))


class CrossAttentionEnhancer(nn.Module):
    """Zero-initialised cross-attention from every DiT block to the encoder's penultimate features."""

    def __init__(self, blocks: int, width: int, feature_dim: int = 512, inner: int = 512, heads: int = 8):
        super().__init__()
        if int(blocks) < 1:
            raise ValueError(f"the enhancer needs at least one DiT block, got {blocks}.")
        self.width, self.feature_dim = int(width), int(feature_dim)
        self.layers = nn.ModuleList(EnhancerLayer(width, feature_dim, inner, heads) for _ in range(int(blocks)))

    @classmethod
    def for_encoder(cls, encoder, blocks: int, inner: int = 512, heads: int = 8) -> "CrossAttentionEnhancer":
        if not encoder.config.uses_hr:
            raise ValueError(
                f"the {encoder.config.variant!r} encoder has no HR features to attend to; use 'full' or 'without_lr'."
            )
        return cls(blocks, encoder.config.width, encoder.hr.out_channels, inner, heads)

    def residual(self, block_index: int, hidden: torch.Tensor, features: torch.Tensor | None) -> torch.Tensor:
        """What to add to block ``block_index``'s output ``hidden`` [B, L, D]; zeros while untrained."""
        if features is None or features.shape[1] == 0:
            return torch.zeros_like(hidden)
        if not 0 <= block_index < len(self.layers):
            raise ValueError(f"block index {block_index} is outside the enhancer's {len(self.layers)} blocks.")
        if hidden.shape[-1] != self.width or features.shape[-1] != self.feature_dim:
            raise ValueError(
                f"the enhancer expects hidden states {self.width} wide and features {self.feature_dim} wide, got "
                f"{hidden.shape[-1]} and {features.shape[-1]}; build it for this model and encoder."
            )
        layer = self.layers[block_index]
        dtype = layer.q.weight.dtype
        out = layer(hidden.to(dtype), features.to(device=hidden.device, dtype=dtype))
        return out.to(hidden.dtype)


class EnhancedEncoder:
    """Context source: an encoder's tokens, plus its enhancer acting after every DiT block.

    The enhancer adds ``residual(i, section hidden states, penultimate features)`` to the section
    tokens only; the features are computed once per section with the tokens.
    """

    def __init__(self, encoder, enhancer: CrossAttentionEnhancer):
        self.encoder, self.enhancer = encoder, enhancer

    @property
    def config(self):
        return self.encoder.config

    def context(self, history: torch.Tensor, grid: SectionGrid, dit) -> ContextTokens:
        return self.encoder.context(history, grid, dit)

    def block_hook(self, history: torch.Tensor, dit):
        self.encoder.keep_features = True
        features = self.encoder.features(history)

        def hook(i: int, hidden: torch.Tensor, n_section: int) -> torch.Tensor:
            if i >= len(self.enhancer.layers):
                return hidden
            section = hidden[:, :n_section]
            extra = self.enhancer.residual(i, section, features)
            return torch.cat([section + extra, hidden[:, n_section:]], dim=1)

        return hook

