"""Decode a long latent video section by section: IMAGE for short clips, or a streamed VIDEO file."""

from __future__ import annotations

import os
import uuid
from fractions import Fraction

import av
import folder_paths
import torch
from comfy_api.latest import InputImpl, io

from ..histenc.longvideo.decode import chunk_plan


def streamed_wan_chunks(vae, samples: torch.Tensor, chunk: int):
    """Exact chunked decoding for ComfyUI's Wan 2.1 VAE: its causal feature cache is kept across chunks.

    The VAE decodes one latent frame at a time through that cache anyway, so carrying it from one
    chunk to the next gives exactly the full decode while only a chunk of pixels is in memory.
    """
    import comfy.ldm.wan.vae as wan_vae
    import comfy.model_management

    model = vae.first_stage_model
    comfy.model_management.load_models_gpu([vae.patcher])
    cache = [None] * wan_vae.count_conv3d(model.decoder)
    with torch.no_grad():
        for start in range(0, samples.shape[2], chunk):
            x = model.conv2(samples[:, :, start : start + chunk].to(vae.vae_dtype).to(vae.device))
            frames = [model.decoder(x[:, :, i : i + 1], feat_cache=cache, feat_idx=[0]) for i in range(x.shape[2])]
            images = vae.process_output(torch.cat(frames, 2).to(vae.output_device).float()).movedim(1, -1)
            yield images.reshape(-1, *images.shape[-3:])


def warmup_chunks(vae, samples: torch.Tensor, chunk: int, warmup: int):
    """Other VAEs: each chunk decoded with ``warmup`` latent frames before it, their pixels dropped."""
    for c in chunk_plan(samples.shape[2], chunk, warmup):
        images = vae.decode(samples[:, :, c.decode_start : c.end])
        yield images.reshape(-1, *images.shape[-3:])[c.skip :]


def decode_chunks(vae, latent: dict, chunk: int, warmup: int):
    """Yield IMAGE chunks [F, H, W, 3] in order, trimmed to the frame count the sampler asked for."""
    samples = latent["samples"]
    if samples.ndim != 5:
        raise ValueError(
            f"latent must be a video LATENT [batch, channels, frames, height, width], got {tuple(samples.shape)}."
        )
    if (
        chunk_plan(samples.shape[2], chunk, warmup)
        and type(vae.first_stage_model).__name__ == "WanVAE"
        and hasattr(vae.first_stage_model, "conv2")
        and vae.latent_channels == 16
    ):
        parts = streamed_wan_chunks(vae, samples, chunk)
    else:
        parts = warmup_chunks(vae, samples, chunk, warmup)
    wanted = latent.get("histenc_frames")
    emitted = 0
    for images in parts:
        if wanted is not None:
            images = images[: max(0, wanted - emitted)]
        emitted += images.shape[0]
        if images.shape[0]:
            yield images.float().cpu()


def source_inputs():
    return [
        io.Vae.Input("vae", tooltip="The VAE of the model that made the latent."),
        io.Latent.Input("latent", tooltip="A video LATENT, e.g. from the Long Video Sampler."),
    ]


def chunk_inputs():
    return [
        io.Int.Input(
            "chunk_frames", default=8, min=1, max=256, tooltip="Latent frames decoded at once; lower uses less memory."
        ),
        io.Int.Input(
            "warmup_frames",
            default=2,
            min=0,
            max=8,
            tooltip="For VAEs other than Wan 2.1's (whose chunks are exact): latent frames decoded "
            "before each chunk and dropped, so seams come close to a full decode.",
        ),
    ]


class DecodeLongVideo(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="HistEncDecodeLongVideo",
            display_name="Decode Long Video",
            category="histenc/sampling",
            description="Decodes a long video latent in chunks, so VAE memory stays bounded; trims the frames the "
            "long-video sampler padded.",
            inputs=[*source_inputs(), *chunk_inputs()],
            outputs=[io.Image.Output(display_name="images")],
        )

    @classmethod
    def execute(cls, vae, latent, chunk_frames, warmup_frames) -> io.NodeOutput:
        return io.NodeOutput(torch.cat(list(decode_chunks(vae, latent, chunk_frames, warmup_frames)), dim=0))


class DecodeLongVideoToFile(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="HistEncDecodeLongVideoToVideo",
            display_name="Decode Long Video (streamed VIDEO)",
            category="histenc/sampling",
            description="Decodes chunk by chunk straight into an mp4 in the temp folder, so a minute of video never "
            "sits in RAM as images; connect the VIDEO to SaveVideo.",
            inputs=[
                *source_inputs(),
                io.Float.Input(
                    "fps", default=16.0, min=1.0, max=120.0, step=1.0, tooltip="Frames per second of the video."
                ),
                *chunk_inputs(),
                io.Int.Input("crf", default=19, min=0, max=51, tooltip="H.264 quality: lower is better and larger."),
            ],
            outputs=[io.Video.Output(display_name="video")],
        )

    @classmethod
    def execute(cls, vae, latent, fps, chunk_frames, warmup_frames, crf) -> io.NodeOutput:
        folder = os.path.join(folder_paths.get_temp_directory(), "histenc")
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"long_video_{uuid.uuid4().hex[:12]}.mp4")
        rate = Fraction(fps).limit_denominator(1000)
        with av.open(path, mode="w") as out:
            stream = None
            for images in decode_chunks(vae, latent, chunk_frames, warmup_frames):
                if stream is None:
                    stream = out.add_stream("libx264", rate=rate, options={"crf": str(crf)})
                    stream.width, stream.height = images.shape[2] // 2 * 2, images.shape[1] // 2 * 2
                    stream.pix_fmt = "yuv420p"
                frames = (images[:, : stream.height, : stream.width].clamp(0, 1) * 255).round().to(torch.uint8).numpy()
                for frame in frames:
                    for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                        out.mux(packet)
            if stream is not None:
                for packet in stream.encode():
                    out.mux(packet)
        return io.NodeOutput(InputImpl.VideoFromFile(path))


NODES = [DecodeLongVideo, DecodeLongVideoToFile]
