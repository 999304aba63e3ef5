"""The long-video sampler: a storyboard streamed section by section through ComfyUI's own sampling.

With a FramePack F1 context (schedule ``framepack_f1``) it samples as FramePack F1 does: the start image is the
video's latent frame 0, a section of its own that is only context (F1's start slot), and every later section is
a whole window sampled in forward order. A FramePack checkpoint's image projection takes the CLIP-vision
encoding of the start image (``clip_vision_output``); ``prompt_settings`` gives every section's prompt the
guidance of a stock FluxGuidance node (F1: 10).

On Wan, ``clip_vision_output`` goes into every section's conditioning as WanImageToVideo puts it (Wan 2.1 I2V's
image embedding). ``model_low_noise`` makes it Wan 2.2 14B's two experts: every section's first steps with
``model``, the rest with the low-noise one (_experts). A named job resumes only with what made its frames
(_job_settings: the model's weights, sampling and LoRAs among them) and its state goes once the video is built,
unless ``keep_job_state``.
"""

from __future__ import annotations

import logging
import math

import comfy.samplers
import comfy.utils
import torch
from comfy_api.latest import io

from ..histenc.context import check_sources
from ..histenc.framepack.f1 import check_image_tokens, f1_schedule, prompt_guidance
from ..histenc.longvideo import orders
from ..histenc.longvideo.loop import SectionLoop
from ..histenc.longvideo.section import start_frame_schedule
from ..histenc.longvideo.storyboard import schedule_sections
from ..histenc.units import check_size

from ._common import Context, StoryboardType, check_combo, model_info, plan_summary
from ._experts import experts_for
from ._job_settings import finish_job, job_folder, job_settings, refuse_unrecorded
from ._model_fingerprint import check_lora_shapes
from ._section_sampler import SectionSampler
from ._wan_i2v import features_of, wan_clip_vision

log = logging.getLogger(__name__)

SAMPLER_NAMES = comfy.samplers.KSampler.SAMPLERS
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
                    "model",
                    tooltip="A Wan 2.1 / 2.2 model from the stock loaders (after ModelSamplingSD3, LoRAs...); with "
                    "model_low_noise, Wan 2.2 14B's high-noise expert.",
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
                    options=SAMPLER_NAMES,
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
                    tooltip="CLIPVisionEncode of the start image. Wan 2.1 I2V: clip_vision_h (crop none), put into "
                    "every section's conditioning as WanImageToVideo does. FramePack checkpoints: SigLIP "
                    "(sigclip_vision_patch14_384), whose tokens the image projection puts before the prompt.",
                ),
                io.Conditioning.Input(
                    "prompt_settings",
                    optional=True,
                    tooltip="A FluxGuidance output: its guidance goes to every section's prompt (HunyuanVideo's "
                    "distilled guidance; FramePack F1: 10). Its text is not used.",
                ),
                io.Model.Input(
                    "model_low_noise",
                    optional=True,
                    tooltip="Wan 2.2 14B: the low-noise expert (e.g. wan2.2_t2v_low_noise_14B), with the high-noise "
                    "expert in 'model'. Every section makes its first steps with 'model' and the rest with this one, "
                    "as ComfyUI's templates chain two KSamplerAdvanced; both see the context.",
                ),
                io.Int.Input(
                    "switch_step",
                    default=0,
                    min=0,
                    max=1000,
                    optional=True,
                    tooltip="With model_low_noise: the step at which the low-noise expert takes over (ComfyUI's "
                    "Wan 2.2 templates: 10 of 20). 0: at the first step whose sigma is below switch_sigma.",
                ),
                io.Float.Input(
                    "switch_sigma",
                    default=0.875,
                    min=0.0,
                    max=1.0,
                    step=0.005,
                    optional=True,
                    tooltip="With model_low_noise and switch_step 0: steps at or above this sigma use the high-noise "
                    "expert (Wan 2.2: 0.875 for text-to-video, 0.9 for image-to-video).",
                ),
                io.Boolean.Input(
                    "keep_job_state",
                    default=False,
                    optional=True,
                    tooltip="A named job saves every finished section so it can resume while it runs. Off: that "
                    "state is removed once the video is returned; on: it is kept, and queueing the job again "
                    "returns the same video at once. The summary shows the size either way.",
                ),
            ],
            outputs=[io.Latent.Output(display_name="latent"), io.String.Output(display_name="summary")],
        )

    @classmethod
    def validate_inputs(cls, sampler_name=None):
        """The host does not check a V3 combo's value (0.3.75). Only ``sampler_name`` is taken here, so a problem is
        reported once (the host repeats it for every input this takes); the other combos are checked on run."""
        return True if sampler_name is None else check_combo("sampler_name", sampler_name, SAMPLER_NAMES) or True

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
        model_low_noise=None,
        switch_step=0,
        switch_sigma=0.875,
        keep_job_state=False,
    ) -> io.NodeOutput:
        for problem in (
            check_combo("sampler_name", sampler_name, SAMPLER_NAMES),
            check_combo("scheduler", scheduler, comfy.samplers.KSampler.SCHEDULERS),
            check_combo("sampling_order", sampling_order, SAMPLING_ORDERS),
        ):
            if problem:
                raise ValueError(problem)
        if not math.isfinite(cfg):
            raise ValueError(f"cfg is {cfg}; give a finite guidance scale such as 5.0.")
        info = model_info(model)
        context = check_sources(context or [])
        lat_h, lat_w = check_size(width, height, info.spatial_compression, info.patch[1])
        schedule = schedule_sections(seconds, fps, section_frames, time_stride=info.temporal_compression)
        experts = experts_for(
            model, model_low_noise, info, steps, sampler_name, scheduler, sampler is not None, switch_step, switch_sigma
        )
        check_lora_shapes(model, "model")
        if experts is not None:
            check_lora_shapes(experts.low, "model_low_noise")
        image, clip_vision = None, None
        if info.family == "wan":  # Wan I2V: the CLIP-vision output goes into the conditioning, as WanImageToVideo
            clip_vision = wan_clip_vision(model, clip_vision_output)
        else:  # a FramePack checkpoint's image projection
            projection = model.get_model_object("diffusion_model").vision_in
            image = check_image_tokens(
                projection, clip_vision_output, start_image is not None, type(model.model).__name__
            )
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
        folder = job_folder(job_name)
        refuse_unrecorded(folder)
        sections = storyboard.board.assign(schedule)
        start, note = start_latent(vae, start_image, width, height) if start_image is not None else (None, "")
        total = len(sections) * steps
        pbar = comfy.utils.ProgressBar(total)
        features = image.features if image is not None else None if clip_vision is None else features_of(clip_vision)
        settings = job_settings(
            model,
            storyboard,
            negative,
            sections,
            seconds=seconds,
            fps=fps,
            section_frames=section_frames,
            width=width,
            height=height,
            cfg=cfg,
            sampler_name=sampler_name,
            sampler=sampler,
            scheduler=scheduler,
            continuation_frames=continuation_frames,
            context=context,
            start=start,
            sampling_order=sampling_order,
            image_features=features,
            guidance=guidance,
            experts=experts,
        )
        order = section_order(sampling_order, sections, section_frames, image=start is not None)
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
            experts=experts,
            clip_vision=clip_vision,
        )
        loop = SectionLoop(
            sections,
            run_one,
            context,
            seed=seed,
            steps=steps,
            settings=settings,
            folder=folder,
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
        latent = {"samples": result.latents, "histenc_frames": schedule.frames}
        summary = [result.summary]  # the video is built: only now may its job state go
        if sampling_order != "forward":
            summary.append(f"Sampling order: {sampling_order}.")
        if experts is not None:
            summary.append(f"Experts switched at step {experts.switch} of {experts.steps}.")
        summary.append(finish_job(folder, keep_job_state))
        if note:
            summary.append(f"Note: {note}")
        text = " ".join(part for part in summary if part)
        log.info(f"{text}")
        return io.NodeOutput(latent, text)


NODES = [LongVideoSampler]
