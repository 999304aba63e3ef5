"""FramePack's HunyuanVideo checkpoints as a native MODEL plus the pack's packing projections.

The MODEL also takes FramePack's image projection, in the slot native HunyuanVideo keeps for image tokens
(``vision_in``): the Long Video Sampler feeds it the CLIP-vision encoding of the start image.
"""

from __future__ import annotations

import copy
import os

import comfy.model_patcher
import comfy.sd
import comfy.utils
import folder_paths
import torch
from comfy_api.latest import io, ui

from ..histenc.framepack.hunyuan_checkpoint import (
    ImageProjection,
    convert,
    copy_projections,
    image_projection,
    projections_pack,
    shard_paths,
)
from ..histenc.framepack.codebook import framepacks

from ._common import PROJECTIONS_FOLDER, Context, Projections, check_combo, save_path

WEIGHT_DTYPES = {
    "default": {},
    "fp8_e4m3fn": {"dtype": torch.float8_e4m3fn},
    "fp8_e4m3fn_fast": {"dtype": torch.float8_e4m3fn, "fp8_optimizations": True},
    "fp8_e5m2": {"dtype": torch.float8_e5m2},
}


def _host_rebuilds_models() -> bool:
    """Whether this ComfyUI rebuilds a MODEL from its loader (``cached_patcher_init``), as dynamic VRAM does."""
    cpu = torch.device("cpu")
    return hasattr(comfy.model_patcher.ModelPatcher(torch.nn.Module(), cpu, cpu), "cached_patcher_init")


HOST_REBUILDS_MODELS = _host_rebuilds_models()


def load_checkpoint(path: str) -> dict:
    """The state dict of one file, or of every shard when ``path`` is one of ``name-0000k-of-0000n``."""
    sd = {}
    for shard in shard_paths(path):
        if not os.path.isfile(shard):
            raise ValueError(
                f"checkpoint {os.path.basename(path)} is split into shards but "
                f"{os.path.basename(shard)} is missing; put every shard in the same folder."
            )
        sd.update(comfy.utils.load_torch_file(shard, safe_load=True))
    return sd


def load_native(path: str, checkpoint: str, model_options: dict, **host_options):
    """(native HunyuanVideo MODEL, converted checkpoint) of a FramePack file.

    The MODEL records how to load it again, as ComfyUI's own Load Diffusion Model does, so the host can
    rebuild it (a plain patcher for training or ``--disable-dynamic-vram`` paths, a copy per GPU);
    ``host_options`` are what the host passes then (``disable_dynamic``).
    """
    converted = convert(load_checkpoint(path), name=checkpoint)
    model = comfy.sd.load_diffusion_model_state_dict(
        converted.native, model_options=dict(model_options), **host_options
    )
    found = type(getattr(getattr(model, "model", None), "diffusion_model", None)).__name__
    if model is None or found != "HunyuanVideo":
        raise ValueError(
            f"{checkpoint} converted to weights ComfyUI loads as {found}, not HunyuanVideo; "
            "report the file, it is not the FramePack layout this loader knows."
        )
    install_image_projection(model, converted.extras)
    if HOST_REBUILDS_MODELS:
        model.cached_patcher_init = (load_native, (path, checkpoint, dict(model_options)), 0)
    return model, converted


def install_image_projection(model, extras) -> None:
    """FramePack's image projection as the DiT's ``vision_in``, built from the model's own Linear class and
    weight dtype so the host casts, offloads and moves it like every other layer."""
    dm = model.model.diffusion_model
    linear_class, dtype = type(dm.txt_in.input_embedder), model.model.get_dtype()
    module = image_projection(extras, lambda i, o: linear_class(i, o, bias=True, dtype=dtype), dtype=dtype)
    if module is not None:
        dm.vision_in = module
        model.size = 0  # measured again with the projection


class LoadFramePackHunyuan(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="HistEncLoadFramePackHunyuan",
            display_name="Load FramePack HunyuanVideo",
            category="histenc/framepack",
            description="Loads FramePack's HunyuanVideo transformer (I2V or F1, diffusers layout) as ComfyUI's native "
            "HunyuanVideo MODEL, with its image projection for the start image's CLIP-vision tokens, and its "
            "trained history patch embedders as packing projections for the FramePack Context (through Apply "
            "FramePack Projections).",
            inputs=[
                io.Combo.Input(
                    "checkpoint",
                    options=folder_paths.get_filename_list("diffusion_models"),
                    tooltip="A FramePack HunyuanVideo file in models/diffusion_models (one file, or the "
                    "first shard of a split one).",
                ),
                io.Combo.Input(
                    "weight_dtype",
                    options=list(WEIGHT_DTYPES),
                    default="default",
                    tooltip="As in Load Diffusion Model: fp8 halves the weights' memory for 6-12 GB cards.",
                ),
                io.String.Input(
                    "save_projections_as",
                    default="",
                    tooltip="When set, the projections are also saved as models/framepack_projections/"
                    "<name>.safetensors, which the FramePack Context node can pick directly.",
                ),
            ],
            outputs=[
                io.Model.Output(display_name="model"),
                Projections.Output(
                    display_name="projections", tooltip="FramePack's k1 / k2 / k4 history patch embedders."
                ),
            ],
        )

    @classmethod
    def validate_inputs(cls, weight_dtype=None):
        """The host does not check a V3 combo's value. Only ``weight_dtype`` is taken here, so a problem is reported
        once (the host repeats it for every input this takes); the checkpoint, a file list, is checked on run."""
        return True if weight_dtype is None else check_combo("weight_dtype", weight_dtype, WEIGHT_DTYPES) or True

    @classmethod
    def execute(cls, checkpoint, weight_dtype, save_projections_as="") -> io.NodeOutput:
        for problem in (
            check_combo("weight_dtype", weight_dtype, WEIGHT_DTYPES),
            check_combo("checkpoint", checkpoint, folder_paths.get_filename_list("diffusion_models")),
        ):
            if problem:
                raise ValueError(problem)
        path = folder_paths.get_full_path_or_raise("diffusion_models", checkpoint)
        model, converted = load_native(path, checkpoint, WEIGHT_DTYPES[weight_dtype])
        pack = projections_pack(converted.projections)
        text = f"{checkpoint}: native HunyuanVideo, projections {', '.join(pack.projections)}"
        if isinstance(model.get_model_object("diffusion_model").vision_in, ImageProjection):
            text += (
                "; image projection in the model's vision_in: connect CLIPVisionEncode (SigLIP) of the start image "
                "to the Long Video Sampler's clip_vision_output"
            )
        else:
            text += "; no image projection, the model runs text-only"
        if save_projections_as.strip():
            target = save_path(PROJECTIONS_FOLDER, save_projections_as, "projections")
            pack.save(target)
            text += f"; projections saved to {target}"
        return io.NodeOutput(model, pack, ui=ui.PreviewText(text))


class ApplyFramePackProjections(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="HistEncApplyFramePackProjections",
            display_name="Apply FramePack Projections",
            category="histenc/framepack",
            description="Gives every FramePack context in a context list the trained projections of a FramePack "
            "checkpoint (kernels k1, k2, k4) in place of those it started with.",
            inputs=[
                Context.Input("context", tooltip="A context holding at least one FramePack Context."),
                Projections.Input("projections", tooltip="From Load FramePack HunyuanVideo."),
            ],
            outputs=[Context.Output(display_name="context")],
        )

    @classmethod
    def execute(cls, context, projections) -> io.NodeOutput:
        if not framepacks(context):
            raise ValueError(
                "context holds no FramePack context, so there is nothing to apply the projections to; "
                "connect the output of a FramePack Context node."
            )
        out = []
        for source in context:
            if framepacks([source]):
                source = copy.deepcopy(source)  # the upstream node's cached output stays as it was
                for pack in framepacks([source]):
                    copy_projections(pack, projections)
            out.append(source)
        return io.NodeOutput(out)


NODES = [LoadFramePackHunyuan, ApplyFramePackProjections]
