"""Wan 2.1 / 2.2 adapter: the stock forward runs; per-call hooks put the context tokens beside the section.

``joint`` is a DIFFUSION_MODEL wrapper (histenc_nodes._common.attach_context adds it to the MODEL). It takes
the live DiT from the executor and reads the payload from ``transformer_options``; without one (or with no
tokens) the executor runs untouched, so the output is bit-identical to stock. With tokens, the stock forward
runs with a per-call copy of ``transformer_options`` whose ``patches_replace["dit"]`` holds a hook for every
block, and with a pre-hook on ``head``:

1. the first block's hook appends the context tokens to ``img`` after everything the stock forward put there
   (reference latent tokens, the section, in-context reference latents);
2. every block's hook extends ``pe`` (freqs) with the tokens' RoPE rows (box-averaged for coarse tokens, see
   ``histenc.dit.rope.box_rope``, moved like the section by the host's ``rope_options``) and ``vec`` (e0)
   with their modulation: clean (t = 0) on per-frame-timestep models (Wan 2.2 5B) or when the payload asks,
   the section's timestep otherwise; then it chains to the block's existing replace patch, else to the
   stock ``original_block``;
3. the head's pre-hook drops the context tokens, so the stock reference / ``main_len`` slicing still applies.

Whatever else the host's forward does (block indices, ``double_block`` patches, attention patches) runs
unchanged around the longer token sequence. ``forward_with_context`` is the same for a plain torch DiT with
no ``transformer_options`` patches (training): the block step is a forward pre-hook on each block there.
"""

from __future__ import annotations

import contextlib
import functools
import math

import torch

from ..context import ContextTokens, SectionGrid
from .info import ModelInfo, wan_info
from .payload import PAYLOAD_KEY
from .rope import MovedPositions, box_rope
from .stored import dequantised
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
        embed = self.model.patch_embedding  # the DiT's numbers, whatever the file stored (histenc.dit.stored)
        if isinstance(embed, ExtendedPatchEmbedding):
            embed = embed.embedding
        w = dequantised(embed, "patch_embedding").cpu()
        b = dequantised(embed, "patch_embedding", "bias").cpu()
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

    def rope(self, positions: torch.Tensor, extent: torch.Tensor | None, rope_options: dict | None = None, cells=None):
        """[1, N, 1, d/2, 2, 2] like the stock ``freqs`` rows, so they concatenate along the tokens; ``cells``: the
        section's grid, past whose edges a box repeats the edge cell (FramePack's rule, see ``box_rope``)."""
        embed = self.model.rope_embedder
        if rope_options:
            embed = MovedPositions(embed, rope_options)
        ext = None if extent is None else extent.to(self.device)
        return box_rope(embed, positions.to(self.device), ext, cells)


def _padded(n: int, p: int) -> int:
    return -(-n // p) * p


class WanContextHooks:
    """One DiT call's hooks: the context tokens after the stock tokens, their RoPE rows and modulation beside them."""

    def __init__(self, model, ctx: ContextTokens, rope: torch.Tensor, timestep: torch.Tensor, clean: bool):
        self.model, self.tokens, self.rope = model, ctx.tokens, rope
        self.count = ctx.count
        self.timestep, self.clean = timestep, clean
        self.stock_len = None  # tokens the stock forward put in img, known at the first block
        self._pe = self._vec = (None, None)  # (stock tensor, extended): every block gets the same pe and e0

    def step(self, img: torch.Tensor, pe: torch.Tensor, vec: torch.Tensor):
        """One block's (img, pe, vec) with the context in place; the first block appends the tokens."""
        if self.stock_len is None:
            self.stock_len = img.shape[1]
            tokens = self.tokens
            if tokens.shape[0] != img.shape[0]:
                tokens = tokens.repeat(math.ceil(img.shape[0] / tokens.shape[0]), 1, 1)[: img.shape[0]]
            img = torch.cat([img, tokens.to(img.dtype)], dim=1)
        return img, self._extended_pe(pe), self._extended_vec(vec, img.dtype)

    def _extended_pe(self, pe: torch.Tensor) -> torch.Tensor:
        if pe.shape[1] != self.stock_len:  # already extended (another hook of ours ran first) or not ours to touch
            return pe
        if self._pe[0] is not pe:
            self._pe = (pe, torch.cat([pe, self.rope.to(pe.device, pe.dtype)], dim=1))
        return self._pe[1]

    def _extended_vec(self, vec: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The blocks' modulation with rows for the context. Rows are kept per group of ``g`` tokens, ``g`` the
        largest count dividing both the section's tokens per stock row and the context (a frame's tokens for a
        window), so each block's ``modulation + e`` runs on as few rows as the stock per-frame path and the
        host's ``repeat_e`` spreads every row over its ``g`` tokens exactly."""
        single = vec.ndim == 3 or vec.shape[1] == 1  # [B, 6, D] (e.g. VACE) or [B, 1, 6, D]: one timestep
        if vec is self._vec[1]:  # already extended (another hook of ours ran first)
            return vec
        if single and not self.clean:  # every token shares the one timestep: so does the context
            return vec
        if self._vec[0] is not vec:
            e0 = vec.unsqueeze(1) if vec.ndim == 3 else vec
            per_row = self.stock_len // e0.shape[1] if self.stock_len % e0.shape[1] == 0 else 1
            g = math.gcd(per_row, self.count)
            rows = self._context_modulation(e0, dtype).expand(e0.shape[0], self.count // g, -1, -1)
            self._vec = (vec, torch.cat([expand_like_blocks(e0, self.stock_len // g), rows], dim=1))
        return self._vec[1]

    def _context_modulation(self, vec: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """[B or 1, 1, 6, D]: e0 at t = 0 (clean) or at the section's largest timestep (per batch item)."""
        t = self.timestep
        t = t.new_zeros(1) if self.clean else t.reshape(t.shape[0], -1).amax(dim=1)
        m = self.model
        e = m.time_embedding(sinusoid(m.freq_dim, t).to(device=vec.device, dtype=dtype))
        return m.time_projection(e).unflatten(1, (6, m.dim)).to(vec.dtype).unsqueeze(1)

    # --- how the step is installed ------------------------------------------------------------------------
    def block_patch(self, prior, args: dict, extra: dict) -> dict:
        """A ``patches_replace["dit"][("double_block", i)]`` entry: the step, then the block's own replace patch."""
        img, pe, vec = self.step(args["img"], args["pe"], args["vec"])
        args = {**args, "img": img, "pe": pe, "vec": vec}
        return prior(args, extra) if prior is not None else extra["original_block"](args)

    def options(self, transformer_options: dict) -> dict:
        """A copy of ``transformer_options`` for this call, with the step chained before every block."""
        replace = dict(transformer_options.get("patches_replace", {}))
        blocks = dict(replace.get("dit", {}))
        for i in range(len(self.model.blocks)):
            blocks[("double_block", i)] = functools.partial(self.block_patch, blocks.get(("double_block", i)))
        replace["dit"] = blocks
        return {**transformer_options, "patches_replace": replace}

    def _head_pre(self, module, args, kwargs):
        x = args[0] if args else kwargs["x"]
        if self.stock_len is None or x.shape[1] != self.stock_len + self.count:
            return None
        x = x[:, : self.stock_len]
        return ((x, *args[1:]), kwargs) if args else (args, {**kwargs, "x": x})

    def _block_pre(self, module, args, kwargs):
        names = ("x", "e", "freqs")
        given = {n: args[i] if i < len(args) else kwargs[n] for i, n in enumerate(names)}
        x, freqs, e = self.step(given["x"], given["freqs"], given["e"])
        new = {"x": x, "e": e, "freqs": freqs}
        args = tuple(new[names[i]] if i < len(names) else a for i, a in enumerate(args))
        return args, {**kwargs, **{n: new[n] for n in names[len(args) :]}}

    @contextlib.contextmanager
    def on_head(self):
        """The head's pre-hook for the call (the stock head, and whatever patches it, sees only stock tokens)."""
        handle = self.model.head.register_forward_pre_hook(self._head_pre, with_kwargs=True)
        try:
            yield
        finally:
            handle.remove()

    @contextlib.contextmanager
    def on_blocks(self):
        """The step as a forward pre-hook on every block: for DiTs that ignore ``transformer_options`` patches."""
        handles = [b.register_forward_pre_hook(self._block_pre, with_kwargs=True) for b in self.model.blocks]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()


def context_hooks(model, payload, x, timestep, transformer_options: dict, extra_frames: int = 0):
    """The hooks for one call of ``model`` on section ``x``, or None when the payload gives no tokens."""
    pt, ph, pw = (int(p) for p in model.patch_size)
    frames = _padded(x.shape[2], pt) + _padded(extra_frames, pt)
    grid = SectionGrid(frames, _padded(x.shape[3], ph), _padded(x.shape[4], pw), (pt, ph, pw))
    dit = WanPatchifier(model, x.device, x.dtype, payload.info)
    ctx = payload.resolve(dit, grid)
    if ctx.count == 0:
        return None
    per_frame = timestep.reshape(timestep.shape[0], -1).shape[1] > 1
    clean = payload.clean_context if payload.clean_context is not None else per_frame
    rope = dit.rope(ctx.positions, ctx.extent, transformer_options.get("rope_options"), grid.cells)
    return WanContextHooks(model, ctx, rope, timestep, clean)


def joint(executor, x, timestep, context, clip_fea=None, time_dim_concat=None, transformer_options={}, **kwargs):
    """The DIFFUSION_MODEL wrapper: the live DiT (``executor.class_obj``) runs its stock forward with the hooks."""
    payload = transformer_options.get(PAYLOAD_KEY)
    hooks = None
    if payload is not None:
        extra = 0 if time_dim_concat is None else time_dim_concat.shape[2]
        hooks = context_hooks(executor.class_obj, payload, x, timestep, transformer_options, extra)
    if hooks is None:
        return executor(x, timestep, context, clip_fea, time_dim_concat, transformer_options, **kwargs)
    with hooks.on_head():
        return executor(x, timestep, context, clip_fea, time_dim_concat, hooks.options(transformer_options), **kwargs)


def forward_with_context(model, payload, x, t, context, freqs=None, **kwargs):
    """``model.forward_orig`` with the context of ``payload`` (anything with ``resolve`` and ``clean_context``).

    For training: ``model`` may be a plain torch copy of the Wan layout (histenc.train.toy_dit) whose block
    loop has no ``transformer_options`` patches, so the block step runs as a forward pre-hook on each block;
    gradients reach the tokens the payload hands over.
    """
    hooks = context_hooks(model, payload, x, t, {})
    if hooks is None:
        return model.forward_orig(x, t, context, freqs=freqs, transformer_options={}, **kwargs)
    with hooks.on_blocks(), hooks.on_head():
        return model.forward_orig(x, t, context, freqs=freqs, transformer_options={}, **kwargs)
