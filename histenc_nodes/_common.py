"""What the node modules share: the pack's ComfyUI types, its model folders, and the injection joint.

Node modules import from here and from ``histenc``, never from each other. The joint clones a MODEL
and routes a context payload into its DiT.
"""

from __future__ import annotations

import functools
import os

import folder_paths
import torch
from comfy_api.latest import io

from ..histenc.context import SectionGrid
from ..histenc.dit.payload import PAYLOAD_KEY, ContextPayload
from ..histenc.dit import hunyuan, wan
from ..histenc.memory.vram import plan as vram_plan, source_tokens, spec_from_module

# A list of histenc context sources (sliding window, history encoder, packing, ...), chained by the mode nodes.
Context = io.Custom("HISTENC_CONTEXT")
StoryboardType = io.Custom("HISTENC_STORYBOARD")
Encoder = io.Custom("HISTENC_ENCODER")
ScheduleType = io.Custom("HISTENC_SCHEDULE")
CodebookType = io.Custom("HISTENC_CODEBOOK")
Projections = io.Custom("HISTENC_FRAMEPACK_PROJECTIONS")
Dataset = io.Custom("HISTENC_DATASET")
PlanType = io.Custom("HISTENC_VRAM_PLAN")

# models/<folder> of the pack's own files
ENCODERS_FOLDER = "history_encoders"
PROJECTIONS_FOLDER = "framepack_projections"
CODEBOOKS_FOLDER = "history_codebooks"
NO_FILE = "none"


def register_folder(name: str) -> None:
    """A models/<name> folder for safetensors files (the user's extra_model_paths entries stay first)."""
    folder_paths.add_model_folder_path(name, os.path.join(folder_paths.models_dir, name))
    folder_paths.folder_names_and_paths[name] = (folder_paths.folder_names_and_paths[name][0], {".safetensors"})


for _folder in (ENCODERS_FOLDER, PROJECTIONS_FOLDER, CODEBOOKS_FOLDER):
    register_folder(_folder)


def save_path(folder: str, filename: str, what: str) -> str:
    """Where a new file called ``filename`` goes in a models folder (``.safetensors`` added when missing)."""
    name = filename.strip()
    if not name or os.sep in name or (os.altsep and os.altsep in name) or name in (".", ".."):
        raise ValueError(f"{what} filename {filename!r} must be a plain file name without slashes, e.g. 'my_{folder}'.")
    if not name.lower().endswith(".safetensors"):
        name += ".safetensors"
    return os.path.join(folder_paths.get_folder_paths(folder)[0], name)


def files_in(folder: str) -> list[str]:
    return [NO_FILE] + folder_paths.get_filename_list(folder)

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


def model_family(model) -> str:
    """The family name stored in the pack's weight files (wan2.1, wan2.2, hunyuan_video)."""
    names = {"WAN21": "wan2.1", "WAN22": "wan2.2", "HunyuanVideo": "hunyuan_video"}
    return names.get(type(model.model).__name__, type(model.model).__name__.lower())


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


BLOCK_SWAP_KEY = "histenc_block_swap"


def model_spec(model):
    """The planner's spec of a stock-loaded Wan MODEL, weight bytes measured from its tensors."""
    family(model)
    dm = model.get_model_object("diffusion_model")
    compute = model.model.manual_cast_dtype or model.model.get_dtype()
    return spec_from_module(dm, name=type(model.model).__name__, compute_bytes=compute.itemsize,
                            per_frame_timesteps=uses_clean_context(model))




def plan_summary(model, context, width: int, height: int, section_frames: int, latent_frames: int, spatial: int,
                 cfg: float) -> str:
    """The planner's prediction for the last (longest-history) section of a long-video run, as text.

    Only informative: whatever the planner cannot model (another DiT family, an unknown context
    source) becomes a line saying so, never a failed run.
    """
    try:
        spec = model_spec(model)
        grid = SectionGrid(section_frames, height // spatial, width // spatial, spec.patch)
        history = max(0, latent_frames - section_frames)
        swapped = model.get_attachment(BLOCK_SWAP_KEY + "_count") or 0
        tokens = source_tokens(context or [], grid, history)
        return vram_plan(spec, width, height, section_frames, history, tokens, swapped,
                         batch=2 if cfg != 1.0 else 1).text()
    except Exception as err:  # noqa: BLE001 - a missing plan must not stop sampling
        return f"no VRAM plan for this run ({type(err).__name__}: {err})."
