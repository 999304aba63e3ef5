"""Stand-ins for training without ComfyUI: Wan 2.1's T2V DiT in plain PyTorch and a fixed latent map.

Why a copy: ``histenc`` never imports ComfyUI, yet ``python -m histenc.train`` and the learning proof
must run a DiT. This module re-implements the native ``WanModel`` (T2V) with the same attribute
names, block call signature and state-dict keys, so

* ``histenc.dit.wan.forward_with_context`` (the context adapter's hooks) runs it unchanged,
* ``histenc.lora.LoRA`` finds the same linear layers (the class is named ``WanModel`` on purpose:
  the LoRA layout is chosen by class name), and saved LoRAs use the stock loader's keys,
* a native Wan state dict loads into it strictly and gives the same output
  (tests/histenc/test_frame_query.py checks this against ComfyUI on the tiny fixture).

Only the T2V path is here: no image cross-attention, VACE, camera adapter or reference conv.

``PixelLatents`` is the VAE stand-in for procedural data: a fixed, exactly invertible linear map
(2x2 space-to-depth, then an orthonormal 12 -> 16 channel mix), so frame-query PSNR measured on
decoded frames reflects only what the encoder and DiT kept, not a VAE's own loss.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..dit.rope import RopeND
from ..dit.wan import sinusoid


def apply_rope(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Rotate pairs of channels by ``freqs`` [1, N, 1, d/2, 2, 2] (Wan / Flux layout), x [B, N, H, d]."""
    x_ = x.to(freqs.dtype).reshape(*x.shape[:-1], -1, 1, 2)
    out = freqs[..., 0] * x_[..., 0] + freqs[..., 1] * x_[..., 1]
    return out.reshape(*x.shape).type_as(x)


def attention(q, k, v, heads: int) -> torch.Tensor:
    b, n, d = q.shape
    split = lambda z: z.view(b, -1, heads, d // heads).transpose(1, 2)  # noqa: E731
    return F.scaled_dot_product_attention(split(q), split(k), split(v)).transpose(1, 2).reshape(b, n, d)


def repeat_e(e: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    if e.size(1) <= 1 or e.size(1) == x.size(1):
        return e
    repeats = x.size(1) // e.size(1)
    if repeats * e.size(1) == x.size(1):
        return torch.repeat_interleave(e, repeats, dim=1)
    return torch.repeat_interleave(e, repeats + 1, dim=1)[:, : x.size(1)]


class WanAttention(nn.Module):
    def __init__(self, dim: int, heads: int, eps: float = 1e-6):
        super().__init__()
        self.num_heads, self.head_dim = heads, dim // heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q = nn.RMSNorm(dim, eps=eps)
        self.norm_k = nn.RMSNorm(dim, eps=eps)

    def forward(self, x, freqs):
        b, s, d = x.shape
        n = self.num_heads
        q = apply_rope(self.norm_q(self.q(x)).view(b, s, n, d // n), freqs).view(b, s, d)
        k = apply_rope(self.norm_k(self.k(x)).view(b, s, n, d // n), freqs).view(b, s, d)
        return self.o(attention(q, k, self.v(x), n))

    def cross(self, x, context):
        return self.o(attention(self.norm_q(self.q(x)), self.norm_k(self.k(context)), self.v(context), self.num_heads))


class WanCrossAttention(WanAttention):
    def forward(self, x, context, context_img_len=None):
        return self.cross(x, context)


class WanAttentionBlock(nn.Module):
    def __init__(self, dim: int, ffn_dim: int, heads: int, eps: float = 1e-6):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps, elementwise_affine=False)
        self.self_attn = WanAttention(dim, heads, eps)
        self.norm3 = nn.LayerNorm(dim, eps, elementwise_affine=True)
        self.cross_attn = WanCrossAttention(dim, heads, eps)
        self.norm2 = nn.LayerNorm(dim, eps, elementwise_affine=False)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(ffn_dim, dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)

    def forward(self, x, e, freqs, context, context_img_len=None, transformer_options=None):
        if e.ndim < 4:
            e = (self.modulation.to(x.dtype) + e).chunk(6, dim=1)
        else:
            e = (self.modulation.to(x.dtype).unsqueeze(0) + e).unbind(2)
        y = self.self_attn(repeat_e(e[0], x) + self.norm1(x) * (1 + repeat_e(e[1], x)), freqs)
        x = x + y * repeat_e(e[2], x)
        x = x + self.cross_attn(self.norm3(x), context)
        y = self.ffn(repeat_e(e[3], x) + self.norm2(x) * (1 + repeat_e(e[4], x)))
        return x + y * repeat_e(e[5], x)


class Head(nn.Module):
    def __init__(self, dim: int, out_dim: int, patch_size, eps: float = 1e-6):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps, elementwise_affine=False)
        self.head = nn.Linear(dim, math.prod(patch_size) * out_dim)
        self.modulation = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)

    def forward(self, x, e):
        if e.ndim < 3:
            e = (self.modulation.to(x.dtype) + e.unsqueeze(1)).chunk(2, dim=1)
        else:
            e = (self.modulation.to(x.dtype).unsqueeze(0) + e.unsqueeze(2)).unbind(2)
        return self.head(repeat_e(e[0], x) + self.norm(x) * (1 + repeat_e(e[1], x)))


class WanModel(nn.Module):
    """Wan 2.1 T2V backbone (native key layout); ``forward(x, timestep, context)`` like ComfyUI's."""

    def __init__(
        self,
        dim: int = 128,
        ffn_dim: int = 256,
        num_heads: int = 1,
        num_layers: int = 2,
        in_dim: int = 16,
        out_dim: int = 16,
        text_dim: int = 4096,
        freq_dim: int = 256,
        patch_size=(1, 2, 2),
        eps: float = 1e-6,
    ):
        super().__init__()
        if dim % num_heads or (dim // num_heads) % 2:
            raise ValueError(
                f"DiT width {dim} must split into {num_heads} heads of an even size; change dim or num_heads."
            )
        self.patch_size = tuple(int(p) for p in patch_size)
        self.dim, self.ffn_dim, self.freq_dim, self.num_heads = int(dim), int(ffn_dim), int(freq_dim), int(num_heads)
        self.in_dim, self.out_dim, self.text_dim = int(in_dim), int(out_dim), int(text_dim)
        self.patch_embedding = nn.Conv3d(in_dim, dim, kernel_size=self.patch_size, stride=self.patch_size)
        self.text_embedding = nn.Sequential(nn.Linear(text_dim, dim), nn.GELU(approximate="tanh"), nn.Linear(dim, dim))
        self.time_embedding = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(dim, dim * 6))
        self.blocks = nn.ModuleList(WanAttentionBlock(dim, ffn_dim, num_heads, eps) for _ in range(num_layers))
        self.head = Head(dim, out_dim, self.patch_size, eps)
        self.rope_embedder = RopeND.for_head_dim(dim // num_heads)
        self.img_emb = None
        self.ref_conv = None

    def config(self) -> dict:
        return {
            "dim": self.dim,
            "ffn_dim": self.ffn_dim,
            "num_heads": self.num_heads,
            "num_layers": len(self.blocks),
            "in_dim": self.in_dim,
            "out_dim": self.out_dim,
            "text_dim": self.text_dim,
            "freq_dim": self.freq_dim,
            "patch_size": list(self.patch_size),
        }

    def rope_encode(self, t: int, h: int, w: int, t_start: float = 0.0, device=None) -> torch.Tensor:
        pt, ph, pw = self.patch_size
        ids = torch.stack(
            torch.meshgrid(
                torch.arange(-(-t // pt), dtype=torch.float32, device=device) + t_start,
                torch.arange(-(-h // ph), dtype=torch.float32, device=device),
                torch.arange(-(-w // pw), dtype=torch.float32, device=device),
                indexing="ij",
            ),
            dim=-1,
        )
        return self.rope_embedder(ids.reshape(1, -1, 3)).movedim(1, 2)

    def forward_orig(self, x, t, context, clip_fea=None, freqs=None, transformer_options=None, **kwargs):
        x = self.patch_embedding(x.float()).to(x.dtype)
        grid = x.shape[2:]
        x = x.flatten(2).transpose(1, 2)
        e = self.time_embedding(sinusoid(self.freq_dim, t.flatten()).to(x.dtype))
        e = e.reshape(t.shape[0], -1, e.shape[-1])
        e0 = self.time_projection(e).unflatten(2, (6, self.dim))
        context = self.text_embedding(context)
        for block in self.blocks:
            x = block(x, e=e0, freqs=freqs, context=context)
        return self.unpatchify(self.head(x, e), grid)

    def forward(self, x, timestep, context, transformer_options=None, **kwargs):
        freqs = self.rope_encode(*x.shape[2:], device=x.device)
        return self.forward_orig(x, timestep, context, freqs=freqs, transformer_options=transformer_options or {})

    def unpatchify(self, x: torch.Tensor, grid) -> torch.Tensor:
        c, b = self.out_dim, x.shape[0]
        u = x[:, : math.prod(grid)].view(b, *grid, *self.patch_size, c)
        u = torch.einsum("bfhwpqrc->bcfphqwr", u)
        return u.reshape(b, c, *[i * j for i, j in zip(grid, self.patch_size)])


class PixelLatents:
    """Frames [T, H, W, 3] in [0, 1] <-> latents [1, 16, T, H/2, W/2]; linear, fixed by ``seed``, lossless."""

    MEAN, STD = 0.35, 0.2  # rough pixel statistics of procedural frames: latents come out near unit scale

    def __init__(self, channels: int = 16, seed: int = 0):
        if channels < 12:
            raise ValueError(f"PixelLatents needs at least 12 latent channels (2x2x3 pixels), got {channels}.")
        g = torch.Generator().manual_seed(int(seed))
        q, _ = torch.linalg.qr(torch.randn(channels, 12, generator=g))
        self.mix = q  # [C, 12], orthonormal columns: mix.T @ mix = I
        self.channels = channels

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        t, h, w, _ = frames.shape
        if h % 2 or w % 2:
            raise ValueError(f"frames of {w}x{h} pixels must have even width and height for PixelLatents.")
        x = F.pixel_unshuffle((frames.permute(0, 3, 1, 2).float() - self.MEAN) / self.STD, 2)  # [T, 12, H/2, W/2]
        z = torch.einsum("ck,tkhw->cthw", self.mix, x)
        return z.unsqueeze(0)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        x = torch.einsum("ck,cthw->tkhw", self.mix, latents[0].float())
        return (F.pixel_shuffle(x, 2) * self.STD + self.MEAN).permute(0, 2, 3, 1)
