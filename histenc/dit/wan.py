"""Wan 2.1 / 2.2 adapter: context tokens placed after the patch embedding of the native WanModel.

The pack installs ``forward_orig`` below as an object patch on ``diffusion_model.forward_orig``.
Without a payload it calls the original untouched (bit-identical output). With one, the forward
is the stock one with three changes:

1. the context tokens are appended after the section tokens, with their RoPE phases
   appended to ``freqs`` (box-averaged for coarse tokens, see ``histenc.dit.box_rope``);
2. when the model runs on per-frame timesteps (Wan 2.2 TI2V) or the payload asks for it, the
   context tokens are modulated as clean (t = 0) while the section keeps its own timesteps;
3. the context tokens are dropped before the head, so only section tokens are un-patchified.

The block loop keeps ``patches_replace["dit"]`` working exactly as in the stock forward.
"""

from __future__ import annotations

import math

import torch

from ..context import SectionGrid
from .info import ModelInfo, wan_info
from .payload import PAYLOAD_KEY
from .rope import box_rope
from ..extension import ExtendedPatchEmbedding


def sinusoid(dim: int, position: torch.Tensor) -> torch.Tensor:
    """Wan's 1-d sinusoidal timestep embedding (cos then sin), float32."""
    half = dim // 2
    position = position.type(torch.float32)
    angles = torch.outer(position, torch.pow(10000, -torch.arange(half).to(position).div(half)))
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


def expand_like_blocks(e: torch.Tensor, length: int) -> torch.Tensor:
    """Per-frame modulation [B, F, ...] -> per-token [B, length, ...], the way Wan's blocks repeat it."""
    if e.shape[1] == 1 or e.shape[1] == length:
        return e.expand(e.shape[0], length, *e.shape[2:]) if e.shape[1] == 1 else e
    repeats = length // e.shape[1]
    if repeats * e.shape[1] != length:
        repeats += 1
    return torch.repeat_interleave(e, repeats, dim=1)[:, :length]


class WanPatchifier:
    """The DiT's own patch embedding, as context sources see it (width, channels, patch, device)."""

    def __init__(self, model, device: torch.device, dtype: torch.dtype, info: ModelInfo | None = None):
        self.model = model
        self.info = info or wan_info(model)
        self.width = self.info.width
        self.in_channels = self.info.latent_channels  # the patch embedding may take i2v conditioning channels too
        self.patch = self.info.patch
        self.device = device
        self.dtype = dtype

    def embed_input(self, latents: torch.Tensor) -> torch.Tensor:
        """Lay clean history latents out as the patch embedding's input.

        An I2V model (in_dim = 2 * C + 4) sees its conditioning channels as well: a history
        frame is shown as a frame it was given (mask 1, image = the frame itself). Other extra
        channels are zero.
        """
        extra = self.info.input_channels - latents.shape[1]
        if extra == 0:
            return latents
        if self.info.i2v:
            ones = torch.ones_like(latents[:, :4])
            return torch.cat([latents, ones, latents], dim=1)
        pad = latents.new_zeros(latents.shape[0], extra, *latents.shape[2:])
        return torch.cat([latents, pad], dim=1)

    def latent_patch_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight [D, C, pt, ph, pw], bias [D]) of the patch embedding folded for latent-only input.

        Equals ``patchify`` on clean latents: for an I2V layout the image channels' weight is added
        to the latent's and the mask channels (all ones) fold into the bias. Context sources copy
        these to initialise their own trainable projections.
        """
        w = self.model.patch_embedding.weight.detach().float().cpu()
        b = self.model.patch_embedding.bias.detach().float().cpu()
        c = self.in_channels
        if self.info.i2v:
            return w[:, :c] + w[:, c + 4 :], b + w[:, c : c + 4].sum(dim=(1, 2, 3, 4))
        return w[:, :c].clone(), b.clone()

    def patchify(self, latents: torch.Tensor) -> torch.Tensor:
        x = self.embed_input(latents.to(self.device))
        embed = self.model.patch_embedding
        if isinstance(embed, ExtendedPatchEmbedding):  # the extension's condition belongs to the section, not history
            embed = embed.embedding
        x = embed(x.float()).to(self.dtype)
        return x.flatten(2).transpose(1, 2)

    def rope(self, positions: torch.Tensor, extent: torch.Tensor | None) -> torch.Tensor:
        return box_rope(
            self.model.rope_embedder, positions.to(self.device), None if extent is None else extent.to(self.device)
        )


def forward_orig(model, original, x, t, context, clip_fea=None, freqs=None, transformer_options={}, **kwargs):
    """Drop-in for ``WanModel.forward_orig`` (bind ``model`` and the previous ``original`` with partial)."""
    payload = transformer_options.get(PAYLOAD_KEY)
    if payload is None:
        return original(
            x, t, context, clip_fea=clip_fea, freqs=freqs, transformer_options=transformer_options, **kwargs
        )

    grid = SectionGrid(x.shape[2], x.shape[3], x.shape[4], tuple(model.patch_size))
    dit = WanPatchifier(model, x.device, x.dtype, payload.info)
    ctx = payload.resolve(dit, grid)

    x = model.patch_embedding(x.float()).to(x.dtype)
    grid_sizes = x.shape[2:]
    x = x.flatten(2).transpose(1, 2)
    batch = x.shape[0]

    e = model.time_embedding(sinusoid(model.freq_dim, t.flatten()).to(dtype=x[0].dtype))
    e = e.reshape(t.shape[0], -1, e.shape[-1])
    e0 = model.time_projection(e).unflatten(2, (6, model.dim))

    full_ref = None
    if model.ref_conv is not None:
        full_ref = kwargs.get("reference_latent", None)
        if full_ref is not None:
            full_ref = model.ref_conv(full_ref).flatten(2).transpose(1, 2)
            x = torch.concat((full_ref, x), dim=1)
    n_main = x.shape[1]

    n_ctx = ctx.count
    e_head = e
    if n_ctx:
        tokens = ctx.tokens
        if tokens.shape[0] != batch:
            tokens = tokens.repeat(math.ceil(batch / tokens.shape[0]), 1, 1)[:batch]
        x = torch.cat([x, tokens.to(x.dtype)], dim=1)
        freqs = torch.cat([freqs, dit.rope(ctx.positions, ctx.extent).to(freqs.dtype)], dim=1)
        clean = payload.clean_context if payload.clean_context is not None else e.shape[1] > 1
        if clean:
            e_clean = model.time_embedding(sinusoid(model.freq_dim, t.new_zeros(1)).to(dtype=e.dtype))
            e0_clean = model.time_projection(e_clean).unflatten(1, (6, model.dim))  # [1, 6, dim]
            e0 = torch.cat([expand_like_blocks(e0, n_main), e0_clean[None].expand(e0.shape[0], n_ctx, -1, -1)], dim=1)
            e_head = expand_like_blocks(e, n_main)

    context = model.text_embedding(context)
    context_img_len = None
    if clip_fea is not None:
        if model.img_emb is not None:
            context = torch.concat([model.img_emb(clip_fea), context], dim=1)
        context_img_len = clip_fea.shape[-2]

    blocks_replace = transformer_options.get("patches_replace", {}).get("dit", {})
    for i, block in enumerate(model.blocks):
        if ("double_block", i) in blocks_replace:

            def block_wrap(args, block=block):
                out = {}
                out["img"] = block(
                    args["img"],
                    context=args["txt"],
                    e=args["vec"],
                    freqs=args["pe"],
                    context_img_len=context_img_len,
                    transformer_options=args["transformer_options"],
                )
                return out

            out = blocks_replace[("double_block", i)](
                {"img": x, "txt": context, "vec": e0, "pe": freqs, "transformer_options": transformer_options},
                {"original_block": block_wrap},
            )
            x = out["img"]
        else:
            x = block(
                x,
                e=e0,
                freqs=freqs,
                context=context,
                context_img_len=context_img_len,
                transformer_options=transformer_options,
            )

    x = model.head(x[:, :n_main], e_head)
    if full_ref is not None:
        x = x[:, full_ref.shape[1] :]
    return model.unpatchify(x, grid_sizes)
