"""Training nodes for the history encoder: frame-query pretraining (Eq. 4) and autoregressive finetuning (Eq. 6).

Thin: they pick the data (a cached dataset, else a LATENT batch) and the settings, and hand the MODEL's
own DiT, a copy of the encoder and the LoRA to the core's trainer (histenc.train.trainer). The copy is
needed twice over: ComfyUI makes the encoder under inference mode, whose tensors cannot train, and the
encoder the graph holds must keep its values (New / Load History Encoder's cached output). Interrupting
saves a resumable checkpoint (re-run with the same settings to continue); a finished run removes it unless
``keep_checkpoint`` is on, and says which with its size. Outputs plug into the loaders.
"""

from __future__ import annotations

import json
from pathlib import Path

import folder_paths
from comfy_api.latest import io, ui

from ..histenc.lora import dit_family
from ..histenc.train.autoregressive import AutoregressiveSettings
from ..histenc.train.dataset import confine
from ..histenc.train.frame_query import FrameQuerySettings, trainable_copy
from ..histenc.train.loop import TrainSettings
from ..histenc.train.trainer import AutoregressiveObjective, FrameQueryObjective, LoRASpec

from ._common import ENCODERS_FOLDER as FOLDER, Encoder, model_dit, model_family
from ._common import (
    checkpoint_dir,
    data_inputs,
    data_roots,
    image_tensor,
    keep_checkpoint_input,
    lora_path,
    train_on_model,
    training_clips,
)
from ._common import uses_clean_context

OBJECTIVES = {"frame_query": FrameQueryObjective, "autoregressive": AutoregressiveObjective}


def output_names(name: str) -> tuple[Path, Path]:
    """(LoRA file, encoder file) for an output name: the loras folder and models/history_encoders."""
    lora = lora_path(name)
    return lora, Path(folder_paths.get_folder_paths(FOLDER)[0]) / f"{lora.stem}.safetensors"


def train_encoder(
    objective,
    model,
    encoder,
    clips,
    steps,
    lr,
    seed,
    rank,
    output_name,
    checkpoint_every,
    gradient_checkpointing,
    extra,
    settings_obj,
    keep_checkpoint,
):
    """Train a copy of ``encoder`` (and a LoRA of ``rank``, none at 0) on the MODEL's DiT; save both; the node's
    outputs, the trained copy among them, and the run's summary on the node."""
    lora_file, encoder_file = output_names(output_name.strip())
    dit_family(model.get_model_object("diffusion_model"))
    encoder.check_dit(model_dit(model))
    encoder = trainable_copy(encoder)
    encoder.reset()
    spec = LoRASpec(rank, float(rank), "all", "all", seed) if rank > 0 else None
    identity = {
        "objective": objective,
        "rank": rank,
        "encoder": encoder.config.to_meta(),
        **settings_obj.to_meta(),
        **extra,
    }
    settings = TrainSettings(
        steps=steps, lr=lr, seed=seed, checkpoint_every=checkpoint_every, extra=json.loads(json.dumps(identity))
    )  # as a checkpoint stores it (lists)
    task = OBJECTIVES[objective](
        encoder, clips, settings_obj, clean_context=uses_clean_context(model), family=model_family(model)
    )
    out_model, job = train_on_model(
        model,
        task,
        spec,
        settings,
        checkpoint_dir(encoder_file),
        lora_file=lora_file,
        module_file=encoder_file,
        gradient_checkpointing=gradient_checkpointing,
        keep_checkpoint=keep_checkpoint,
    )
    return io.NodeOutput(
        out_model, encoder, image_tensor(job.result.png), str(encoder_file), ui=ui.PreviewText(job.summary())
    )


def training_data(model, dataset, latent, positive) -> list:
    """The clips to train on; a dataset path must lie in ComfyUI's folders (as the Video Dataset node writes it)."""
    if dataset:
        confine(dataset, data_roots(), "dataset", "connect the Video Dataset node's output")
    return training_clips(model, dataset, latent, positive)


def common_inputs():
    return [
        io.Model.Input("model", tooltip="A Wan 2.1 / 2.2 MODEL from the stock loaders (stays frozen; a LoRA trains)."),
        Encoder.Input(
            "encoder",
            tooltip="From New / Load History Encoder; a copy of it trains, is saved and is output (the input stays "
            "as it was).",
        ),
        *data_inputs(),
        io.Int.Input(
            "lora_rank", default=16, min=0, max=512, tooltip="Rank of the new LoRA trained with it; 0: no LoRA."
        ),
        io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFF, tooltip="Seed of the LoRA init, data order and noise."),
        io.String.Input("output_name", default="histenc_history", tooltip="Name of the encoder and LoRA files."),
        io.Int.Input("checkpoint_every", default=50, min=1, max=100_000, tooltip="Resumable checkpoint every N steps."),
        io.Boolean.Input("gradient_checkpointing", default=False, tooltip="Less memory, slower steps."),
        keep_checkpoint_input(),
    ]


OUTPUTS = [
    io.Model.Output(display_name="model"),
    Encoder.Output(display_name="encoder"),
    io.Image.Output(display_name="loss_plot"),
    io.String.Output(display_name="encoder_path"),
]


class PretrainHistoryEncoder(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="HistEncPretrainHistoryEncoder",
            display_name="Pretrain History Encoder (frame query)",
            category="histenc/train",
            description="Frame-query pretraining: random history frames stay clean, the rest is noised, and the DiT "
            "(with a LoRA) must regenerate the kept frames from the encoder's tokens.",
            inputs=common_inputs()
            + [
                io.Int.Input(
                    "history_frames", default=16, min=2, max=1024, tooltip="Latent frames per training history."
                ),
                io.Int.Input(
                    "query_frames", default=2, min=1, max=64, tooltip="Frames queried per step (random every step)."
                ),
            ],
            outputs=OUTPUTS,
        )

    @classmethod
    def execute(
        cls,
        model,
        encoder,
        steps,
        learning_rate,
        lora_rank,
        seed,
        output_name,
        checkpoint_every,
        gradient_checkpointing,
        history_frames,
        query_frames,
        dataset=None,
        latent=None,
        positive=None,
        keep_checkpoint=False,
    ) -> io.NodeOutput:
        fq = FrameQuerySettings(history_frames=history_frames, query_frames=query_frames)
        clips = training_data(model, dataset, latent, positive)
        return train_encoder(
            "frame_query",
            model,
            encoder,
            clips,
            steps,
            learning_rate,
            seed,
            lora_rank,
            output_name,
            checkpoint_every,
            gradient_checkpointing,
            {"data": str(dataset or "latent")},
            fq,
            keep_checkpoint,
        )


class FinetuneAutoregressive(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="HistEncFinetuneAutoregressive",
            display_name="Finetune Autoregressive (encoder + LoRA)",
            category="histenc/train",
            description="Trains the encoder and a new LoRA together to predict the next section from the encoded "
            "history and the section's storyboard prompt.",
            inputs=common_inputs()
            + [
                io.Int.Input("section_frames", default=4, min=1, max=64, tooltip="Latent frames predicted per step."),
                io.Int.Input(
                    "max_history", default=64, min=1, max=4096, tooltip="Newest history frames the encoder sees."
                ),
            ],
            outputs=OUTPUTS,
        )

    @classmethod
    def execute(
        cls,
        model,
        encoder,
        steps,
        learning_rate,
        lora_rank,
        seed,
        output_name,
        checkpoint_every,
        gradient_checkpointing,
        section_frames,
        max_history,
        dataset=None,
        latent=None,
        positive=None,
        keep_checkpoint=False,
    ) -> io.NodeOutput:
        ar = AutoregressiveSettings(section_frames=section_frames, max_history=max_history)
        clips = training_data(model, dataset, latent, positive)
        return train_encoder(
            "autoregressive",
            model,
            encoder,
            clips,
            steps,
            learning_rate,
            seed,
            lora_rank,
            output_name,
            checkpoint_every,
            gradient_checkpointing,
            {"data": str(dataset or "latent")},
            ar,
            keep_checkpoint,
        )


NODES = [PretrainHistoryEncoder, FinetuneAutoregressive]
