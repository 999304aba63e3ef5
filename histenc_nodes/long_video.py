"""The long-video sampler: a storyboard streamed section by section through ComfyUI's own sampling.

With a FramePack F1 context (schedule ``framepack_f1``) it samples as FramePack F1 does: the start image is the
video's latent frame 0, a section of its own that is only context (F1's start slot), and every later section is
a whole window sampled in forward order. A FramePack checkpoint's image projection takes the CLIP-vision
encoding of the start image (``clip_vision_output``); ``prompt_settings`` gives every section's prompt the
guidance of a stock FluxGuidance node (F1: 10).
"""

from __future__ import annotations

import logging

import hashlib
import math
import os

import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.utils
import folder_paths
import latent_preview
import torch
from comfy_api.latest import io

from ..histenc.files import check_plain_name
from ..histenc.longvideo import orders
from ..histenc.context import check_sources, stateful
from ..histenc.dit.hunyuan import IMAGE_KEY
from ..histenc.framepack.f1 import check_image_tokens, f1_schedule, prompt_guidance
from ..histenc.longvideo.loop import SectionLoop
from ..histenc.longvideo.section import native_conditioning, section_latent, start_frame_schedule
from ..histenc.longvideo.storyboard import schedule_sections
from ..histenc.longvideo.timing import NEAREST
from ..histenc.units import check_size

from ._common import Context, StoryboardType, attach_context, model_info, plan_summary

log = logging.getLogger(__name__)


JOBS_FOLDER = "histenc_jobs"
# FramePack's sampling orders (Sec. 4.1) by the names the node shows.
SAMPLING_ORDERS = {
    "forward": "forward",
    "endpoints first": "endpoints",
    "inverted (anti-drifting, towards the start image)": "inverted",
    "one anchor per prompt": "anchors",
}


def start_latent(vae, image, width: int, height: int) -> tuple[torch.Tensor, str]:
    """The start image encoded as the video's first latent frame, resized (with a note) when its size differs."""
    if vae is None:
        raise ValueError("a start image needs a VAE to encode it; connect the model's VAE to 'vae'.")
    note = ""
    if tuple(image.shape[1:3]) != (height, width):
        note = f"start image is {image.shape[2]}x{image.shape[1]}; resized to {width}x{height}."
        log.info(f"{note}")
        image = comfy.utils.common_upscale(image[:1].movedim(-1, 1), width, height, "bilinear", "center").movedim(1, -1)
    with torch.no_grad():
        return vae.encode(image[:1, :, :, :3]).detach().float().cpu(), note


def section_order(name: str, sections, section_frames: int, image: bool) -> list[list[int]]:
    """The steps of section indices the chosen sampling order makes (anchors: each prompt's first section)."""
    if name not in SAMPLING_ORDERS:
        raise ValueError(
            f"sampling_order {name!r} is not one of {', '.join(map(repr, SAMPLING_ORDERS))}; pick one of those."
        )
    anchors = orders.first_of_each([p.cue for p in sections])
    plan = orders.plan(SAMPLING_ORDERS[name], len(sections), section_frames, image=image, anchors=anchors)
    return plan.section_order()


def job_folder(name: str) -> str | None:
    name = name.strip()
    if not name:
        return None
    check_plain_name(name, "job name")
    return os.path.join(folder_paths.get_output_directory(), JOBS_FOLDER, name)


def conditioning_hash(cond) -> str:
    h = hashlib.sha256()
    for tensor, extra in cond:
        h.update(tensor.float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _plain(value):
    return isinstance(value, (int, float, str, bool, type(None))) or (
        isinstance(value, (list, tuple)) and all(_plain(v) for v in value)
    )


def describe_sampler(sampler) -> dict:
    fn = getattr(sampler, "sampler_function", None)
    options = getattr(sampler, "extra_options", {}) or {}
    return {
        "function": getattr(fn, "__qualname__", type(sampler).__name__),
        "options": {k: v for k, v in sorted(options.items()) if _plain(v)},
    }


class SectionSampler:
    """ComfyUI sampling of one section: native continuation, storyboard prompt, context payload."""

    def __init__(
        self,
        model,
        board,
        negative,
        vae,
        start,
        *,
        steps,
        cfg,
        sampler_name,
        scheduler,
        sampler,
        continuation,
        size,
        info,
        pbar,
        total_steps,
        start_section=False,
        image=None,
        guidance=None,
    ):
        self.start_section, self.image, self.guidance = start_section, image, guidance
        if image is not None:
            model = model.clone()
            model.model_options.setdefault("transformer_options", {})[IMAGE_KEY] = image
        self.model, self.board, self.negative = model, board, negative
        self.vae, self.start = vae, start
        self.steps, self.cfg, self.sampler_name, self.scheduler, self.sampler = (
            steps,
            cfg,
            sampler_name,
            scheduler,
            sampler,
        )
        self.continuation, self.size = continuation, size
        self.pbar, self.total_steps = pbar, total_steps
        self.info = info
        self.previewer = latent_preview.get_previewer(model.load_device, model.model.latent_format)
        self._grey: dict[int, torch.Tensor] = {}

    def grey(self, frames: int, h: int, w: int) -> torch.Tensor | None:
        """I2V conditioning for frames nobody gave: the VAE encoding of mid-grey, as the stock I2V node uses."""
        if self.vae is None:
            return None
        if frames not in self._grey:
            stride, spatial = self.info.temporal_compression, self.info.spatial_compression
            image = torch.full((1 + stride * (frames - 1), h * spatial, w * spatial, 3), 0.5)
            with torch.no_grad():
                self._grey[frames] = self.vae.encode(image).detach().float().cpu()
        return self._grey[frames]

    def __call__(self, index, task, history, seed):
        if self.start_section and index == 0:  # F1: the start image is latent frame 0, context only
            task.report_step(self.steps)
            self.after_section(index, task, self.start, self.board.for_prompt(task.prompt))
            return self.start.clone()
        start = None if self.start_section else self.start
        layout = section_latent(
            index, task.item.section.latent_frames, history, task.future, start, self.continuation, self.size
        )
        native = native_conditioning(
            layout, self.info, self.grey(layout.length, *self.size[1:]) if self.info.i2v else None
        )
        latent, mask = native.latent, native.noise_mask
        positive = self.board.for_prompt(task.prompt)
        negative = self.negative
        if self.guidance is not None:
            positive = [[c, {**e, "guidance": self.guidance}] for c, e in positive]
        if native.concat is not None:
            positive = [[c, {**e, **native.concat}] for c, e in positive]
            negative = [[c, {**e, **native.concat}] for c, e in negative]
        joint = task.payload.sources or self.image is not None  # the joint also hands the DiT the image tokens
        model = attach_context(self.model, [], payload=task.payload) if joint else self.model
        model = self.before_section(model, index, task, layout.known, positive)
        model = self.condition_section(model, task, native)
        noise = comfy.sample.prepare_noise(latent, seed)

        def callback(step, x0, x, total):
            task.report_step(step + 1)
            preview = None
            if self.previewer is not None:
                preview = self.previewer.decode_latent_to_preview_image("JPEG", layout.new_frames(x0))
            self.pbar.update_absolute(self.pbar.current, self.total_steps, preview)

        if self.sampler is not None:
            sigmas = comfy.samplers.calculate_sigmas(
                model.get_model_object("model_sampling"), self.scheduler, self.steps
            )
            out = comfy.sample.sample_custom(
                model,
                noise,
                self.cfg,
                self.sampler,
                sigmas,
                positive,
                negative,
                latent,
                noise_mask=mask,
                callback=callback,
                disable_pbar=True,
                seed=seed,
            )
        else:
            out = comfy.sample.sample(
                model,
                noise,
                self.steps,
                self.cfg,
                self.sampler_name,
                self.scheduler,
                positive,
                negative,
                latent,
                noise_mask=mask,
                callback=callback,
                disable_pbar=True,
                seed=seed,
            )
        section = layout.new_frames(out).float().cpu()
        self.after_section(index, task, section, positive)
        return section

    def before_section(self, model, index, task, known, positive):
        """Stateful sources prepare this section's MODEL clone (the clip KV cache selects clips and
        patches attention); ``known`` is the number of given frames before the section's first new one."""
        for source in stateful(task.payload.sources):
            model = source.before_section(model, index, task.item.section.latent_start, known, task.prompt, positive)
        return model

    def condition_section(self, model, task, native):
        """Stateful sources that read the given frames themselves (the video extension) see them."""
        sources = stateful(task.payload.sources)
        if not sources:
            return model
        given = native.given()
        condition = self.model.model.process_latent_in(native.latent) * given
        for source in sources:
            model = source.condition_section(model, condition, given)
        return model

    def replay(self, sources, index, item, section) -> None:
        """A section taken from disk on resume, shown to stateful sources as when it was made."""
        positive = self.board.for_prompt(item.prompt)
        start = item.section.latent_start
        for source in stateful(sources):
            source.before_section(self.model, index, start, 0, item.prompt, positive)
            source.after_section(self.model, self.model.model.process_latent_in(section), index, item.prompt, positive)

    def after_section(self, index, task, section, positive) -> None:
        """Stateful sources see the finished section's clean latents in the model's input space."""
        for source in stateful(task.payload.sources):
            source.after_section(self.model, self.model.model.process_latent_in(section), index, task.prompt, positive)


class LongVideoSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="HistEncLongVideoSampler",
            display_name="Long Video Sampler (storyboard)",
            category="histenc/sampling",
            description="Samples a long video section by section with ComfyUI's own samplers; each section sees the "
            "history through the context mode and continues from the previous section's last frames.",
            inputs=[
                io.Model.Input(
                    "model", tooltip="A Wan 2.1 / 2.2 model from the stock loaders (after ModelSamplingSD3, LoRAs...)."
                ),
                StoryboardType.Input("storyboard", tooltip="Prompts over time from the Storyboard node."),
                io.Conditioning.Input("negative", tooltip="Negative conditioning, used for every section."),
                io.Float.Input(
                    "seconds", default=60.0, min=0.1, max=3600.0, step=0.1, tooltip="Length of the video in seconds."
                ),
                io.Float.Input(
                    "fps",
                    default=16.0,
                    min=1.0,
                    max=120.0,
                    step=1.0,
                    tooltip="Frames per second (Wan 2.1: 16, Wan 2.2: 24).",
                ),
                io.Int.Input(
                    "section_frames",
                    default=9,
                    min=1,
                    max=64,
                    tooltip="Latent frames generated per section (x4 video frames). Smaller sections use less VRAM.",
                ),
                io.Int.Input("width", default=832, min=16, max=4096, step=16, tooltip="Video width in pixels."),
                io.Int.Input("height", default=480, min=16, max=4096, step=16, tooltip="Video height in pixels."),
                io.Int.Input(
                    "seed",
                    default=0,
                    min=0,
                    max=0xFFFFFFFFFFFFFFFF,
                    control_after_generate=True,
                    tooltip="Seed of the first section; later sections derive theirs from it deterministically.",
                ),
                io.Int.Input("steps", default=20, min=1, max=1000, tooltip="Sampling steps per section."),
                io.Float.Input(
                    "cfg", default=5.0, min=0.0, max=100.0, step=0.1, tooltip="Classifier-free guidance scale."
                ),
                io.Combo.Input(
                    "sampler_name",
                    options=comfy.samplers.KSampler.SAMPLERS,
                    default="euler",
                    tooltip="ComfyUI sampler used when no SAMPLER is connected.",
                ),
                io.Combo.Input(
                    "scheduler",
                    options=comfy.samplers.KSampler.SCHEDULERS,
                    default="simple",
                    tooltip="ComfyUI scheduler that makes the sigmas of every section.",
                ),
                io.Int.Input(
                    "continuation_frames",
                    default=1,
                    min=0,
                    max=16,
                    tooltip="Latent frames of the previous section each section continues from, through the "
                    "model's native mechanism (0: off, rely on the context mode alone).",
                ),
                io.String.Input(
                    "job_name",
                    default="",
                    tooltip="Name a job to make it resumable: finished sections are "
                    "saved under output/histenc_jobs/<name>, and queueing it again continues where it stopped.",
                ),
                Context.Input("context", optional=True, tooltip="Context mode(s) that show the history to the DiT."),
                io.Vae.Input("vae", optional=True, tooltip="The model's VAE; needed for a start image."),
                io.Image.Input(
                    "start_image", optional=True, tooltip="First frame of the video (resized to width x height)."
                ),
                io.Sampler.Input(
                    "sampler", optional=True, tooltip="A custom SAMPLER (e.g. T-RFlow); overrides sampler_name."
                ),
                io.Combo.Input(
                    "sampling_order",
                    options=list(SAMPLING_ORDERS),
                    default="forward",
                    optional=True,
                    tooltip="Which sections are made first (FramePack's anti-drifting orders). forward: start "
                    "to end. endpoints first: the first and last sections, then the gap. inverted: "
                    "from the end back to the start image. one anchor per prompt: each prompt's "
                    "first section, then the gaps. A section sees finished sections on both sides.",
                ),
                io.ClipVisionOutput.Input(
                    "clip_vision_output",
                    optional=True,
                    tooltip="FramePack checkpoints: CLIPVisionEncode of the start image (SigLIP, "
                    "sigclip_vision_patch14_384); FramePack's image projection puts its tokens before the prompt.",
                ),
                io.Conditioning.Input(
                    "prompt_settings",
                    optional=True,
                    tooltip="A FluxGuidance output: its guidance goes to every section's prompt (HunyuanVideo's "
                    "distilled guidance; FramePack F1: 10). Its text is not used.",
                ),
            ],
            outputs=[io.Latent.Output(display_name="latent"), io.String.Output(display_name="summary")],
        )

    @classmethod
    def execute(
        cls,
        model,
        storyboard,
        negative,
        seconds,
        fps,
        section_frames,
        width,
        height,
        seed,
        steps,
        cfg,
        sampler_name,
        scheduler,
        continuation_frames,
        job_name,
        context=None,
        vae=None,
        start_image=None,
        sampler=None,
        sampling_order="forward",
        clip_vision_output=None,
        prompt_settings=None,
    ) -> io.NodeOutput:
        if not math.isfinite(cfg):
            raise ValueError(f"cfg is {cfg}; give a finite guidance scale such as 5.0.")
        info = model_info(model)
        context = check_sources(context or [])
        lat_h, lat_w = check_size(width, height, info.spatial_compression, info.patch[1])
        schedule = schedule_sections(seconds, fps, section_frames, time_stride=info.temporal_compression)
        projection = getattr(model.get_model_object("diffusion_model"), "vision_in", None)  # Wan has none
        image = check_image_tokens(projection, clip_vision_output, start_image is not None, type(model.model).__name__)
        guidance = prompt_guidance(prompt_settings)
        f1 = f1_schedule(context)
        if f1 is not None:
            if start_image is None:
                raise ValueError(
                    f"the FramePack Context '{f1}' starts from a start image (F1's start slot) but start_image is "
                    "not connected; connect the image the video starts from and the model's VAE."
                )
            if sampling_order != "forward":
                raise ValueError(
                    f"sampling_order {sampling_order!r} makes later sections first, but FramePack F1 ('{f1}') only "
                    "looks back; use 'forward'."
                )
            schedule = start_frame_schedule(schedule)
        sections = storyboard.board.assign(schedule)
        start, note = start_latent(vae, start_image, width, height) if start_image is not None else (None, "")
        total = len(sections) * steps
        pbar = comfy.utils.ProgressBar(total)
        settings = {
            "model": type(model.model).__name__,
            "model patches": sorted(map(str, model.patches.keys()))[:64],
            "negative": conditioning_hash(negative),
            "prompts": [p.prompt for p in sections],
            "prompt conditioning": {p: conditioning_hash(c) for p, c in storyboard.conditioning.items()},
            "seconds": seconds,
            "fps": fps,
            "section_frames": section_frames,
            "width": width,
            "height": height,
            "cfg": cfg,
            "sampler": sampler_name if sampler is None else describe_sampler(sampler),
            "scheduler": scheduler,
            "continuation_frames": continuation_frames,
            "context": [s.describe() for s in context],
            "start image": None if start is None else hashlib.sha256(start.numpy().tobytes()).hexdigest()[:16],
        }
        order = section_order(sampling_order, sections, section_frames, image=start is not None)
        if sampling_order != "forward":  # forward jobs keep the manifest they always had, so they still resume
            settings["sampling_order"] = sampling_order
        if storyboard.board.timing != NEAREST:  # jobs from before the choice existed used the nearest rule
            settings["storyboard timing"] = storyboard.board.timing
        if image is not None:  # settings a job without them never had, so its manifest still matches
            settings["clip vision"] = hashlib.sha256(image.features.float().cpu().numpy().tobytes()).hexdigest()[:16]
        if guidance is not None:
            settings["guidance"] = guidance
        run_one = SectionSampler(
            model,
            storyboard,
            negative,
            vae,
            start,
            steps=steps,
            cfg=cfg,
            sampler_name=sampler_name,
            scheduler=scheduler,
            sampler=sampler,
            continuation=continuation_frames,
            size=(info.latent_channels, lat_h, lat_w),
            info=info,
            pbar=pbar,
            total_steps=total,
            start_section=f1 is not None,
            image=image,
            guidance=guidance,
        )
        loop = SectionLoop(
            sections,
            run_one,
            context,
            seed=seed,
            steps=steps,
            settings=settings,
            folder=job_folder(job_name),
            order=order,
            progress=lambda done, all_: pbar.update_absolute(done, all_),
            model_space=lambda h: model.model.process_latent_in(h.float()),
            replay=lambda i, item, latents: run_one.replay(context, i, item, latents),
            anchor=start if f1 is None else None,  # the start image stays in view until section 0 is made
        )
        log.info(f"{len(sections)} sections of {section_frames} latent frames for {seconds:g} s at {fps:g} fps")
        log.info(
            "VRAM plan for the last section:\n"
            + plan_summary(
                model, context, width, height, section_frames, schedule.latent_frames, info.spatial_compression, cfg
            )
        )
        result = loop.run()
        summary = (
            result.summary if sampling_order == "forward" else f"{result.summary} Sampling order: {sampling_order}."
        )
        log.info(f"{summary}")
        latent = {"samples": result.latents, "histenc_frames": schedule.frames}
        return io.NodeOutput(latent, f"{summary} Note: {note}" if note else summary)


NODES = [LongVideoSampler]
