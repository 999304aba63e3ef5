"""Video-extension model (paper 002, Sec. 3.3): its training node and its context mode for the long-video sampler.

Training has the paper's two stages (histenc.train.extension): "extension" turns a T2V model into
one that continues given frames (a zero-initialised condition projection + a LoRA), "causal" then
teaches the LoRA'd K/V of the latter half of the blocks to read the clip KV cache. At generation,
Video Extension Context hands the sampler's continuation frames to the projection; combine it with
Clip KV Cache Context for the paper's full setup.
"""

from __future__ import annotations

import json
from pathlib import Path

import folder_paths
import torch
from comfy_api.latest import io, ui

from ..histenc.context import ContextTokens, StatefulSource
from ..histenc.extension import ExtendedPatchEmbedding, ExtensionProjection, load_extension
from ..histenc.train.extension import STAGES, ExtensionSettings
from ..histenc.train.loop import TrainSettings
from ..histenc.train.trainer import ExtensionObjective, LoRASpec

from ..histenc.train.dataset import confine
from ._common import (
    Context,
    checkpoint_dir,
    data_inputs,
    data_roots,
    image_tensor,
    keep_checkpoint_input,
    lora_path,
    model_info,
    register_folder,
    train_on_model,
    training_clips,
)

FOLDER = "video_extensions"
register_folder(FOLDER)
NEW = "new (zero-initialised)"


def text_to_video_dit(model):
    """The MODEL's Wan DiT, refused in one sentence unless it is a text-to-video one (the extension's base)."""
    dm = model.get_model_object("diffusion_model")
    info = model_info(model)
    if info.family != "wan":
        raise ValueError(
            f"the video extension is made from a Wan text-to-video model, but this MODEL is {info.family}; load a "
            "Wan 2.1 / 2.2 T2V or TI2V model (HunyuanVideo continues sections through its history context instead)."
        )
    if info.input_channels != info.latent_channels:
        raise ValueError(
            f"this Wan model takes {info.input_channels} input channels (image-to-video), "
            "which already condition on frames natively; the video extension is made from a "
            "text-to-video model, so load the T2V / TI2V checkpoint."
        )
    return dm


def extension_file(name: str) -> Path:
    path = folder_paths.get_full_path(FOLDER, name)
    if path is None:
        raise ValueError(f"video extension {name!r} is not in models/{FOLDER}; put the file there and refresh.")
    return Path(path)


def load_for(model, name: str) -> ExtensionProjection:
    dm = text_to_video_dit(model)
    return load_extension(extension_file(name), int(dm.dim), int(dm.out_dim), tuple(dm.patch_size), "wan")


class VideoExtensionSource(StatefulSource):
    """Context source with no tokens: before a section samples, the DiT's patch embedding also sees the
    section's given frames (the sampler's continuation) through the trained projection."""

    def __init__(self, projection: ExtensionProjection, name: str):
        self.projection, self.name = projection, name

    def describe(self) -> dict:
        return {"type": "VideoExtension", "file": self.name}

    def context(self, history, grid, dit) -> ContextTokens:
        return ContextTokens.empty(1, dit.width, device=dit.device, dtype=dit.dtype)

    def tokens_for(self, grid, history_frames: int) -> int:
        return 0

    def weight_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.projection.parameters())

    def condition_section(self, model, condition: torch.Tensor, given: torch.Tensor):
        """A clone of ``model`` whose patch embedding adds the projection of (condition, given mask)."""
        dm = text_to_video_dit(model)
        w = self.projection.proj.weight
        made = (int(w.shape[0]), int(w.shape[1]) - 1, tuple(self.projection.proj.kernel_size))
        wanted = (int(dm.dim), int(dm.out_dim), tuple(int(p) for p in dm.patch_size))
        if made != wanted:
            raise ValueError(
                f"video extension {self.name} was made for width {made[0]}, {made[1]} latent channels and "
                f"patch {made[2]} but this model has width {wanted[0]}, {wanted[1]} channels and patch "
                f"{wanted[2]}; pick the extension trained for this model."
            )
        m = model.clone()
        projection = self.projection.to(m.load_device)
        embed = m.get_model_object("diffusion_model.patch_embedding")
        if isinstance(embed, ExtendedPatchEmbedding):  # a clone that already carries one: replace, never nest
            embed = embed.embedding
        m.add_object_patch(
            "diffusion_model.patch_embedding",
            ExtendedPatchEmbedding(embed, projection, condition.float(), given.float()),
        )
        return m


class VideoExtensionContext(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="HistEncVideoExtension",
            display_name="Video Extension Context",
            category="histenc/context",
            description="Each section continues from the previous section's last frames through a trained video-"
            "extension projection (Finetune Video Extension). Set the Long Video Sampler's "
            "continuation_frames above 0; add the Clip KV Cache for long-range memory. No extension projection is "
            "published: train one first (an untrained projection is zero and adds nothing).",
            inputs=[
                io.Combo.Input(
                    "extension_name",
                    options=folder_paths.get_filename_list(FOLDER),
                    tooltip=f"A trained extension projection in models/{FOLDER}; load the LoRA trained "
                    "with it through LoraLoaderModelOnly.",
                ),
                Context.Input("add_to", optional=True, tooltip="Another context to combine with (e.g. a KV cache)."),
            ],
            outputs=[Context.Output(display_name="context")],
        )

    @classmethod
    def execute(cls, extension_name, add_to=None) -> io.NodeOutput:
        path = extension_file(extension_name)
        projection = load_extension(path)  # checked against the model when a section uses it
        return io.NodeOutput(list(add_to or []) + [VideoExtensionSource(projection, extension_name)])


class FinetuneVideoExtension(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="HistEncFinetuneVideoExtension",
            display_name="Finetune Video Extension (Wan)",
            category="histenc/train",
            description="Stage 'extension': a T2V model learns to continue given frames (first, last or both ends, "
            "dropped 1 in 10) through a zero-initialised projection and a LoRA. Stage 'causal' (load the "
            "first stage's LoRA and extension): a LoRA on the K/V of the latter blocks learns to use "
            "the clip KV cache on long clips.",
            inputs=[
                io.Model.Input("model", tooltip="A Wan 2.1 / 2.2 text-to-video MODEL (stays frozen; a LoRA trains)."),
                io.Combo.Input(
                    "stage",
                    options=list(STAGES),
                    default=STAGES[0],
                    tooltip="extension: short clips, trains projection + LoRA. causal: long clips, trains "
                    "a K/V LoRA with the cache (run after the extension stage).",
                ),
                io.Combo.Input(
                    "extension",
                    options=[NEW] + folder_paths.get_filename_list(FOLDER),
                    default=NEW,
                    tooltip="Start from this projection (extension stage: continue training it; causal "
                    "stage: used frozen for the given frames).",
                ),
                *data_inputs(),
                io.Int.Input(
                    "lora_rank", default=16, min=1, max=512, tooltip="Rank of the LoRA trained in this stage."
                ),
                io.String.Input(
                    "lora_targets",
                    default="auto",
                    tooltip="auto: every linear layer (extension) or self_attn.k,self_attn.v (causal); "
                    "or groups / layers like self_attn,ffn.",
                ),
                io.String.Input(
                    "lora_blocks",
                    default="auto",
                    tooltip="auto: all blocks (extension) or latter_half (causal); or 'all', "
                    "'latter_half', '10,11,12'.",
                ),
                io.Int.Input("clip_frames", default=8, min=2, max=1024, tooltip="extension: latent frames per clip."),
                io.Int.Input(
                    "max_given",
                    default=2,
                    min=1,
                    max=512,
                    tooltip="extension: up to this many latent frames given at each end.",
                ),
                io.Int.Input(
                    "section_frames",
                    default=4,
                    min=1,
                    max=512,
                    tooltip="causal: new latent frames per section (as the Long Video Sampler makes them).",
                ),
                io.Int.Input(
                    "given_frames",
                    default=1,
                    min=0,
                    max=512,
                    tooltip="causal: continuation frames from the section before (the sampler's setting).",
                ),
                io.Int.Input("max_clips", default=5, min=1, max=64, tooltip="causal: past sections attended to."),
                io.Int.Input(
                    "seed", default=0, min=0, max=0xFFFFFFFF, tooltip="Seed of the LoRA init, data and noise."
                ),
                io.String.Input(
                    "output_name",
                    default="histenc_extension",
                    tooltip="Extension file and LoRA name; the causal stage's LoRA gets '_causal' added.",
                ),
                io.Int.Input(
                    "checkpoint_every", default=50, min=1, max=100_000, tooltip="Resumable checkpoint every N steps."
                ),
                io.Boolean.Input("gradient_checkpointing", default=False, tooltip="Less memory, slower steps."),
                keep_checkpoint_input(),
            ],
            outputs=[
                io.Model.Output(display_name="model"),
                io.Image.Output(display_name="loss_plot"),
                io.String.Output(display_name="extension_path"),
                io.String.Output(display_name="lora_path"),
            ],
        )

    @classmethod
    def execute(
        cls,
        model,
        stage,
        extension,
        steps,
        learning_rate,
        lora_rank,
        lora_targets,
        lora_blocks,
        clip_frames,
        max_given,
        section_frames,
        given_frames,
        max_clips,
        seed,
        output_name,
        checkpoint_every,
        gradient_checkpointing,
        dataset=None,
        latent=None,
        positive=None,
        keep_checkpoint=False,
    ) -> io.NodeOutput:
        ext = ExtensionSettings(
            stage=stage,
            clip_frames=clip_frames,
            max_given=max_given,
            section_frames=section_frames,
            given_frames=given_frames,
            max_clips=max_clips,
        )
        stem = lora_path(output_name.strip()).stem  # checks the name
        lora_file = lora_path(stem if stage == "extension" else f"{stem}_causal")
        ext_file = Path(folder_paths.get_folder_paths(FOLDER)[0]) / f"{stem}.safetensors"
        dm = text_to_video_dit(model)
        if dataset:  # a dataset path must lie in ComfyUI's folders, as the Video Dataset node writes it
            confine(dataset, data_roots(), "dataset", "connect the Video Dataset node's output")
        clips = training_clips(model, dataset, latent, positive)
        with torch.inference_mode(False):  # ComfyUI runs nodes in inference mode; weights made here can train
            if extension == NEW:
                # the causal stage without an extension trains the KV LoRA alone
                projection = (
                    None
                    if stage == "causal"
                    else ExtensionProjection(int(dm.out_dim), int(dm.dim), tuple(dm.patch_size))
                )
            else:
                projection = load_for(model, extension)
        targets, blocks = ext.lora_layout()
        spec = LoRASpec(
            lora_rank,
            float(lora_rank),
            targets if lora_targets.strip() == "auto" else lora_targets,
            blocks if lora_blocks.strip() == "auto" else lora_blocks,
            seed,
        )
        chosen_targets, chosen_blocks = spec.layout(dm)
        identity = {
            "objective": "video_extension",
            **ext.to_meta(),
            "rank": lora_rank,
            "targets": list(chosen_targets),
            "blocks": list(chosen_blocks),
            "extension": extension,
            "data": str(dataset or "latent"),
        }
        settings = TrainSettings(
            steps=steps,
            lr=learning_rate,
            seed=seed,
            checkpoint_every=checkpoint_every,
            extra=json.loads(json.dumps(identity)),
        )
        out_model, job = train_on_model(
            model,
            ExtensionObjective(projection, clips, ext),
            spec,
            settings,
            checkpoint_dir(ext_file if stage == "extension" else lora_file),
            lora_file=lora_file,
            module_file=ext_file,
            gradient_checkpointing=gradient_checkpointing,
            keep_checkpoint=keep_checkpoint,
        )
        used = str(ext_file) if stage == "extension" else ("" if projection is None else str(extension_file(extension)))
        return io.NodeOutput(
            out_model, image_tensor(job.result.png), used, str(lora_file), ui=ui.PreviewText(job.summary())
        )


NODES = [VideoExtensionContext, FinetuneVideoExtension]
