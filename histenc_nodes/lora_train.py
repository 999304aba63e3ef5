"""Train LoRA node: a plain LoRA finetune on a cached dataset, saved where the stock LoRA loaders look."""

from __future__ import annotations

from pathlib import Path

from comfy_api.latest import io, ui

from ..histenc.lora import dit_width, lora_family
from ..histenc.train.dataset import CachedDataset, confine
from ..histenc.train.loop import TrainSettings
from ..histenc.train.trainer import LoRASpec, PlainLoRAObjective

from ._common import Dataset, check_combo, checkpoint_dir, data_roots, image_tensor, lora_path, train_on_model

BLOCK_CHOICES = ["all", "latter_half", "list"]


class TrainLoRA(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="HistEncTrainLoRA",
            display_name="Train LoRA",
            category="histenc/train",
            description="Plain LoRA finetune for small style or character adapters on a cached dataset; saves into "
            "the loras folder (LoraLoaderModelOnly reads it) and resumes from its checkpoint when re-run.",
            inputs=[
                io.Model.Input(
                    "model",
                    tooltip="A Wan 2.1 / 2.2 text-to-video or HunyuanVideo MODEL from the stock loaders (Block Swap "
                    "before it keeps the swapped blocks in RAM while training).",
                ),
                Dataset.Input(
                    "dataset", tooltip="Cached latents and text from the Video Dataset node (same VAE / text encoder)."
                ),
                io.Int.Input(
                    "steps", default=500, min=1, max=1_000_000, tooltip="Total optimisation steps (one clip per step)."
                ),
                io.Int.Input(
                    "rank", default=16, min=1, max=512, tooltip="LoRA rank: 8-32 suits a style or a character."
                ),
                io.Float.Input(
                    "alpha",
                    default=16.0,
                    min=0.001,
                    max=1024.0,
                    step=0.5,
                    tooltip="LoRA alpha; the update is scaled by alpha / rank.",
                ),
                io.Float.Input(
                    "learning_rate",
                    default=1e-4,
                    min=1e-7,
                    max=1.0,
                    step=1e-5,
                    tooltip="AdamW learning rate (1e-4 is a common start).",
                ),
                io.Combo.Input(
                    "blocks",
                    options=BLOCK_CHOICES,
                    default="all",
                    tooltip="Which DiT blocks get LoRA: all, the latter half, or the list below.",
                ),
                io.String.Input(
                    "block_list",
                    default="",
                    optional=True,
                    tooltip="Block numbers when blocks is 'list', e.g. 10,11,12.",
                ),
                io.String.Input(
                    "targets",
                    default="auto",
                    tooltip="Layers per block. auto: attention and MLP (Wan: self_attn, cross_attn, ffn; HunyuanVideo: "
                    "img_attn, txt_attn, img_mlp, txt_mlp, single); all; or groups / single layers like self_attn.q.",
                ),
                io.Int.Input(
                    "seed",
                    default=0,
                    min=0,
                    max=0xFFFFFFFF,
                    tooltip="Seed of the LoRA init, clip order, noise and timesteps.",
                ),
                io.String.Input(
                    "output_name",
                    default="histenc_lora",
                    tooltip="File name in the loras folder (.safetensors is added).",
                ),
                io.Int.Input(
                    "checkpoint_every",
                    default=50,
                    min=1,
                    max=100_000,
                    tooltip="Save a resumable checkpoint every N steps (also on interrupt).",
                ),
                io.Float.Input(
                    "timestep_shift",
                    default=3.0,
                    min=0.1,
                    max=20.0,
                    step=0.1,
                    tooltip="Shift of the logit-normal training timesteps; higher trains noisier steps.",
                ),
                io.Boolean.Input(
                    "gradient_checkpointing",
                    default=False,
                    tooltip="Recompute block activations in backward: less memory, slower steps.",
                ),
                io.Boolean.Input(
                    "keep_checkpoint",
                    default=False,
                    optional=True,
                    tooltip="After a finished run, keep the resumable checkpoint (LoRA and optimizer state, in "
                    "output/histenc_training/<name>) to extend the run with more steps later; off removes it. The "
                    "summary shows its size. An interrupted run always keeps it.",
                ),
            ],
            outputs=[
                io.Model.Output(display_name="model"),
                io.Image.Output(display_name="loss_plot"),
                io.String.Output(display_name="lora_path"),
            ],
        )

    @classmethod
    def validate_inputs(cls, blocks=None):
        """The host does not check a V3 combo's value; a linked one (None here) is checked when the node runs."""
        return True if blocks is None else check_combo("blocks", blocks, BLOCK_CHOICES) or True

    @classmethod
    def execute(
        cls,
        model,
        dataset,
        steps,
        rank,
        alpha,
        learning_rate,
        blocks,
        targets,
        seed,
        output_name,
        checkpoint_every,
        timestep_shift,
        gradient_checkpointing,
        block_list="",
        keep_checkpoint=False,
    ) -> io.NodeOutput:
        problem = check_combo("blocks", blocks, BLOCK_CHOICES)
        if problem:
            raise ValueError(problem)
        path = lora_path(output_name.strip())
        confine(dataset, data_roots(), "dataset", "connect the Video Dataset node's output")
        data = CachedDataset(dataset)
        dm = model.get_model_object("diffusion_model")
        lora_family(dm)
        spec = LoRASpec(rank, alpha, targets, block_list if blocks == "list" else blocks, seed)
        chosen_targets, chosen_blocks = spec.layout(dm)
        settings = TrainSettings(
            steps=steps,
            lr=learning_rate,
            seed=seed,
            checkpoint_every=checkpoint_every,
            extra={
                "rank": rank,
                "alpha": alpha,
                "targets": list(chosen_targets),
                "blocks": list(chosen_blocks),
                "timestep_shift": timestep_shift,
                "dataset": str(Path(dataset).resolve()),
                "width": dit_width(dm),
            },
        )
        objective = PlainLoRAObjective(data, lambda x: model.model.process_latent_in(x), timestep_shift)

        def record(result):
            return {
                **settings.identity(),
                "steps": result.step,
                "final_loss": result.losses[-1] if result.losses else None,
            }

        patched, job = train_on_model(
            model,
            objective,
            spec,
            settings,
            checkpoint_dir(path),
            lora_file=path,
            record=record,
            gradient_checkpointing=gradient_checkpointing,
            keep_checkpoint=keep_checkpoint,
        )
        return io.NodeOutput(patched, image_tensor(job.result.png), str(path), ui=ui.PreviewText(job.summary()))


NODES = [TrainLoRA]
