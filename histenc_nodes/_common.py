"""What the node modules share: the pack's ComfyUI types, its model folders, and the injection joint.

Node modules import from here and from ``histenc``, never from each other. The joint clones a MODEL
and routes a context payload into its DiT (a DIFFUSION_MODEL wrapper, see ``attach_context``).
"""

from __future__ import annotations

import os

import comfy.patcher_extension
import folder_paths
import torch
from comfy_api.latest import io

from ..histenc.context import SectionGrid, check_history, check_sources
from ..histenc.dit.info import ModelInfo, dit_family, dit_info
from ..histenc.files import check_plain_name
from ..histenc.dit.payload import JOINT_KEY, PAYLOAD_KEY, ContextPayload
from ..histenc.dit import hunyuan, wan
from ..histenc.memory.vram import plan as vram_plan, source_terms, spec_from_module

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
    if not name:
        raise ValueError(f"{what} filename is empty; give a plain file name, e.g. 'my_{folder}'.")
    check_plain_name(name, f"{what} filename")
    if not name.lower().endswith(".safetensors"):
        name += ".safetensors"
    return os.path.join(folder_paths.get_folder_paths(folder)[0], name)


def files_in(folder: str) -> list[str]:
    return [NO_FILE] + folder_paths.get_filename_list(folder)


# family -> the joint: a DIFFUSION_MODEL wrapper that runs the live DiT's stock forward with the context hooks
SUPPORTED = {"wan": wan.joint, "hunyuan_video": hunyuan.joint}
PATCHIFIERS = {"wan": wan.WanPatchifier, "hunyuan_video": hunyuan.HunyuanPatchifier}
# ComfyUI's model classes -> the family name the pack's weight files record
VERSIONS = {"WAN21": "wan2.1", "WAN22": "wan2.2", "HunyuanVideo": "hunyuan_video"}


def model_info(model) -> ModelInfo:
    """What this MODEL is (family, variant, width, VAE compression, ...), or one sentence if unsupported.

    The one place that reads ComfyUI's model class: WAN22 (Wan 2.2 5B) runs on per-frame timesteps.
    """
    dm = model.get_model_object("diffusion_model")
    cls = type(model.model).__name__
    return dit_info(dm, version=VERSIONS.get(cls, cls.lower()), per_frame_timesteps=cls == "WAN22")


def family(model) -> str:
    """Which adapter serves this MODEL ("wan" or "hunyuan_video"), or one sentence saying it is not supported."""
    return dit_family(model.get_model_object("diffusion_model"))


def model_family(model) -> str:
    """The family name stored in the pack's weight files (wan2.1, wan2.2, hunyuan_video)."""
    return model_info(model).version


def model_dit(model, device=None, dtype=torch.float32, info: ModelInfo | None = None):
    """The MODEL's DiT as the core sees it (width, latent channels, patch, patch embedding)."""
    info = info or model_info(model)
    dm = model.get_model_object("diffusion_model")
    return PATCHIFIERS[info.family](dm, torch.device(device or "cpu"), dtype, info)


def uses_clean_context(model) -> bool:
    """Wan 2.2 5B runs on per-frame timesteps, so its context tokens are modulated as clean (t = 0)."""
    return model_info(model).per_frame_timesteps


def history_in_model_space(model, latent: dict | None) -> torch.Tensor | None:
    if latent is None:
        return None
    samples = latent["samples"]
    if samples.ndim != 5:
        raise ValueError(
            "history must be a video LATENT [batch, channels, frames, height, width], got shape "
            f"{tuple(samples.shape)}; "
            "connect the LATENT of a video (e.g. a previous sampler's output)."
        )
    return model.model.process_latent_in(samples.float()).cpu()


def attach_context(
    model,
    sources,
    history: torch.Tensor | None = None,
    clean_context: bool | None = None,
    payload: ContextPayload | None = None,
):
    """A clone of ``model`` whose DiT sees the context of ``sources`` over ``history`` (model space).

    Pass a ready ``payload`` instead (the long-video loop builds one per section).
    """
    info = model_info(model)
    m = model.clone()
    # In model_options, so sampling and a direct DiT call with these transformer_options both run it. The wrapper
    # is a plain function that takes the live DiT from its executor: deep clones (MultiGPU) copy it safely.
    kind = comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL
    options = m.model_options.setdefault("transformer_options", {})
    options.setdefault("wrappers", {}).setdefault(kind, {}).pop(JOINT_KEY, None)  # re-applying replaces, never nests
    comfy.patcher_extension.add_wrapper_with_key(
        kind, JOINT_KEY, SUPPORTED[info.family], m.model_options, is_model_options=True
    )
    if clean_context is None:
        clean_context = info.per_frame_timesteps
    if payload is None:
        payload = ContextPayload(check_sources(sources), history, clean_context)
    elif payload.clean_context is None:
        payload.clean_context = clean_context
    payload.info = info
    m.model_options.setdefault("transformer_options", {})[PAYLOAD_KEY] = payload
    return m


BLOCK_SWAP_KEY = "histenc_block_swap"


def keep_swapped(patcher, swap_bytes: int) -> int:
    """Ask ComfyUI to offload until ``swap_bytes`` of the model are off the GPU; returns bytes it freed."""
    if patcher.load_device.type == "cpu" or swap_bytes <= 0:
        return 0
    excess = patcher.loaded_size() - (patcher.model_size() - swap_bytes)
    if excess <= 0:
        return 0
    return patcher.partially_unload(patcher.offload_device, excess)


def compute_dtype(model) -> torch.dtype:
    """The dtype ComfyUI runs the DiT in (what apply_model casts its inputs to; an fp8 file's manual-cast dtype)."""
    return model.model.manual_cast_dtype or model.model.get_dtype()


def model_spec(model):
    """The planner's spec of a stock-loaded Wan MODEL, weight bytes measured from its tensors."""
    info = model_info(model)
    dm = model.get_model_object("diffusion_model")
    compute = compute_dtype(model)
    return spec_from_module(dm, info, name=type(model.model).__name__, compute_bytes=compute.itemsize)


def plan_summary(
    model,
    context,
    width: int,
    height: int,
    section_frames: int,
    latent_frames: int,
    spatial: int,
    cfg: float,
    continuation: int = 0,
    tail: int = 0,
) -> str:
    """The planner's prediction for the last (longest-history) section of a long-video run, as text;
    ``continuation`` / ``tail``: the given frames that section samples beside its own.

    Only informative: whatever the planner cannot model (another DiT family, an unknown context
    source) becomes a line saying so, never a failed run.
    """
    try:
        spec = model_spec(model)
        grid = SectionGrid(section_frames, height // spatial, width // spatial, spec.patch)
        history = max(0, latent_frames - section_frames)
        swapped = model.get_attachment(BLOCK_SWAP_KEY + "_count") or 0
        terms = source_terms(context or [], spec, grid, history)
        return vram_plan(
            spec,
            width,
            height,
            section_frames,
            history,
            terms.tokens,
            swapped,
            batch=2 if cfg != 1.0 else 1,
            continuation=min(continuation, history),
            tail=tail,
            kv_cache=terms.kv_device,
            kv_host=terms.kv_host,
            source_weights=terms.weights,
        ).text()
    except Exception as err:  # noqa: BLE001 - a missing plan must not stop sampling
        return f"no VRAM plan for this run ({type(err).__name__}: {err})."


# === training nodes: ComfyUI's side of histenc.train.trainer.run_training ===================================
# Train LoRA, Pretrain History Encoder, Finetune Autoregressive and Finetune Video Extension share this:
# output names, the progress bar and cancel button, loading the MODEL to train it, the loss plot as an IMAGE,
# and the training data inputs. The training itself (LoRA, loop, files) is the core's run_training.
import contextlib  # noqa: E402
import logging  # noqa: E402
import re  # noqa: E402
from pathlib import Path  # noqa: E402

import comfy.model_management  # noqa: E402
import comfy.model_patcher  # noqa: E402

_train_log = logging.getLogger(__name__)

# What the host offers for training and weight placement, detected once here (Block Swap reads it too).
# ComfyUI's own trainer switch: while it is set, the host's DiTs take their autograd-friendly paths (plain-torch
# rotary embedding instead of comfy_kitchen's kernel, which has no backward; the stock MLP instead of the fused INT8
# kernel, which reads ffn[2].weight directly and so would skip a LoRA hook on ffn.2).
HOST_TRAINING_SWITCH = hasattr(comfy.model_management, "in_training")
# Dynamic VRAM: a patcher that streams weights to the GPU per layer and holds no fixed budget of resident weights.
DYNAMIC_PATCHER = getattr(comfy.model_patcher, "ModelPatcherDynamic", None)


def dynamic_vram(model) -> bool:
    """Whether the MODEL's weights are placed by the host's dynamic VRAM (streamed per layer) rather than loaded."""
    return DYNAMIC_PATCHER is not None and isinstance(model, DYNAMIC_PATCHER)


@contextlib.contextmanager
def host_training():
    """ComfyUI's ``in_training`` set for the block, as its own trainer sets it; restored after, also on error.

    A host without the switch (ComfyUI 0.3.75) has no fused inference paths to turn off, so nothing is set there.
    """
    if not HOST_TRAINING_SWITCH:
        yield
        return
    before = comfy.model_management.in_training
    comfy.model_management.in_training = True
    try:
        yield
    finally:
        comfy.model_management.in_training = before


def training_patcher(model):
    """A clone of the MODEL whose weights a full load puts on its load device, so the DiT trains there.

    A dynamic-VRAM MODEL keeps its weights in system RAM and streams them per layer, so a full load leaves them
    on the CPU; ComfyUI rebuilds a plain patcher from the MODEL's loader (``clone(disable_dynamic=True)``,
    ``cached_patcher_init``), which its full load does place on the GPU.
    """
    if not dynamic_vram(model):
        return model.clone()
    if model.cached_patcher_init is None:
        raise ValueError(
            f"this {type(model.model).__name__} MODEL runs on ComfyUI's dynamic VRAM and its loader left no way to "
            "reload it as a plain model (no cached_patcher_init), so its weights cannot be placed on the GPU for "
            "training; load it with Load Diffusion Model, or start ComfyUI with --disable-dynamic-vram."
        )
    return model.clone(disable_dynamic=True)


def lora_path(name: str) -> Path:
    """Where a trained LoRA called ``name`` goes: the loras folder, so the stock LoRA loaders list it."""
    if not re.fullmatch(r"[A-Za-z0-9_\-. ]+", name or "") or name.startswith("."):
        raise ValueError(
            f"output name {name!r} must be a plain file name (letters, digits, _ - . and spaces); e.g. my_style_lora."
        )
    stem = name[: -len(".safetensors")] if name.endswith(".safetensors") else name
    return Path(folder_paths.get_folder_paths("loras")[0]) / f"{stem}.safetensors"


def checkpoint_dir(path: Path) -> Path:
    """Training state lives in the output folder, not among the LoRAs the loaders list."""
    return Path(folder_paths.get_output_directory()) / "histenc_training" / Path(path).stem


def data_roots():
    """Where dataset nodes read and write: ComfyUI's input, output and models folders, resolved; None (anywhere)
    when the server runs with HISTENC_ALLOW_ANY_FOLDER=1 (docs/training.md)."""
    from ..histenc.train.dataset import allowed_roots

    return allowed_roots(
        folder_paths.get_input_directory(), folder_paths.get_output_directory(), folder_paths.models_dir
    )


def show_text(text: str, node_id: str) -> None:
    """The node's progress text in the UI (a progress *preview* must be an image: text there breaks the server)."""
    from server import PromptServer

    PromptServer.instance.send_progress_text(text, node_id)


def training_progress(steps: int):
    """``progress(step, steps, loss)`` for run_training: the node's progress bar and the loss as its progress text."""
    import comfy.utils
    from comfy_execution.utils import get_executing_context

    pbar = comfy.utils.ProgressBar(steps)
    context = get_executing_context()

    def progress(step: int, total: int, loss: float) -> None:
        pbar.update_absolute(step, total)
        if context is not None:
            show_text(f"step {step}/{total}  loss {loss:.4f}", context.node_id)

    return progress


def training_cancelled() -> bool:
    """ComfyUI's cancel button as run_training's cancel check: raises ComfyUI's interrupt (the loop saves first)."""
    comfy.model_management.throw_exception_if_processing_interrupted()
    return False


def image_tensor(png: Path) -> torch.Tensor:
    """A PNG file as a ComfyUI IMAGE batch [1, H, W, 3] in 0..1."""
    import numpy as np
    from PIL import Image

    with Image.open(png) as img:
        return torch.from_numpy(np.array(img.convert("RGB"))).float().div(255)[None]


def with_lora(model, path: Path):
    """A clone of ``model`` with the LoRA file applied the stock way (as LoraLoaderModelOnly does)."""
    import comfy.sd
    import comfy.utils

    patched, _ = comfy.sd.load_lora_for_models(model, None, comfy.utils.load_torch_file(str(path)), 1.0, 0)
    return patched


def train_on_model(model, objective, lora, settings, checkpoints: Path, **files):
    """Run ``run_training`` on a loaded clone of the MODEL's DiT; returns (MODEL with the new LoRA, the run).

    ``files`` go to run_training (lora_file, module_file, record, gradient_checkpointing). ComfyUI runs
    nodes in inference mode; training needs it off, and the input MODEL is never changed. The host's
    training switch is on while it runs (``host_training``).
    """
    from ..histenc.train.trainer import run_training

    with torch.inference_mode(False):
        work = training_patcher(model)
        swapped = model.get_attachment(BLOCK_SWAP_KEY + "_count") or 0  # Block Swap: N blocks' weights stay in RAM
        comfy.model_management.load_models_gpu([work], force_full_load=not swapped)
        if swapped:  # ComfyUI casts offloaded layers per call; checkpointing keeps those copies out of backward
            keep_swapped(work, model_spec(work).swap_bytes(swapped))
            files["gradient_checkpointing"] = True
        dm = work.get_model_object("diffusion_model")
        with host_training():
            job = run_training(
                dm,
                objective,
                lora,
                settings,
                checkpoints,
                progress=training_progress(settings.steps),
                cancelled=training_cancelled,
                **files,
            )
    result = job.result
    _train_log.info(
        "histenc: trained %d steps (resumed from %d); wrote %s",
        result.step,
        result.resumed_from,
        ", ".join(str(p) for p in job.files + [result.csv, result.png]),
    )
    return (model if job.lora_file is None else with_lora(model, job.lora_file)), job


def training_clips(model, dataset, latent, positive) -> list:
    """Training clips in the model's latent space: the cached dataset, else each item of a LATENT batch."""
    from ..histenc.train.dataset import CachedDataset
    from ..histenc.train.frame_query import Clip

    to_model = model.model.process_latent_in
    channels = model_info(model).latent_channels
    if dataset:
        data = CachedDataset(dataset)
        clips = []
        for i in range(len(data)):
            item = data[i]
            lat = item["latents"].float()
            lat = lat if lat.ndim == 5 else lat.unsqueeze(0)
            check_history(lat, channels, name=f"dataset clip {item['source']}")
            prompts = [(start, cond.float()) for start, cond in item["latent_prompts"]]  # at the clip's own fps
            clips.append(Clip(to_model(lat), prompts))
        return clips
    if latent is None:
        raise ValueError("no training data: connect a dataset (Video Dataset node) or a video LATENT batch.")
    samples = latent["samples"]
    if samples.ndim != 5:
        raise ValueError(
            f"latent must be a video LATENT [batch, channels, frames, height, width], got shape "
            f"{tuple(samples.shape)}; connect a video latent or use the Video Dataset node."
        )
    check_history(samples, channels, name="latent")
    if positive is None:
        raise ValueError("a LATENT batch needs a prompt: connect the positive CONDITIONING (or use a dataset).")
    text = positive[0][0].float()
    return [Clip(to_model(samples[i : i + 1].float()), [(0.0, text)]) for i in range(samples.shape[0])]


def keep_checkpoint_input():
    """The training nodes' choice to keep a finished run's resumable checkpoint (off: removed, size shown)."""
    return io.Boolean.Input(
        "keep_checkpoint",
        default=False,
        optional=True,
        tooltip="After a finished run, keep the resumable checkpoint (weights and optimizer state, in "
        "output/histenc_training/<name>) to extend the run with more steps later; off removes it. The summary "
        "shows its size. An interrupted run always keeps it.",
    )


def data_inputs():
    """The training data (a dataset, else a LATENT batch and its prompt), steps and learning rate."""
    return [
        Dataset.Input("dataset", optional=True, tooltip="Cached latents and prompts from the Video Dataset node."),
        io.Latent.Input("latent", optional=True, tooltip="Without a dataset: a video LATENT batch, one clip per item."),
        io.Conditioning.Input("positive", optional=True, tooltip="The prompt used with a LATENT batch."),
        io.Int.Input("steps", default=1000, min=1, max=1_000_000, tooltip="Total optimisation steps."),
        io.Float.Input("learning_rate", default=1e-4, min=1e-7, max=1.0, step=1e-5, tooltip="AdamW learning rate."),
    ]


# === end of the training nodes' section ====================================================================


def check_combo(input_name: str, value, options) -> str | None:
    """One sentence when a combo value is not among its options (the host does not check V3 combos), else None."""
    options = list(options)
    if value in options:
        return None
    shown = ", ".join(repr(o) for o in options[:12]) + (", ..." if len(options) > 12 else "")
    return f"{input_name} {value!r} is not one of its options ({shown}); pick one of them in the node."
