"""Train LoRA node: a plain LoRA finetune on a cached dataset, saved where the stock LoRA loaders look."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from comfy_api.latest import io
from PIL import Image

from ..histenc.lora import LoRA, dit_family
from ..histenc.train.dataset import CachedDataset
from ..histenc.train.lora_finetune import finetune_lora
from ..histenc.train.loop import TrainSettings

from ._common import Dataset

BLOCK_CHOICES = ["all", "latter_half", "list"]


def lora_path(name: str) -> Path:
    import folder_paths

    if not re.fullmatch(r"[A-Za-z0-9_\-. ]+", name or "") or name.startswith("."):
        raise ValueError(f"output name {name!r} must be a plain file name (letters, digits, _ - . and spaces); "
                         "e.g. my_style_lora.")
    stem = name[:-len(".safetensors")] if name.endswith(".safetensors") else name
    return Path(folder_paths.get_folder_paths("loras")[0]) / f"{stem}.safetensors"


def checkpoint_dir(path: Path) -> Path:
    """Training state lives in the output folder, not among the LoRAs the loaders list."""
    import folder_paths

    return Path(folder_paths.get_output_directory()) / "histenc_training" / path.stem


def show_text(text: str, node_id: str) -> None:
    """The node's progress text in the UI (a progress *preview* must be an image: text there breaks the server)."""
    from server import PromptServer

    PromptServer.instance.send_progress_text(text, node_id)


def training_progress(steps: int):
    """``on_step(step, loss)`` for a training node: the progress bar, the loss as the node's progress
    text in the UI, and ComfyUI's cancel button (raises; the loop saves a resumable checkpoint)."""
    import comfy.model_management
    import comfy.utils
    from comfy_execution.utils import get_executing_context

    pbar = comfy.utils.ProgressBar(steps)
    context = get_executing_context()

    def on_step(step: int, loss: float) -> None:
        pbar.update_absolute(step, steps)
        if context is not None:
            show_text(f"step {step}/{steps}  loss {loss:.4f}", context.node_id)
        comfy.model_management.throw_exception_if_processing_interrupted()

    return on_step


def image_tensor(png: Path) -> torch.Tensor:
    with Image.open(png) as img:
        return torch.from_numpy(np.array(img.convert("RGB"))).float().div(255)[None]


class TrainLoRA(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="HistEncTrainLoRA",
            display_name="Train LoRA (Wan)",
            category="histenc/train",
            description="Plain LoRA finetune for small style or character adapters on a cached dataset; saves into "
                        "the loras folder (LoraLoaderModelOnly reads it) and resumes from its checkpoint when re-run.",
            inputs=[
                io.Model.Input("model", tooltip="A Wan 2.1 / 2.2 text-to-video MODEL from the stock loaders."),
                Dataset.Input("dataset", tooltip="Cached latents and text from the Video Dataset node (same VAE / text encoder)."),
                io.Int.Input("steps", default=500, min=1, max=1_000_000, tooltip="Total optimisation steps (one clip per step)."),
                io.Int.Input("rank", default=16, min=1, max=512, tooltip="LoRA rank: 8-32 suits a style or a character."),
                io.Float.Input("alpha", default=16.0, min=0.001, max=1024.0, step=0.5,
                               tooltip="LoRA alpha; the update is scaled by alpha / rank."),
                io.Float.Input("learning_rate", default=1e-4, min=1e-7, max=1.0, step=1e-5,
                               tooltip="AdamW learning rate (1e-4 is a common start)."),
                io.Combo.Input("blocks", options=BLOCK_CHOICES, default="all",
                               tooltip="Which DiT blocks get LoRA: all, the latter half, or the list below."),
                io.String.Input("block_list", default="", optional=True,
                                tooltip="Block numbers when blocks is 'list', e.g. 10,11,12."),
                io.String.Input("targets", default="self_attn,cross_attn,ffn",
                                tooltip="Layers per block: self_attn, cross_attn, ffn, all, or single ones like self_attn.q."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFF, tooltip="Seed of the LoRA init, clip order, noise and timesteps."),
                io.String.Input("output_name", default="histenc_lora", tooltip="File name in the loras folder (.safetensors is added)."),
                io.Int.Input("checkpoint_every", default=50, min=1, max=100_000,
                             tooltip="Save a resumable checkpoint every N steps (also on interrupt)."),
                io.Float.Input("timestep_shift", default=3.0, min=0.1, max=20.0, step=0.1,
                               tooltip="Shift of the logit-normal training timesteps; higher trains noisier steps."),
                io.Boolean.Input("gradient_checkpointing", default=False,
                                 tooltip="Recompute block activations in backward: less memory, slower steps."),
            ],
            outputs=[io.Model.Output(display_name="model"), io.Image.Output(display_name="loss_plot"),
                     io.String.Output(display_name="lora_path")],
        )

    @classmethod
    def execute(cls, model, dataset, steps, rank, alpha, learning_rate, blocks, targets, seed, output_name,
                checkpoint_every, timestep_shift, gradient_checkpointing, block_list="") -> io.NodeOutput:
        import comfy.model_management
        import comfy.sd
        import comfy.utils

        path = lora_path(output_name.strip())
        data = CachedDataset(dataset)
        chosen = block_list if blocks == "list" else blocks
        with torch.inference_mode(False):
            work = model.clone()
            comfy.model_management.load_models_gpu([work], force_full_load=True)
            dm = work.get_model_object("diffusion_model")
            dit_family(dm)
            lora = LoRA(dm, rank, alpha, targets, chosen, seed)
            settings = TrainSettings(steps=steps, lr=learning_rate, seed=seed, checkpoint_every=checkpoint_every,
                                     extra={"rank": rank, "alpha": alpha, "targets": list(lora.targets),
                                            "blocks": list(lora.blocks), "timestep_shift": timestep_shift,
                                            "dataset": str(Path(dataset).resolve()), "width": lora.width})
            on_step = training_progress(steps)
            try:
                result = finetune_lora(dm, lora, data, settings, checkpoint_dir(path),
                                       to_model_space=lambda x: work.model.process_latent_in(x),
                                       shift=timestep_shift, gradient_checkpointing=gradient_checkpointing,
                                       on_step=on_step)
            finally:
                lora.detach()
            lora.save(path, training={**settings.identity(), "steps": result.step,
                                      "final_loss": result.losses[-1] if result.losses else None})
        patched, _ = comfy.sd.load_lora_for_models(model, None, comfy.utils.load_torch_file(str(path)), 1.0, 0)
        return io.NodeOutput(patched, image_tensor(result.png), str(path))


NODES = [TrainLoRA]
