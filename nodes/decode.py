"""Decode a long latent video section by section: IMAGE for short clips, or a streamed VIDEO file."""

from __future__ import annotations

import os
import uuid
from fractions import Fraction

import av
import folder_paths
import torch
from comfy_api.latest import InputImpl, io

from histenc.decode import chunk_plan


def decode_chunks(vae, latent: dict, chunk: int, warmup: int):
    """Yield IMAGE chunks [F, H, W, 3] in order, trimmed to the frame count the sampler asked for."""
    samples = latent["samples"]
    if samples.ndim != 5:
        raise ValueError(f"latent must be a video LATENT [batch, channels, frames, height, width], got {tuple(samples.shape)}.")
    wanted = latent.get("histenc_frames")
    stride = 4
    emitted = 0
    for c in chunk_plan(samples.shape[2], chunk, warmup, stride):
        images = vae.decode(samples[:, :, c.decode_start:c.end])
        images = images.reshape(-1, *images.shape[-3:])[c.skip:]
        if wanted is not None:
            images = images[: max(0, wanted - emitted)]
        emitted += images.shape[0]
        if images.shape[0]:
            yield images.float().cpu()


def source_inputs():
    return [io.Vae.Input("vae", tooltip="The VAE of the model that made the latent."),
            io.Latent.Input("latent", tooltip="A video LATENT, e.g. from the Long Video Sampler.")]


def chunk_inputs():
    return [io.Int.Input("chunk_frames", default=8, min=1, max=256, tooltip="Latent frames decoded at once; lower uses less memory."),
            io.Int.Input("warmup_frames", default=2, min=0, max=8,
                         tooltip="Latent frames decoded before each chunk and dropped, so seams match a full decode.")]


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
                io.Float.Input("fps", default=16.0, min=1.0, max=120.0, step=1.0, tooltip="Frames per second of the video."),
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
