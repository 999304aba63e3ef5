"""HunyuanVideo adapter: context tokens after ``img_in``, sliced off before ``final_layer``.

The native forward has many branches (reference latents, guiding frames, byT5 and vision tokens,
ControlNet, block patches). Instead of copying it, ``forward_orig`` runs the stock one while three
of the model's submodules are wrapped for that call only:

- ``img_in``: its first call (the noisy section) returns the section tokens followed by the context
  tokens, so every later step (attention mask length, ``img_len``) counts them as image tokens;
- ``pe_embedder``: the rotary phases of the context tokens (box-averaged over their footprint)
  are inserted right after the image tokens' phases;
- ``final_layer``: sees only the section tokens.

Context tokens share the section's modulation vector, as FramePack's HunyuanVideo does.
"""

from __future__ import annotations

import contextlib
import math

import torch

from ..context import SectionGrid
from .info import ModelInfo, hunyuan_info
from .payload import PAYLOAD_KEY
from .rope import box_rope


class HunyuanPatchifier:
    """HunyuanVideo's ``img_in`` as context sources see it (width, channels, patch, device)."""

    def __init__(self, model, device: torch.device, dtype: torch.dtype, info: ModelInfo | None = None):
        self.model = model
        self.info = info or hunyuan_info(model)
        self.width = self.info.width
        self.in_channels = self.info.latent_channels
        self.patch = self.info.patch
        self.device, self.dtype = device, dtype

    def embed_input(self, latents: torch.Tensor) -> torch.Tensor:
        extra = self.info.input_channels - latents.shape[1]
        if extra == 0:
            return latents
        return torch.cat([latents, latents.new_zeros(latents.shape[0], extra, *latents.shape[2:])], dim=1)

    def latent_patch_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        w = self.model.img_in.proj.weight.detach().float().cpu()
        b = self.model.img_in.proj.bias.detach().float().cpu()
        return w[:, : self.in_channels].clone(), b.clone()

    def patchify(self, latents: torch.Tensor) -> torch.Tensor:
        return self.model.img_in(self.embed_input(latents.to(self.device, self.dtype)))

    def rope(self, positions: torch.Tensor, extent: torch.Tensor | None) -> torch.Tensor:
        """[1, 1, N, d/2, 2, 2]: HunyuanVideo keeps the head axis before the tokens."""
        ext = None if extent is None else extent.to(self.device)
        return box_rope(self.model.pe_embedder, positions.to(self.device), ext).movedim(2, 1)


class _AppendContext(torch.nn.Module):
    def __init__(self, inner, tokens):
        super().__init__()
        self.inner, self.tokens, self.used = inner, tokens, False

    def forward(self, x):
        out = self.inner(x)
        if self.used:  # a reference latent also goes through img_in; it gets no context
            return out
        self.used = True
        tokens = self.tokens
        if tokens.shape[0] != out.shape[0]:
            tokens = tokens.repeat(math.ceil(out.shape[0] / tokens.shape[0]), 1, 1)[: out.shape[0]]
        self.count = out.shape[1]
        return torch.cat([out, tokens.to(out.dtype)], dim=1)


class _InsertPhases(torch.nn.Module):
    def __init__(self, inner, phases, image_tokens):
        super().__init__()
        self.inner, self.phases, self.image_tokens = inner, phases, image_tokens

    def forward(self, ids):
        pe = self.inner(ids)  # [B, 1, L_img + L_txt, d/2, 2, 2]
        n = self.image_tokens()
        phases = self.phases.to(pe.dtype).expand(pe.shape[0], -1, -1, -1, -1, -1)
        return torch.cat([pe[:, :, :n], phases, pe[:, :, n:]], dim=2)


class _SectionOnly(torch.nn.Module):
    def __init__(self, inner, keep):
        super().__init__()
        self.inner, self.keep = inner, keep

    def forward(self, x, *args, **kwargs):
        return self.inner(x[:, : x.shape[1] - self.keep], *args, **kwargs)


@contextlib.contextmanager
def _wrapped(model, **wrappers):
    saved = {name: getattr(model, name) for name in wrappers}
    try:
        for name, module in wrappers.items():
            setattr(model, name, module)
        yield
    finally:
        for name, module in saved.items():
            setattr(model, name, module)


def forward_orig(
    model, original, img, img_ids, txt, txt_ids, txt_mask, timesteps, *args, transformer_options={}, **kwargs
):
    """Drop-in for ``HunyuanVideo.forward_orig`` (bind ``model`` and the previous ``original`` with partial)."""
    payload = transformer_options.get(PAYLOAD_KEY)
    if payload is None:
        return original(
            img, img_ids, txt, txt_ids, txt_mask, timesteps, *args, transformer_options=transformer_options, **kwargs
        )
    dit = HunyuanPatchifier(model, img.device, img.dtype, payload.info)
    grid = SectionGrid(img.shape[2], img.shape[3], img.shape[4], dit.patch)
    ctx = payload.resolve(dit, grid)
    if ctx.count == 0:
        return original(
            img, img_ids, txt, txt_ids, txt_mask, timesteps, *args, transformer_options=transformer_options, **kwargs
        )
    append = _AppendContext(model.img_in, ctx.tokens)
    # the host passes (y, txt_byt5, clip_fea, guidance, guiding_frame_index, ref_latent) positionally
    ref = args[5] if len(args) > 5 else kwargs.get("ref_latent")
    ref_tokens = 0 if ref is None else math.prod(s // p for s, p in zip(ref.shape[2:], dit.patch))
    phases = _InsertPhases(model.pe_embedder, dit.rope(ctx.positions, ctx.extent), lambda: ref_tokens + append.count)
    with _wrapped(model, img_in=append, pe_embedder=phases, final_layer=_SectionOnly(model.final_layer, ctx.count)):
        return original(
            img, img_ids, txt, txt_ids, txt_mask, timesteps, *args, transformer_options=transformer_options, **kwargs
        )
