"""Dataset node: a folder of clips -> cached latents and text conditioning (histenc.train.dataset).

Anyone who can queue a prompt can set these paths, so the node reads only inside ComfyUI's input, output and
models folders and writes its cache only under models/ (``/view`` serves input, output and temp to every client,
never models), unless the server runs with HISTENC_ALLOW_ANY_FOLDER=1.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import folder_paths
from comfy_api.latest import io

from ..histenc.train.dataset import build_cache, confine

from ._common import Dataset, data_roots

CACHE_FOLDER = "histenc_datasets"  # models/histenc_datasets/<name>


def vae_encoder(vae):
    """frames [T, H, W, 3] -> latents [1, C, T', H', W'] through ComfyUI's VAE (raw latent space)."""
    return lambda frames: vae.encode(frames[..., :3])


def clip_encoder(clip):
    """prompt -> (conditioning [1, L, D], pooled vector or None) through ComfyUI's CLIP."""

    def encode(prompt):
        cond, extra = clip.encode_from_tokens_scheduled(clip.tokenize(prompt))[0][:2]
        return cond, extra.get("pooled_output")

    return encode


def source_folder(folder: str) -> Path:
    """The dataset folder: a relative one lies in ComfyUI's input folder."""
    path = Path(folder)
    return path if path.is_absolute() else Path(folder_paths.get_input_directory()) / path


def cache_path(source: Path, cache_folder: str, roots) -> Path:
    """Where the cache goes: models/histenc_datasets/<cache_folder>, by default named after the dataset folder.

    An absolute ``cache_folder`` must lie in the models folder too (any folder when ``roots`` is None).
    """
    base = Path(folder_paths.models_dir) / CACHE_FOLDER
    name = cache_folder.strip()
    if not name:
        real = os.path.realpath(source)
        name = f"{Path(real).name or 'dataset'}-{hashlib.sha1(real.encode('utf-8')).hexdigest()[:8]}"
    models = None if roots is None else (Path(os.path.realpath(folder_paths.models_dir)),)
    return confine(
        base / name, models, "cache_folder", f"give a plain name (the cache goes to {base}/<name>) or leave it empty"
    )


def time_stride(vae) -> int:
    return int(vae.temporal_compression_decode() or 1)


def encoder_tag(vae, clip) -> str:
    """Which encoders made a cache, so switching VAE or text encoder encodes again."""
    return (
        f"{type(vae.first_stage_model).__name__}/{vae.latent_channels}|"
        f"{type(getattr(clip, 'cond_stage_model', clip)).__name__}"
    )


class VideoDataset(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="HistEncVideoDataset",
            display_name="Video Dataset (cache latents)",
            category="histenc/train",
            description="Encode a folder of videos, image folders or stills (with optional caption .txt or storyboard "
            ".json next to each) once into cached latents and text conditioning for training.",
            inputs=[
                io.String.Input(
                    "folder",
                    tooltip="Folder with videos (.mp4, .webm, ...), folders of images, or images; "
                    "clip.txt / clip.json next to a clip gives its caption / storyboard. A relative path is "
                    "inside ComfyUI's input folder; it must lie in the input, output or models folder.",
                ),
                io.Vae.Input("vae", tooltip="The VAE of the model you will train (its latents are cached)."),
                io.Clip.Input(
                    "clip", tooltip="The text encoder of the model you will train (its conditioning is cached)."
                ),
                io.Int.Input(
                    "width",
                    default=832,
                    min=16,
                    max=4096,
                    step=16,
                    tooltip="Frames are resized to cover this width and height, then centre-cropped.",
                ),
                io.Int.Input("height", default=480, min=16, max=4096, step=16, tooltip="Training height in pixels."),
                io.Int.Input(
                    "max_frames",
                    default=81,
                    min=1,
                    max=2048,
                    tooltip="At most this many frames per clip (trimmed to 1 + 4k for Wan's VAE).",
                ),
                io.Int.Input(
                    "frame_stride",
                    default=1,
                    min=1,
                    max=64,
                    tooltip="Keep every n-th frame of a video (2 halves the frame rate).",
                ),
                io.String.Input(
                    "default_caption",
                    default="",
                    optional=True,
                    tooltip="Prompt for clips without a caption or storyboard file.",
                ),
                io.String.Input(
                    "cache_folder",
                    default="",
                    optional=True,
                    tooltip="Name of the cache in models/histenc_datasets; empty: named after the dataset folder.",
                ),
            ],
            outputs=[Dataset.Output(display_name="dataset"), io.String.Output(display_name="report")],
        )

    @classmethod
    def execute(
        cls, folder, vae, clip, width, height, max_frames, frame_stride, default_caption="", cache_folder=""
    ) -> io.NodeOutput:
        folder = folder.strip()
        if not folder:
            raise ValueError("dataset folder is empty; type the path of the folder that holds your clips.")
        roots = data_roots()
        source = source_folder(folder)
        cache = cache_path(source, cache_folder or "", roots)
        report = build_cache(
            source,
            cache,
            vae_encoder(vae),
            clip_encoder(clip),
            width,
            height,
            max_frames,
            frame_stride,
            time_stride(vae),
            default_caption or "",
            encoder_tag(vae, clip),
            roots=roots,
        )
        return io.NodeOutput(str(cache), report.summary())


NODES = [VideoDataset]
