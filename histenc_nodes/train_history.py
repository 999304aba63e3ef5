"""Training nodes for the history encoder: frame-query pretraining (Eq. 4) and autoregressive finetuning (Eq. 6).

Thin: they pick the data (a cached dataset, else a LATENT batch), build the LoRA, and call
histenc.train.frame_query / autoregressive on the MODEL's own DiT. Interrupting saves a resumable
checkpoint (re-run with the same settings to continue); outputs plug into the loaders.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from comfy_api.latest import io

from ..histenc.encoder.io import save_encoder
from ..histenc.lora import LoRA, dit_family
from ..histenc.train.autoregressive import AutoregressiveSettings, finetune_autoregressive
from ..histenc.train.dataset import CachedDataset
from ..histenc.train.frame_query import Clip, FrameQuerySettings, pretrain_history_encoder
from ..histenc.train.loop import TrainSettings

from ._common import Dataset
from ._common import ENCODERS_FOLDER as FOLDER, Encoder, model_dit, model_family
from ._common import uses_clean_context
from .lora_train import checkpoint_dir, image_tensor, lora_path, training_progress

SECONDS_PER_LATENT_FRAME = 4 / 24


def training_clips(model, dataset, latent, positive) -> list[Clip]:
    """Clips in the model's latent space: the cached dataset, else each item of a LATENT batch."""
    to_model = model.model.process_latent_in
    if dataset:
        data = CachedDataset(dataset)
        clips = []
        for i in range(len(data)):
            item = data[i]
            lat = item["latents"].float()
            lat = lat if lat.ndim == 5 else lat.unsqueeze(0)
            prompts = [(float(t) / SECONDS_PER_LATENT_FRAME, cond.float()) for t, _, cond in item["prompts"]]
            clips.append(Clip(to_model(lat), prompts))
        return clips
    if latent is None:
        raise ValueError("no training data: connect a dataset (Video Dataset node) or a video LATENT batch.")
    samples = latent["samples"]
    if samples.ndim != 5:
        raise ValueError(f"latent must be a video LATENT [batch, channels, frames, height, width], got shape "
                         f"{tuple(samples.shape)}; connect a video latent or use the Video Dataset node.")
    if positive is None:
        raise ValueError("a LATENT batch needs a prompt: connect the positive CONDITIONING (or use a dataset).")
    text = positive[0][0].float()
    return [Clip(to_model(samples[i:i + 1].float()), [(0.0, text)]) for i in range(samples.shape[0])]


def output_names(name: str) -> tuple[Path, Path]:
    lora = lora_path(name)
    import folder_paths

    return lora, Path(folder_paths.get_folder_paths(FOLDER)[0]) / f"{lora.stem}.safetensors"


def run_training(objective, model, encoder, clips, steps, lr, seed, rank, output_name, checkpoint_every,
                 gradient_checkpointing, extra, settings_obj):
    import comfy.model_management
    import comfy.sd
    import comfy.utils

    lora_file, encoder_file = output_names(output_name.strip())
    with torch.inference_mode(False):
        work = model.clone()
        comfy.model_management.load_models_gpu([work], force_full_load=True)
        dm = work.get_model_object("diffusion_model")
        dit_family(dm)
        encoder.check_dit(model_dit(model))
        encoder.reset()
        lora = LoRA(dm, rank, float(rank), "all", "all", seed) if rank > 0 else None
        identity = {"objective": objective, "rank": rank, "encoder": encoder.config.to_meta(),
                    **settings_obj.to_meta(), **extra}
        settings = TrainSettings(steps=steps, lr=lr, seed=seed, checkpoint_every=checkpoint_every,
                                 extra=json.loads(json.dumps(identity)))  # as a checkpoint stores it (lists)
        on_step = training_progress(steps)

        train = pretrain_history_encoder if objective == "frame_query" else finetune_autoregressive
        try:
            result = train(dm, encoder, clips, settings, checkpoint_dir(encoder_file), settings_obj, lora=lora,
                           clean_context=uses_clean_context(model), gradient_checkpointing=gradient_checkpointing,
                           on_step=on_step)
        finally:
            if lora is not None:
                lora.detach()
        encoder.to("cpu")
        save_encoder(encoder_file, encoder, family=model_family(model))
        out_model = model
        if lora is not None:
            lora.save(lora_file, training={**settings.identity(), "steps": result.step})
            out_model, _ = comfy.sd.load_lora_for_models(model, None, comfy.utils.load_torch_file(str(lora_file)), 1.0, 0)
    return io.NodeOutput(out_model, encoder, image_tensor(result.png), str(encoder_file))


def data_inputs():
    """The training data (a dataset, else a LATENT batch and its prompt), steps and learning rate."""
    return [
        Dataset.Input("dataset", optional=True, tooltip="Cached latents and prompts from the Video Dataset node."),
        io.Latent.Input("latent", optional=True, tooltip="Without a dataset: a video LATENT batch, one clip per item."),
        io.Conditioning.Input("positive", optional=True, tooltip="The prompt used with a LATENT batch."),
        io.Int.Input("steps", default=1000, min=1, max=1_000_000, tooltip="Total optimisation steps."),
        io.Float.Input("learning_rate", default=1e-4, min=1e-7, max=1.0, step=1e-5, tooltip="AdamW learning rate."),
    ]


def common_inputs():
    return [
        io.Model.Input("model", tooltip="A Wan 2.1 / 2.2 MODEL from the stock loaders (stays frozen; a LoRA trains)."),
        Encoder.Input("encoder", tooltip="From New / Load History Encoder; it is trained in place and saved."),
        *data_inputs(),
        io.Int.Input("lora_rank", default=16, min=0, max=512, tooltip="Rank of the new LoRA trained with it; 0: no LoRA."),
        io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFF, tooltip="Seed of the LoRA init, data order and noise."),
        io.String.Input("output_name", default="histenc_history", tooltip="Name of the encoder and LoRA files."),
        io.Int.Input("checkpoint_every", default=50, min=1, max=100_000, tooltip="Resumable checkpoint every N steps."),
        io.Boolean.Input("gradient_checkpointing", default=False, tooltip="Less memory, slower steps."),
    ]


OUTPUTS = [io.Model.Output(display_name="model"), Encoder.Output(display_name="encoder"),
           io.Image.Output(display_name="loss_plot"), io.String.Output(display_name="encoder_path")]


class PretrainHistoryEncoder(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="HistEncPretrainHistoryEncoder", display_name="Pretrain History Encoder (frame query)",
            category="histenc/train",
            description="Frame-query pretraining: random history frames stay clean, the rest is noised, and the DiT "
                        "(with a LoRA) must regenerate the kept frames from the encoder's tokens.",
            inputs=common_inputs() + [
                io.Int.Input("history_frames", default=16, min=2, max=1024, tooltip="Latent frames per training history."),
                io.Int.Input("query_frames", default=2, min=1, max=64, tooltip="Frames queried per step (random every step)."),
            ],
            outputs=OUTPUTS)

    @classmethod
    def execute(cls, model, encoder, steps, learning_rate, lora_rank, seed, output_name, checkpoint_every,
                gradient_checkpointing, history_frames, query_frames, dataset=None, latent=None,
                positive=None) -> io.NodeOutput:
        fq = FrameQuerySettings(history_frames=history_frames, query_frames=query_frames)
        clips = training_clips(model, dataset, latent, positive)
        return run_training("frame_query", model, encoder, clips, steps, learning_rate, seed, lora_rank, output_name,
                            checkpoint_every, gradient_checkpointing, {"data": str(dataset or "latent")}, fq)


class FinetuneAutoregressive(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="HistEncFinetuneAutoregressive", display_name="Finetune Autoregressive (encoder + LoRA)",
            category="histenc/train",
            description="Trains the encoder and a new LoRA together to predict the next section from the encoded "
                        "history and the section's storyboard prompt.",
            inputs=common_inputs() + [
                io.Int.Input("section_frames", default=4, min=1, max=64, tooltip="Latent frames predicted per step."),
                io.Int.Input("max_history", default=64, min=1, max=4096, tooltip="Newest history frames the encoder sees."),
            ],
            outputs=OUTPUTS)

    @classmethod
    def execute(cls, model, encoder, steps, learning_rate, lora_rank, seed, output_name, checkpoint_every,
                gradient_checkpointing, section_frames, max_history, dataset=None, latent=None,
                positive=None) -> io.NodeOutput:
        ar = AutoregressiveSettings(section_frames=section_frames, max_history=max_history)
        clips = training_clips(model, dataset, latent, positive)
        return run_training("autoregressive", model, encoder, clips, steps, learning_rate, seed, lora_rank, output_name,
                            checkpoint_every, gradient_checkpointing, {"data": str(dataset or "latent")}, ar)


NODES = [PretrainHistoryEncoder, FinetuneAutoregressive]
