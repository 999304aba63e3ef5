"""Wan self-attention with a causal clip KV cache (histenc.kvcache), and the pass that records a clip.

``self_attention`` replaces ``WanSelfAttention.forward(x, freqs, transformer_options)`` of one
block for one DiT call (``installed``; ComfyUI reaches it through ``kv_wrapper``, a DIFFUSION_MODEL
wrapper that takes the live DiT from its executor, so a MODEL whose DiT object changes, a MultiGPU
deep clone or a reloaded model, patches its own blocks, never the first DiT it saw). With an
empty view it calls the original: bit-identical to stock. Otherwise q/k/v are the stock ones
(q/k projections, RMS norms, RoPE in the [..., d/2, 2, 2] layout), and

- the rotary phases are shifted in time by ``view.time_start``, so the pass sits at its real
  latent frames; only differences of positions enter attention, so the section and any context
  tokens other modes appended keep their relative places, while cached clips, rotated at their
  own real frames, land at the right distance;
- the section's K/V are joined by the selected clips' cached K/V: every token of the pass
  attends to its own tokens (bidirectional) and to past clips, which never attend back (causal
  across sections);
- in a record pass the first ``view.record_tokens`` tokens' K/V (the clip's own tokens, which
  come first: histenc.dit.wan appends context tokens after the section) are kept.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from ..kvcache import KV, AttentionView


def apply_rope(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` [B, L, heads, d] by ``freqs`` [1, L, 1, d/2, 2, 2] (the layout of Wan's rope_embedder)."""
    pairs = x.to(freqs.dtype).reshape(*x.shape[:-1], -1, 1, 2)
    out = freqs[..., 0] * pairs[..., 0] + freqs[..., 1] * pairs[..., 1]
    return out.reshape(*x.shape).type_as(x)


def shift_time(freqs: torch.Tensor, embedder, frames: int) -> torch.Tensor:
    """``freqs`` moved ``frames`` latent frames along time: R(shift) @ R(position) = R(position + shift).

    The embedder's h and w bands see position 0 (identity rotations), so only time moves.
    """
    if frames == 0:
        return freqs
    ids = torch.tensor([[[float(frames), 0.0, 0.0]]], device=freqs.device)
    shift = embedder(ids).movedim(1, 2).to(freqs.dtype)  # [1, 1, 1, d/2, 2, 2]
    return torch.matmul(shift, freqs)


def self_attention(view: AttentionView, embedder, module, block: int, original, x, freqs, transformer_options={}):
    """Drop-in for ``WanSelfAttention.forward`` of block ``block`` (bind the first five with partial)."""
    if not view.active(block):
        return original(x, freqs, transformer_options=transformer_options)
    b, s, n, d = *x.shape[:2], module.num_heads, module.head_dim
    freqs = shift_time(freqs, embedder, view.time_start)
    q = apply_rope(module.norm_q(module.q(x)).view(b, s, n, d), freqs)
    k = apply_rope(module.norm_k(module.k(x)).view(b, s, n, d), freqs)
    v = module.v(x).view(b, s, n, d)
    view.record(block, k, v)
    past = view.past_kv(block, b, k.device, k.dtype)
    if past is not None:
        k = torch.cat([k, past[0]], dim=1)
        v = torch.cat([v, past[1]], dim=1)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return module.o(out.transpose(1, 2).reshape(b, s, n * d))


def attention_patches(diffusion_model, view: AttentionView, originals) -> dict[str, object]:
    """Object-patch name -> replacement forward for every block the view covers.

    ``originals(name)`` gives the current forward under that name (ComfyUI: ``get_model_object``).
    """
    import functools

    patches = {}
    for i in sorted(view.blocks):
        name = f"diffusion_model.blocks.{i}.self_attn.forward"
        original = originals(name)
        if isinstance(original, functools.partial) and original.func is self_attention:
            original = original.args[4]  # re-patching a clone replaces our previous patch instead of nesting it
        module = diffusion_model.blocks[i].self_attn
        patches[name] = functools.partial(self_attention, view, diffusion_model.rope_embedder, module, i, original)
    return patches


@contextlib.contextmanager
def installed(diffusion_model, view: AttentionView):
    """``view``'s attention patches set on this DiT's blocks for the block of code, then taken off again
    (a forward another extension set on a block's attention is chained to and put back)."""
    saved = []
    try:
        if not view.empty:
            for name, forward in attention_patches(
                diffusion_model, view, lambda n: _module(diffusion_model, n).forward
            ).items():
                module = _module(diffusion_model, name)
                saved.append((module, module.__dict__.get("forward")))
                module.forward = forward
        yield diffusion_model
    finally:
        for module, own in reversed(saved):
            if own is None:
                del module.forward
            else:
                module.forward = own


def _module(diffusion_model, name: str):
    """'diffusion_model.blocks.3.self_attn.forward' -> that block's self-attention module."""
    return diffusion_model.get_submodule(name.split(".", 1)[1].rsplit(".", 1)[0])


def kv_wrapper(view: AttentionView, executor, *args, **kwargs):
    """A DIFFUSION_MODEL wrapper: the live DiT (``executor.class_obj``) runs with ``view``'s attention patches."""
    with installed(executor.class_obj, view):
        return executor(*args, **kwargs)


def clip_tokens(diffusion_model, latents: torch.Tensor) -> int:
    """How many tokens the DiT makes of ``latents`` [B, C, F, H, W] (what a record pass keeps)."""
    pt, ph, pw = diffusion_model.patch_size
    _, _, f, h, w = latents.shape
    return -(-f // pt) * -(-h // ph) * -(-w // pw)


def record_pass(
    diffusion_model, latents: torch.Tensor, text: torch.Tensor, view: AttentionView, *, device, dtype
) -> KV:
    """One DiT forward at t = 0 on a clip's clean latents; returns the K/V it recorded per block.

    ``view``'s block patches are installed for the pass. ``latents`` are in model space; an I2V
    model sees them as given frames (histenc.dit.wan.WanPatchifier.embed_input).
    """
    from .wan import WanPatchifier

    x = WanPatchifier(diffusion_model, device, dtype).embed_input(latents.to(device)).to(dtype)
    text = text.to(device=device, dtype=dtype)
    if text.shape[0] != x.shape[0]:
        text = text.expand(x.shape[0], *text.shape[1:])
    t = torch.zeros(x.shape[0], device=device)
    with torch.no_grad(), installed(diffusion_model, view):
        diffusion_model(x, t, text, transformer_options={})
    missing = sorted(view.blocks - set(view.recorded))
    if missing:
        raise ValueError(
            f"the record pass never reached block {missing[0]}'s self-attention, so this DiT's forward does not "
            "call that module; the clip KV cache cannot record this model, so remove it from the context."
        )
    return dict(view.recorded)
