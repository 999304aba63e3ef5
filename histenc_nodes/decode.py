"""Decode a long latent video section by section: IMAGE for short clips, or a streamed VIDEO file."""

from __future__ import annotations

import functools
import io as bytes_io
import logging
from fractions import Fraction

import av
import torch
from comfy_api.latest import InputImpl, io

from ..histenc.longvideo.decode import chunk_plan, pixel_frames

log = logging.getLogger(__name__)


@functools.cache
def wan_cache_api() -> str | None:
    """Which causal-cache API this host's Wan 2.1 VAE has, by the helper ``comfy.ldm.wan.vae`` provides; None
    (said once, in one sentence) when it has neither and the Wan VAE is decoded with warm-up frames.

    ``count_conv3d`` (ComfyUI 0.3.x): ``WanVAE.decode`` runs its decoder one latent frame at a time and each call
    returns a tensor. ``count_cache_layers`` (0.33): the first frame, then pairs, and each call returns a list of
    pixel chunks. Either way the host's own decode drives its decoder through the cache, which is what the
    streamed decode watches.
    """
    import comfy.ldm.wan.vae as wan_vae

    for helper in ("count_cache_layers", "count_conv3d"):
        if hasattr(wan_vae, helper):
            return helper
    try:
        import comfyui_version

        version = comfyui_version.__version__
    except ImportError:
        version = "unknown"
    log.warning(
        "histenc: ComfyUI %s's Wan VAE module has neither count_conv3d nor count_cache_layers, so Decode Long "
        "Video decodes Wan 2.1 latents with warm-up frames instead of the exact streamed decode.",
        version,
    )
    return None


def is_streamable_wan(vae) -> bool:
    """The Wan 2.1 VAE of ``comfy.ldm.wan.vae`` on a host whose causal-cache API is known."""
    import comfy.ldm.wan.vae as wan_vae

    return isinstance(vae.first_stage_model, wan_vae.WanVAE) and wan_cache_api() is not None


def streamed_wan_chunks(vae, samples: torch.Tensor, chunk: int, emit) -> None:
    """Exact chunked decoding for ComfyUI's Wan 2.1 VAE: the host's own decode, watched at its decoder.

    ``WanVAE.decode`` runs its decoder a latent frame or two at a time through its causal feature cache;
    a forward hook on the decoder takes each call's pixels and hands the host an empty piece of the same
    form instead, so the frames are exactly the full decode's while only about a chunk of them is in
    memory. ``emit`` gets the pixels of ``chunk`` latent frames at a time, as IMAGE [F, H, W, 3].
    """
    import comfy.model_management

    ends = [pixel_frames(c.end) for c in chunk_plan(samples.shape[2], chunk, 0)]
    pending: list[torch.Tensor] = []
    done = 0

    def flush(count: int) -> None:
        nonlocal pending, done
        pixels = torch.cat(pending, 2)
        pending = [pixels[:, :, count:]] if count < pixels.shape[2] else []
        images = vae.process_output(pixels[:, :, :count].to(vae.output_device, torch.float32, copy=True))
        images = images.movedim(1, -1)
        emit(images.reshape(-1, *images.shape[-3:]))
        done += count

    def watch(module, args, output):
        pieces = output if isinstance(output, list) else [output]
        pending.extend(pieces)
        have = done + sum(p.shape[2] for p in pending)
        while ends and have >= ends[0]:
            flush(ends.pop(0) - done)
        empty = pieces[0][:, :, :0]
        return [empty] if isinstance(output, list) else empty

    model = vae.first_stage_model
    memory = vae.memory_used_decode(samples[:, :, :2].shape, vae.vae_dtype)
    comfy.model_management.load_models_gpu([vae.patcher], memory_required=memory, force_full_load=vae.disable_offload)
    handle = model.decoder.register_forward_hook(watch)
    try:
        with torch.no_grad():
            model.decode(samples.to(device=vae.device, dtype=vae.vae_dtype))
    finally:
        handle.remove()
    if pending:
        flush(sum(p.shape[2] for p in pending))


def warmup_chunks(vae, samples: torch.Tensor, chunk: int, warmup: int):
    """Other VAEs: each chunk decoded with ``warmup`` latent frames before it, their pixels dropped."""
    for c in chunk_plan(samples.shape[2], chunk, warmup):
        images = vae.decode(samples[:, :, c.decode_start : c.end])
        yield images.reshape(-1, *images.shape[-3:])[c.skip :]


def decode_chunks(vae, latent: dict, chunk: int, warmup: int, emit) -> None:
    """Hand ``emit`` IMAGE chunks [F, H, W, 3] in order, trimmed to the frame count the sampler asked for."""
    samples = latent["samples"]
    if samples.ndim != 5:
        raise ValueError(
            f"latent must be a video LATENT [batch, channels, frames, height, width], got {tuple(samples.shape)}."
        )
    if samples.shape[1] != vae.latent_channels:
        raise ValueError(
            f"latent has {samples.shape[1]} channels but this VAE decodes {vae.latent_channels}; connect the VAE of "
            "the model that made the latent (Wan 2.2 5B latents have 48 channels and need the Wan 2.2 VAE)."
        )
    chunk_plan(samples.shape[2], chunk, warmup)  # says in one sentence what is wrong with the settings
    wanted = latent.get("histenc_frames")
    emitted = 0

    def trimmed(images: torch.Tensor) -> None:
        nonlocal emitted
        if wanted is not None:
            images = images[: max(0, wanted - emitted)]
        emitted += images.shape[0]
        if images.shape[0]:
            emit(images.float().cpu())

    if is_streamable_wan(vae):
        streamed_wan_chunks(vae, samples, chunk, trimmed)
    else:
        for images in warmup_chunks(vae, samples, chunk, warmup):
            trimmed(images)


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
        parts: list[torch.Tensor] = []
        decode_chunks(vae, latent, chunk_frames, warmup_frames, parts.append)
        return io.NodeOutput(torch.cat(parts, dim=0))


class DecodeLongVideoToFile(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="HistEncDecodeLongVideoToVideo",
            display_name="Decode Long Video (streamed VIDEO)",
            category="histenc/sampling",
            description="Decodes chunk by chunk straight into an H.264 mp4 held in memory (encoded, a small "
            "fraction of the frames' size), so a minute of video never sits in RAM as images and no file is left "
            "behind; connect the VIDEO to SaveVideo.",
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
        """The mp4 is muxed into memory, not a temp file: the VIDEO lives as long as ComfyUI keeps the output, and
        no decode, failed, interrupted or finished, leaves a file behind."""
        buffer = bytes_io.BytesIO()
        rate = Fraction(fps).limit_denominator(1000)
        with av.open(buffer, mode="w", format="mp4") as out:
            streams = []

            def write(images: torch.Tensor) -> None:
                if not streams:
                    stream = out.add_stream("libx264", rate=rate, options={"crf": str(crf)})
                    stream.width, stream.height = images.shape[2] // 2 * 2, images.shape[1] // 2 * 2
                    stream.pix_fmt = "yuv420p"
                    streams.append(stream)
                stream = streams[0]
                frames = (images[:, : stream.height, : stream.width].clamp(0, 1) * 255).round().to(torch.uint8).numpy()
                for frame in frames:
                    for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                        out.mux(packet)

            decode_chunks(vae, latent, chunk_frames, warmup_frames, write)
            for stream in streams:
                for packet in stream.encode():
                    out.mux(packet)
        buffer.seek(0)
        return io.NodeOutput(InputImpl.VideoFromFile(buffer))


NODES = [DecodeLongVideo, DecodeLongVideoToFile]
