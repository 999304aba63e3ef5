"""Wan I2V's CLIP-vision input in the Long Video Sampler, routed as ComfyUI's WanImageToVideo routes it.

Wan 2.1 I2V (and FLF) DiTs carry ``img_emb``, which embeds CLIP ViT-H's penultimate hidden states
(clip_vision_h, 1280 wide) before the text; WanImageToVideo puts the CLIPVisionEncode output into the
positive and negative conditioning under ``clip_vision_output`` and the model reads it from there. The
sampler does the same for every section. Wan 2.2 I2V / T2V DiTs have no ``img_emb`` and take none.
"""

from __future__ import annotations

import node_helpers
import torch

CLIP_VISION_FILE = "clip_vision_h.safetensors"


def wan_clip_vision(model, clip_vision_output):
    """``clip_vision_output`` checked against the Wan DiT's image embedding (None when not connected)."""
    if clip_vision_output is None:
        return None
    dm = model.get_model_object("diffusion_model")
    name = type(model.model).__name__
    if dm.img_emb is None:
        raise ValueError(
            f"clip_vision_output is connected but this Wan model ({name}, "
            f"{int(dm.patch_embedding.weight.shape[1])} input channels) has no CLIP-vision image embedding: Wan 2.2 "
            "and text-to-video models take none; disconnect clip_vision_output, or load a Wan 2.1 I2V model "
            "such as wan2.1_i2v_480p_14B_fp16.safetensors."
        )
    features = getattr(clip_vision_output, "penultimate_hidden_states", None)
    if not isinstance(features, torch.Tensor) or features.ndim != 3:
        raise ValueError(
            f"clip_vision_output holds no penultimate hidden states ({type(features).__name__}); connect the output "
            f"of CLIPVisionEncode with {CLIP_VISION_FILE} loaded."
        )
    wanted = int(dm.img_emb.proj[0].normalized_shape[0])
    if features.shape[-1] != wanted:
        raise ValueError(
            f"clip_vision_output is {features.shape[-1]} wide but this Wan I2V model's image embedding takes "
            f"{wanted} (CLIP ViT-H); load {CLIP_VISION_FILE} with CLIPVisionLoader and encode the start image "
            "with it."
        )
    return clip_vision_output


def with_clip_vision(conditioning, clip_vision_output):
    """The conditioning with the CLIP-vision output set, as WanImageToVideo sets it (unchanged when None)."""
    if clip_vision_output is None:
        return conditioning
    return node_helpers.conditioning_set_values(conditioning, {"clip_vision_output": clip_vision_output})


def features_of(clip_vision_output) -> torch.Tensor:
    """The tensor the model reads, for the job settings."""
    return clip_vision_output.penultimate_hidden_states
