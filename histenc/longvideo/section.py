"""One section's latent: the frames it is given, the frames it makes, the frames it leads into.

A section of ``new`` latent frames is sampled on a longer latent when the model is shown frames it
must agree with: the previous section's last ``continuation`` frames come first (sampled with it,
dropped afterwards), the start image is the video's own first frame (kept), and when the sections
after it are made already (endpoint and inverted orders) their first frames close it (dropped
afterwards). How the model is shown those frames depends on the model (``ModelInfo.variant``):

- latent replacement (t2v, ti2v): the given frames are written into the latent and the noise mask is
  0 on them (Wan 2.2 5B reads that as t = 0 per frame);
- image-conditioning channels (Wan I2V): the latent stays noise; the given frames go to
  ``concat_latent_image`` with ``concat_mask`` 0 on them, the other frames get the encoding of
  mid-grey, as ComfyUI's own I2V nodes do.

FramePack F1 shows the start image only as clean context (its start slot), never as a frame to denoise:
``start_frame_schedule`` makes the start image a section of its own (latent frame 0, not sampled) and
every sampled section a whole window after it, as F1 makes a video.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..dit.info import ModelInfo
from .loop import continuation_frames, next_frames
from .storyboard import Section, SectionSchedule


@dataclass(frozen=True)
class SectionLatent:
    """Where the given and the new frames sit in the latent one section is sampled on."""

    before: torch.Tensor | None  # given frames at the start [B, C, k, H, W] (continuation or start image)
    after: torch.Tensor | None  # given frames at the end [B, C, tail, H, W] (the next section's first frames)
    drop: int  # frames before the new ones that are not part of this section
    new: int  # the section's own latent frames
    shape: tuple[int, int, int, int]  # (channels, length, height, width)

    @property
    def length(self) -> int:
        return self.shape[1]

    @property
    def known(self) -> int:
        """Given frames at the start (a start image is given but is one of the new frames)."""
        return 0 if self.before is None else self.before.shape[2]

    @property
    def tail(self) -> int:
        return 0 if self.after is None else self.after.shape[2]

    def given(self) -> torch.Tensor:
        """[1, 1, length, H, W]: 1 on the frames the model is given, 0 on the frames it makes."""
        channels, length, h, w = self.shape
        mask = torch.zeros(1, 1, length, h, w)
        mask[:, :, : self.known] = 1.0
        mask[:, :, length - self.tail :] = 1.0
        return mask

    def fill(self, base: torch.Tensor) -> torch.Tensor:
        """``base`` [1, C, length, H, W] with the given frames written in."""
        out = base.clone()
        if self.known:
            out[:, :, : self.known] = self.before
        if self.tail:
            out[:, :, self.length - self.tail :] = self.after
        return out

    def new_frames(self, sampled: torch.Tensor) -> torch.Tensor:
        """The section's own frames out of the sampled latent."""
        return sampled[:, :, self.drop : self.drop + self.new]


def section_latent(
    index: int,
    new: int,
    history: torch.Tensor | None,
    future: torch.Tensor | None,
    start: torch.Tensor | None,
    continuation: int,
    size: tuple[int, int, int],
) -> SectionLatent:
    """The layout of section ``index`` (``new`` latent frames; ``size`` = channels, latent height, width)."""
    before = continuation_frames(history, continuation) if continuation and history is not None else None
    drop = 0 if before is None else before.shape[2]
    if before is None and index == 0 and start is not None:
        before = start
    after = next_frames(future, continuation) if continuation and future is not None else None
    tail = 0 if after is None else after.shape[2]
    channels, h, w = size
    return SectionLatent(before, after, drop, new, (channels, drop + new + tail, h, w))


def start_frame_schedule(schedule: SectionSchedule) -> SectionSchedule:
    """``schedule``'s video cut as FramePack F1 makes it: latent frame 0 (the start image) is section 0, then
    sections of ``section_frames`` from latent frame 1 (the last one shorter when they do not divide evenly)."""
    stride, frames, fps = schedule.time_stride, schedule.frames, schedule.fps

    def pixel(j: int) -> int:  # first pixel frame of latent frame j, as in schedule_sections
        return 0 if j == 0 else stride * j - stride + 1

    bounds = [0, *range(1, schedule.latent_frames, schedule.section_frames), schedule.latent_frames]
    sections = tuple(
        Section(i, start, end - start, pixel(start), min(pixel(end), frames), fps)
        for i, (start, end) in enumerate(zip(bounds, bounds[1:]))
    )
    return SectionSchedule(
        schedule.seconds, fps, schedule.section_frames, stride, frames, schedule.latent_frames, sections
    )


@dataclass
class NativeConditioning:
    """What ComfyUI's sampler gets for one section: the latent, its noise mask, and extra conditioning."""

    latent: torch.Tensor
    noise_mask: torch.Tensor | None
    concat: dict[str, torch.Tensor] | None  # concat_latent_image / concat_mask for the I2V channels

    def given(self) -> torch.Tensor:
        """The frames given through the latent itself (none on the I2V path), as a 0/1 mask."""
        return torch.zeros_like(self.latent[:, :1]) if self.noise_mask is None else 1.0 - self.noise_mask

    def keep_given(self, sampled: torch.Tensor) -> torch.Tensor:
        """``sampled`` with the frames given through the latent written back as they went in. A run in two stages
        (two experts) returns them with the noise its second stage was not given; one stage returns them as given."""
        if self.noise_mask is None:
            return sampled
        mask = self.noise_mask.to(sampled)
        return sampled * mask + self.latent.to(sampled) * (1.0 - mask)


def native_conditioning(layout: SectionLatent, info: ModelInfo, grey: torch.Tensor | None = None) -> NativeConditioning:
    """The section's latent and masks for this model (see the module docstring); ``grey`` is the VAE
    encoding of a mid-grey clip of ``layout.length`` frames, used by the I2V path where nothing is given."""
    channels, length, h, w = layout.shape
    zeros = torch.zeros(1, channels, length, h, w)
    if not (layout.known or layout.tail):
        return NativeConditioning(zeros, None, None)
    given = layout.given()
    if info.i2v:
        image = layout.fill(zeros if grey is None else grey)
        return NativeConditioning(zeros, None, {"concat_latent_image": image, "concat_mask": 1.0 - given})
    return NativeConditioning(layout.fill(zeros), 1.0 - given, None)
