"""FramePack F1 in the Long Video Sampler: which context is F1's, the start image's tokens, the guidance.

Plain checks on what the sampler is given, one sentence each when something does not fit: a FramePack
checkpoint's image projection needs the start image and its CLIP-vision encoding at SigLIP's width, a
model without one takes no CLIP-vision output, and ``prompt_settings`` must carry a guidance.
"""

from __future__ import annotations

import torch

from ..dit.hunyuan import ImageTokens
from .codebook import framepacks
from .hunyuan_checkpoint import ImageProjection


def f1_schedule(context) -> str | None:
    """The name of the FramePack F1 schedule in the context list (None when there is none)."""
    return next((str(p.schedule) for p in framepacks(context) if p.schedule.fixed_slots), None)


def check_image_tokens(projection, clip_vision_output, start_given: bool, model_name: str) -> ImageTokens | None:
    """The CLIP-vision features for ``projection`` (the DiT's ``vision_in``), or None when it is not FramePack's."""
    if not isinstance(projection, ImageProjection):
        if clip_vision_output is not None:
            raise ValueError(
                f"clip_vision_output is connected but this {model_name} model has no FramePack image projection "
                "to take it; load a FramePack I2V or F1 checkpoint with Load FramePack HunyuanVideo, or disconnect "
                "clip_vision_output."
            )
        return None
    if not start_given:
        raise ValueError(
            "the model is a FramePack image-to-video checkpoint but start_image is not connected; connect the image "
            "the video starts from (with the model's VAE) and its CLIPVisionEncode output to clip_vision_output."
        )
    if clip_vision_output is None:
        raise ValueError(
            "the model is a FramePack image-to-video checkpoint but clip_vision_output is not connected; connect "
            "CLIPVisionEncode of the start image (SigLIP: sigclip_vision_patch14_384, crop none)."
        )
    features = getattr(clip_vision_output, "last_hidden_state", None)
    if not isinstance(features, torch.Tensor) or features.ndim != 3:
        raise ValueError(
            f"clip_vision_output holds no image features (last_hidden_state is {type(features).__name__}); "
            "connect the output of CLIPVisionEncode."
        )
    if features.shape[-1] != projection.width:
        raise ValueError(
            f"clip_vision_output is {features.shape[-1]} wide but the checkpoint's image projection takes "
            f"{projection.width} (FramePack's SigLIP); encode the start image with sigclip_vision_patch14_384."
        )
    return ImageTokens(features)


def prompt_guidance(prompt_settings) -> float | None:
    """The guidance a FluxGuidance node put on ``prompt_settings`` (None when nothing is connected)."""
    if prompt_settings is None:
        return None
    values = [extra.get("guidance") for _, extra in prompt_settings]
    if not values or values[0] is None:
        raise ValueError(
            "prompt_settings holds no guidance; connect a FluxGuidance node there (FramePack F1: 10), "
            "or disconnect it to keep the model's default."
        )
    return float(values[0])
