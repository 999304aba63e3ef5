"""History-encoder nodes: build one for a MODEL, load / save it, and use it as a context mode."""

from __future__ import annotations

import os

import folder_paths
import torch
from comfy_api.latest import io

from ..histenc.context import ContextSource
from ..histenc.encoder.model import VARIANTS, HistoryEncoder
from ..histenc.files import check_plain_name
from ..histenc.encoder.io import load_encoder, save_encoder
from ..histenc.window import SlidingWindow

from ._common import ENCODERS_FOLDER as FOLDER, Context, Encoder, model_dit, model_family

RATES = ["4x4x2", "2x2x2", "2x2x1", "2x2x4", "2x2x8", "4x4x4", "8x8x2"]


class VAECodec:
    """ComfyUI's VAE as the encoder's pixel branch needs it: in the DiT's latent space (the model's latent format)."""

    def __init__(self, vae, model):
        self.vae = vae
        self.latent_in = model.model.process_latent_in
        self.latent_out = model.model.process_latent_out

    def __deepcopy__(self, memo):
        return self  # a copy of the encoder (e.g. to train it) uses the same VAE; the VAE is never copied

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        images = self.vae.decode(self.latent_out(latents))  # [1, F, H, W, 3] (video VAEs) or [F, H, W, 3]
        return images.reshape(-1, *images.shape[-3:])

    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        return self.latent_in(self.vae.encode(frames))


def give_vae(encoder: HistoryEncoder, model, vae, where: str) -> HistoryEncoder:
    """Hand the encoder the VAE its pixel branch uses, refusing a missing one or one of another family."""
    if vae is None:
        if encoder.config.lr_input == "pixels":
            raise ValueError(
                f"{where} has the pixel low-resolution branch, which decodes the history with the VAE; "
                "connect the model's VAE to vae."
            )
        return encoder
    channels = model.model.latent_format.latent_channels
    if vae.latent_channels != channels:
        raise ValueError(
            f"vae makes {vae.latent_channels}-channel latents but the model uses {channels}; "
            "connect the VAE of this model family."
        )
    encoder.set_codec(VAECodec(vae, model))
    return encoder


VAE_TOOLTIP = (
    "The model's VAE, for the paper's low-resolution branch: each group of history frames is decoded, "
    "downsampled in pixels and encoded again. Without it the branch averages latents (no VAE work)."
)


class EncoderOnModelDevice(ContextSource):
    """Runs the encoder where the DiT runs (it is the pack's own module, not managed by ComfyUI)."""

    def __init__(self, encoder: HistoryEncoder):
        self.encoder = encoder

    def tokens_for(self, grid, history_frames: int) -> int:
        return self.encoder.tokens_for(grid, history_frames)

    def weight_bytes(self) -> int:
        return self.encoder.weight_bytes()

    def describe(self) -> dict:
        return {
            "type": "HistoryEncoder",
            **self.encoder.config.to_meta(),
            "weights": float(sum(p.detach().double().sum() for p in self.encoder.parameters())),
        }

    def context(self, history, grid, dit):
        if next(self.encoder.parameters()).device != torch.device(dit.device):
            self.encoder.to(dit.device)
            self.encoder.reset()
        return self.encoder.context(history, grid, dit)


class InitHistoryEncoder(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="HistEncInitHistoryEncoder",
            display_name="New History Encoder",
            category="histenc/history encoder",
            description="A fresh history encoder for this MODEL: its low-resolution branch starts as the DiT's own "
            "patch embedding and its learned branch starts at zero, so untrained it gives the low-resolution "
            "history only; it needs frame-query pretraining to add detail. With a VAE connected the "
            "low-resolution branch is the paper's (pixels downsampled, then VAE-encoded); without, it averages "
            "latents. The choice is saved with the encoder.",
            inputs=[
                io.Model.Input(
                    "model", tooltip="The Wan model the encoder will feed (sets width, channels and patch)."
                ),
                io.Combo.Input(
                    "rate",
                    options=RATES,
                    default="4x4x2",
                    tooltip="Compression H x W x T on top of the latent: 4x4x2 keeps 1/32 of the tokens.",
                ),
                io.Combo.Input(
                    "variant",
                    options=list(VARIANTS),
                    default="full",
                    tooltip="full = LR + learned HR branch (the paper's encoder); the others are ablations.",
                ),
                io.Int.Input(
                    "seed", default=0, min=0, max=0xFFFFFFFF, tooltip="Seed of the learned branch's initial weights."
                ),
                io.Vae.Input("vae", optional=True, tooltip=VAE_TOOLTIP),
            ],
            outputs=[Encoder.Output(display_name="encoder")],
        )

    @classmethod
    def execute(cls, model, rate, variant, seed, vae=None) -> io.NodeOutput:
        if vae is not None and variant not in ("full", "only_lr"):
            raise ValueError(
                f"vae is connected but variant {variant!r} has no low-resolution branch to use it; "
                "disconnect the VAE or choose 'full' or 'only_lr'."
            )
        lr_input = "latent" if vae is None else "pixels"
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            encoder = HistoryEncoder.from_dit(model_dit(model), rate=rate, variant=variant, lr_input=lr_input)
        return io.NodeOutput(give_vae(encoder, model, vae, "this encoder"))


class LoadHistoryEncoder(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="HistEncLoadHistoryEncoder",
            display_name="Load History Encoder",
            category="histenc/history encoder",
            description="Loads a trained history encoder from models/history_encoders and checks it fits the MODEL.",
            inputs=[
                io.Model.Input("model", tooltip="The Wan model the encoder will feed; a mismatching file is refused."),
                io.Combo.Input(
                    "encoder_name",
                    options=folder_paths.get_filename_list(FOLDER),
                    tooltip="A .safetensors file in models/history_encoders.",
                ),
                io.Vae.Input(
                    "vae",
                    optional=True,
                    tooltip="Needed when the file uses the pixel low-resolution branch; ignored otherwise.",
                ),
            ],
            outputs=[Encoder.Output(display_name="encoder")],
        )

    @classmethod
    def execute(cls, model, encoder_name, vae=None) -> io.NodeOutput:
        path = folder_paths.get_full_path(FOLDER, encoder_name)
        if path is None:
            raise ValueError(
                f"history encoder {encoder_name!r} is not in models/{FOLDER}; put the file there and refresh."
            )
        encoder = load_encoder(path, dit=model_dit(model), family=model_family(model))
        return io.NodeOutput(give_vae(encoder, model, vae, f"history encoder {encoder_name!r}"))


class SaveHistoryEncoder(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="HistEncSaveHistoryEncoder",
            display_name="Save History Encoder",
            category="histenc/history encoder",
            description="Saves an encoder (e.g. after training) to models/history_encoders as safetensors.",
            inputs=[
                Encoder.Input("encoder", tooltip="The encoder to save."),
                io.Model.Input("model", tooltip="The model it was built for; its family is written into the file."),
                io.String.Input("filename", default="history_encoder", tooltip="File name without extension."),
            ],
            outputs=[io.String.Output(display_name="path")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, encoder, model, filename) -> io.NodeOutput:
        name = filename.strip()
        if not name:
            raise ValueError("filename is empty; give a plain file name such as 'my_encoder'.")
        check_plain_name(name, "filename")
        folder = folder_paths.get_folder_paths(FOLDER)[0]
        path = save_encoder(os.path.join(folder, name + ".safetensors"), encoder, family=model_family(model))
        return io.NodeOutput(str(path))


class HistoryEncoderContext(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="HistEncHistoryEncoderContext",
            display_name="History Encoder Context",
            category="histenc/context",
            description="The whole history compressed by the encoder into a few tokens at the DiT's width, encoded "
            "incrementally as sections are appended. No trained encoder is published: an untrained one gives only a "
            "low-resolution summary the DiT was never trained to read, so train it (Pretrain History Encoder, "
            "Finetune Autoregressive) before expecting it to help.",
            inputs=[
                Encoder.Input("encoder", tooltip="From New / Load History Encoder."),
                io.Int.Input(
                    "window_frames",
                    default=0,
                    min=0,
                    max=16,
                    tooltip="Also show the last N raw latent frames at full resolution (0: encoder only).",
                ),
                Context.Input(
                    "add_to", optional=True, tooltip="Another context to combine with (e.g. a second encoder)."
                ),
            ],
            outputs=[Context.Output(display_name="context")],
        )

    @classmethod
    def execute(cls, encoder, window_frames, add_to=None) -> io.NodeOutput:
        encoder.reset()  # a new graph run starts a new history
        sources = list(add_to or []) + [EncoderOnModelDevice(encoder)]
        if window_frames:
            sources.append(SlidingWindow(window_frames))
        return io.NodeOutput(sources)


NODES = [InitHistoryEncoder, LoadHistoryEncoder, SaveHistoryEncoder, HistoryEncoderContext]
