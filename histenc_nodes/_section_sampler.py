"""ComfyUI sampling of one section of the Long Video Sampler: native continuation, the storyboard's prompt, the
context payload, and (Wan 2.2 14B) the two experts.

Every model a section samples with gets the joint and its own copy of the section's payload (each expert's
context tokens are made with its own patch embedding), and every stateful source's hooks. Sources that record
finished sections (the clip KV cache) record them with the low-noise expert, the one that makes clean frames,
and both experts attend to what it recorded.
"""

from __future__ import annotations

import copy

import comfy.sample
import comfy.samplers
import latent_preview
import torch

from ..histenc.context import stateful
from ..histenc.dit.hunyuan import IMAGE_KEY
from ..histenc.longvideo.experts import Experts
from ..histenc.longvideo.section import native_conditioning, section_latent
from ._common import attach_context
from ._experts import sample_two, sample_two_custom
from ._wan_i2v import with_clip_vision


def with_image(model, image):
    """A clone of ``model`` that hands FramePack's image projection the start image's tokens."""
    if image is None:
        return model
    model = model.clone()
    model.model_options.setdefault("transformer_options", {})[IMAGE_KEY] = image
    return model


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
        experts: Experts | None = None,
        clip_vision=None,
    ):
        self.start_section, self.image, self.guidance = start_section, image, guidance
        self.model, self.board, self.negative = with_image(model, image), board, negative
        self.low = None if experts is None else with_image(experts.low, image)
        self.experts, self.clip_vision = experts, clip_vision
        self.recorder = self.model if self.low is None else self.low  # the model finished sections are recorded with
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
        positive = with_clip_vision(positive, self.clip_vision)
        negative = with_clip_vision(negative, self.clip_vision)
        # the low-noise expert first, so a source that records missing clips records them with it; its payload is a
        # copy made before anything was resolved, so each expert makes its own context tokens
        low = None
        if self.low is not None:
            low = self.prepare(self.low, copy.copy(task.payload), index, task, layout, native, positive)
        model = self.prepare(self.model, task.payload, index, task, layout, native, positive)
        noise = comfy.sample.prepare_noise(latent, seed)

        def callback(offset):
            def report(step, x0, x, total):
                task.report_step(offset + step + 1)
                preview = None
                if self.previewer is not None:
                    preview = self.previewer.decode_latent_to_preview_image("JPEG", layout.new_frames(x0))
                self.pbar.update_absolute(self.pbar.current, self.total_steps, preview)

            return report

        run = dict(noise_mask=mask, disable_pbar=True, seed=seed)
        if self.sampler is not None:
            sigmas = comfy.samplers.calculate_sigmas(
                model.get_model_object("model_sampling"), self.scheduler, self.steps
            )
            if low is None:
                out = comfy.sample.sample_custom(
                    model,
                    noise,
                    self.cfg,
                    self.sampler,
                    sigmas,
                    positive,
                    negative,
                    latent,
                    **run,
                    callback=callback(0),
                )
            else:
                out = sample_two_custom(
                    model,
                    low,
                    self.experts.switch,
                    noise,
                    self.cfg,
                    self.sampler,
                    sigmas,
                    positive,
                    negative,
                    latent,
                    callback=callback,
                    **run,
                )
        elif low is None:
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
                callback=callback(0),
                **run,
            )
        else:
            out = sample_two(
                model,
                low,
                self.experts.switch,
                noise,
                self.steps,
                self.cfg,
                self.sampler_name,
                self.scheduler,
                positive,
                negative,
                latent,
                callback=callback,
                **run,
            )
        if low is not None:
            out = native.keep_given(out)
        section = layout.new_frames(out).float().cpu()
        self.after_section(index, task, section, positive)
        return section

    def prepare(self, model, payload, index, task, layout, native, positive):
        """``model`` with the joint carrying ``payload`` and every stateful source's hooks for this section."""
        joint = payload.sources or self.image is not None  # the joint also hands the DiT the image tokens
        model = attach_context(model, [], payload=payload) if joint else model
        model = self.before_section(model, index, task, layout.known, positive)
        return self.condition_section(model, task, native)

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
        model = self.recorder
        for source in stateful(sources):
            source.before_section(model, index, start, 0, item.prompt, positive)
            source.after_section(model, model.model.process_latent_in(section), index, item.prompt, positive)

    def after_section(self, index, task, section, positive) -> None:
        """Stateful sources see the finished section's clean latents in the model's input space."""
        model = self.recorder
        for source in stateful(task.payload.sources):
            source.after_section(model, model.model.process_latent_in(section), index, task.prompt, positive)
