"""Building blocks of the history encoder that can run on a stream of frames.

Two properties make the encoder incremental (the "convolutional concat"):

* every temporal convolution is causal and aligned to its stride: output step ``j`` of a
  convolution with temporal kernel ``k`` and stride ``s`` reads input frames
  ``[j*s - (k - s), j*s + s - 1]``, so it never looks past the end of its own stride group.
  Feeding a chunk together with the last ``k - s`` input frames of the previous chunk gives
  exactly the outputs a single pass over everything would give (the first chunk sees zeros,
  which is the full pass's padding);
* attention runs inside each output time step (over space only), so it never mixes the past
  with the future either.
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from torch import nn

RATE_PATTERN = re.compile(r"^\s*(\d+)\s*[xX*]\s*(\d+)\s*[xX*]\s*(\d+)\s*$")


def _power_of_two(n: int) -> bool:
    return n >= 1 and (n & (n - 1)) == 0


def parse_rate(rate) -> tuple[int, int, int]:
    """An encoding rate as the paper writes it, H x W x T ("4x4x2" or (4, 4, 2)), checked."""
    if isinstance(rate, str):
        m = RATE_PATTERN.match(rate)
        if not m:
            raise ValueError(f"encoding rate {rate!r} is not of the form HxWxT; write it like '4x4x2'.")
        rate = tuple(int(v) for v in m.groups())
    try:
        h, w, t = (int(v) for v in rate)
    except (TypeError, ValueError):
        raise ValueError(f"encoding rate {rate!r} is not three integers H x W x T; write it like '4x4x2'.") from None
    if not all(_power_of_two(v) for v in (h, w, t)):
        raise ValueError(f"encoding rate {h}x{w}x{t} must be powers of two on every axis, e.g. 4x4x2 or 2x2x8.")
    return h, w, t


def rate_name(rate: tuple[int, int, int]) -> str:
    return "x".join(str(v) for v in rate)


def stride_plan(factor_t: int, factor_h: int, factor_w: int) -> list[tuple[int, int, int]]:
    """Stride-2 steps that reach the total downsampling, temporal steps first, then spatial."""
    plan = [(2, 1, 1)] * int(math.log2(factor_t))
    sh, sw = int(math.log2(factor_h)), int(math.log2(factor_w))
    for i in range(max(sh, sw)):
        plan.append((1, 2 if i < sh else 1, 2 if i < sw else 1))
    return plan


class CausalConv3d(nn.Module):
    """Conv3d, causal and stride-aligned in time, 'same'-padded in space; streams with a frame cache."""

    def __init__(self, cin: int, cout: int, kernel=(3, 3, 3), stride=(1, 1, 1)):
        super().__init__()
        kt, kh, kw = kernel
        self.stride_t = int(stride[0])
        if kt < self.stride_t:
            raise ValueError(
                f"temporal kernel {kt} is shorter than its stride {self.stride_t}; frames would be skipped."
            )
        self.time_pad = kt - self.stride_t
        self.conv = nn.Conv3d(cin, cout, kernel, stride, padding=(0, kh // 2, kw // 2))

    def forward(self, x: torch.Tensor, cache: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x [B, C, L, H, W] with L a multiple of the temporal stride; returns (y, cache for the next chunk)."""
        if self.time_pad == 0:
            return self.conv(x), None
        if cache is None:
            cache = x.new_zeros(x.shape[0], x.shape[1], self.time_pad, *x.shape[3:])
        x = torch.cat([cache.to(x.dtype), x], dim=2)
        return self.conv(x), x[:, :, -self.time_pad :].clone()


class FrameAttention(nn.Module):
    """Pre-norm multi-head self-attention over the positions of each time step, with a residual."""

    def __init__(self, channels: int, heads: int):
        super().__init__()
        if channels % heads:
            raise ValueError(f"attention width {channels} is not divisible by {heads} heads; choose a divisor.")
        self.heads = heads
        self.norm = nn.LayerNorm(channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.out = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        seq = x.permute(0, 2, 3, 4, 1).reshape(b * t, h * w, c)
        q, k, v = self.qkv(self.norm(seq)).chunk(3, dim=-1)
        split = lambda z: z.unflatten(-1, (self.heads, c // self.heads)).transpose(1, 2)  # noqa: E731
        a = F.scaled_dot_product_attention(split(q), split(k), split(v))
        seq = seq + self.out(a.transpose(1, 2).reshape(b * t, h * w, c))
        return seq.reshape(b, t, h, w, c).permute(0, 4, 1, 2, 3)


class ResidualBranch(nn.Module):
    """The HR branch up to its penultimate features: causal 3D convs with SiLU, then frame attention.

    Channels grow 64 -> 128 -> 256 -> 512 and stay at 512; each strided step halves one or
    more axes (temporal steps first). With fewer strided steps than channel steps the remaining
    channel steps keep the resolution.
    """

    def __init__(
        self, in_channels: int, strides: list[tuple[int, int, int]], hidden=(64, 128, 256, 512), heads: int = 8
    ):
        super().__init__()
        hidden = [int(c) for c in hidden]
        self.conv_in = CausalConv3d(in_channels, hidden[0])
        steps = max(len(strides), len(hidden) - 1)
        chans = [hidden[min(i, len(hidden) - 1)] for i in range(steps + 1)]
        self.stages = nn.ModuleList(
            CausalConv3d(chans[i], chans[i + 1], stride=strides[i] if i < len(strides) else (1, 1, 1))
            for i in range(steps)
        )
        self.attention = FrameAttention(chans[-1], heads)
        self.out_channels = chans[-1]

    def convs(self) -> list[CausalConv3d]:
        return [self.conv_in, *self.stages]

    def forward(self, x: torch.Tensor, caches: list | None = None) -> tuple[torch.Tensor, list]:
        """x [B, C, L, H, W] -> (features [B, 512, L', H', W'], new caches, one per conv)."""
        layers = self.convs()
        caches = caches if caches is not None else [None] * len(layers)
        new = []
        for layer, cache in zip(layers, caches):
            x, c = layer(x, cache)
            x = F.silu(x)
            new.append(c)
        return self.attention(x), new
