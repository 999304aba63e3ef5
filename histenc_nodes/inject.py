"""The injection joint on ComfyUI's side: clone a MODEL and route a context payload into its DiT."""

from __future__ import annotations

import functools

import torch
from comfy_api.latest import io

from ..histenc.dit.payload import PAYLOAD_KEY, ContextPayload
from ..histenc.dit import hunyuan, wan

# A list of histenc context sources (sliding window, history encoder, packing, ...), chained by the mode nodes.
Context = io.Custom("HISTENC_CONTEXT")

SUPPORTED = {"WanModel": wan.forward_orig, "HunyuanVideo": hunyuan.forward_orig}
PATCHIFIERS = {"WanModel": wan.WanPatchifier, "HunyuanVideo": hunyuan.HunyuanPatchifier}


def family(model) -> str:
    """Which adapter serves this MODEL, or one sentence saying it is not supported."""
    dm = model.get_model_object("diffusion_model")
    name = type(dm).__name__
    if name not in SUPPORTED:
        raise ValueError(
            f"the model's DiT is {name}, which has no context adapter yet; "
            "load a Wan 2.1 / 2.2 (WanModel) or HunyuanVideo model."
        )
    return name


def model_dit(model, device=None, dtype=torch.float32):
    """The MODEL's DiT as the core sees it (width, latent channels, patch, patch embedding)."""
    dm = model.get_model_object("diffusion_model")
    return PATCHIFIERS[family(model)](dm, torch.device(device or "cpu"), dtype)


def uses_clean_context(model) -> bool:
    """Wan 2.2 runs on per-frame timesteps, so its context tokens are modulated as clean (t = 0)."""
    return type(model.model).__name__ == "WAN22"


def history_in_model_space(model, latent: dict | None) -> torch.Tensor | None:
    if latent is None:
        return None
    samples = latent["samples"]
    if samples.ndim != 5:
        raise ValueError(
            f"history must be a video LATENT [batch, channels, frames, height, width], got shape {tuple(samples.shape)}; "
            "connect the LATENT of a video (e.g. a previous sampler's output)."
        )
    return model.model.process_latent_in(samples.float()).cpu()


def attach_context(model, sources, history: torch.Tensor | None = None, clean_context: bool | None = None,
                   payload: ContextPayload | None = None):
    """A clone of ``model`` whose DiT sees the context of ``sources`` over ``history`` (model space).

    Pass a ready ``payload`` instead (the long-video loop builds one per section).
    """
    name = family(model)
    m = model.clone()
    dm = m.get_model_object("diffusion_model")
    original = m.get_model_object("diffusion_model.forward_orig")
    if isinstance(original, functools.partial) and original.func is SUPPORTED[name]:
        original = original.args[1]  # re-applying replaces our previous joint instead of nesting it
    m.add_object_patch("diffusion_model.forward_orig", functools.partial(SUPPORTED[name], dm, original))
    if clean_context is None:
        clean_context = uses_clean_context(model)
    if payload is None:
        payload = ContextPayload(list(sources), history, clean_context)
    elif payload.clean_context is None:
        payload.clean_context = clean_context
    m.model_options.setdefault("transformer_options", {})[PAYLOAD_KEY] = payload
    return m
