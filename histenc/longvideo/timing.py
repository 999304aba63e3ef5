"""When a storyboard's prompts show: the cut of a video into sections, and the ONE cue each section takes.

A cue holds from its time until the next cue. Sections are the unit of sampling, so a prompt can only
change at a section boundary: a section takes the cue in force at its middle (``MIDDLE``, the default).
A section's middle is the point equally far from its two boundaries, so every switch lands on the
boundary nearest the written time. ``NEAREST`` is the paper's rule (the cue whose time is nearest the
middle), kept as an option; it switches up to half the gap between two cues early.

Generation asks ``section_cues`` with spans in seconds; training asks ``latent_section_cue`` with runs
of latent frames of a clip, which it turns into the same question in clip frames, so both follow one rule.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from dataclasses import dataclass
from fractions import Fraction
from typing import Iterable, Sequence, TypeVar

from ..units import TIME_STRIDE, latent_frames_of, video_frames

T = TypeVar("T")
MIDDLE = "in force at the section's middle"
NEAREST = "nearest timestamp"
TIMINGS = (MIDDLE, NEAREST)


def check_timing(timing) -> str:
    """``timing`` itself, or one sentence naming the choices."""
    if timing not in TIMINGS:
        raise ValueError(f"storyboard timing {timing!r} is not a rule the pack knows; choose one of {list(TIMINGS)}.")
    return timing


def exact(value) -> Fraction:
    """A number as the decimal it was written as (``0.1`` is 1/10), so ties are real ties, not float accidents."""
    if isinstance(value, Fraction):
        return value
    if isinstance(value, int):
        return Fraction(value)
    return Fraction(repr(float(value)))


def section_cues(times: Sequence[float], spans: Iterable[tuple], timing: str = MIDDLE) -> list[int]:
    """The index of the ONE cue each span ``[start, end)`` takes; ``times`` are sorted, in the spans' unit.

    ``MIDDLE``: the last cue at or before the span's middle (a cue exactly at the middle is in force),
    and the first cue for spans before every cue. ``NEAREST``: the cue nearest the middle, the earlier
    one on an exact tie (the prompt already showing keeps the screen).
    """
    check_timing(timing)
    if not times:
        raise ValueError("the storyboard has no cues to give a section; write at least one '0:00 prompt' line.")
    floats = [float(t) for t in times]
    out = []
    for start, end in spans:
        mid = (exact(start) + exact(end)) / 2
        i = bisect_right(floats, float(mid)) - 1  # floats find the neighbourhood, exact values decide it
        while i + 1 < len(times) and exact(times[i + 1]) <= mid:
            i += 1
        while i >= 0 and exact(times[i]) > mid:
            i -= 1
        if timing == NEAREST and i + 1 < len(times) and (i < 0 or exact(times[i + 1]) - mid < mid - exact(times[i])):
            i += 1
        out.append(max(i, 0))
    return out


def section_cue(times: Sequence[float], start, end, timing: str = MIDDLE) -> int:
    """The cue the one span ``[start, end)`` takes (see ``section_cues``)."""
    return section_cues(times, [(start, end)], timing)[0]


# --- sections of a generated video -------------------------------------------------------------------
def first_frame(latent: int, time_stride: int = TIME_STRIDE) -> int:
    """The first video frame latent frame ``latent`` decodes to (also where latent frame ``latent - 1`` ends).

    A causal video VAE decodes latent frame 0 to frame 0 alone and latent frame j >= 1 to frames
    ``time_stride * j - time_stride + 1 .. time_stride * j``.
    """
    return 0 if latent <= 0 else time_stride * latent - time_stride + 1


@dataclass(frozen=True)
class Section:
    """One sampled chunk of the video: a run of latent frames and the pixel frames they decode to.

    Pixel frames are counted in the whole decoded video (``first_frame``). A frame i is shown during
    [i / fps, (i + 1) / fps), so the section is on screen during [start_s, end_s).
    """

    index: int
    latent_start: int
    latent_frames: int
    pixel_start: int
    pixel_end: int  # exclusive; the last section stops at the video's (trimmed) frame count
    fps: float

    @property
    def latent_end(self) -> int:
        return self.latent_start + self.latent_frames

    @property
    def pixel_frames(self) -> int:
        return self.pixel_end - self.pixel_start

    @property
    def start_s(self) -> float:
        return self.pixel_start / self.fps

    @property
    def end_s(self) -> float:
        return self.pixel_end / self.fps

    @property
    def mid_s(self) -> float:
        """The section's time for the timing rules: the middle of [start_s, end_s)."""
        return (self.pixel_start + self.pixel_end) / (2 * self.fps)


@dataclass(frozen=True)
class SectionSchedule:
    """How a video of ``seconds`` at ``fps`` is cut into sections of ``section_frames`` latent frames.

    The video has ``frames = round(seconds * fps)`` pixel frames (half up). The VAE makes
    ``1 + stride * (n - 1)`` pixel frames from n latent frames, so the video needs
    ``latent_frames = 1 + ceil((frames - 1) / stride)`` latent frames; the decoded video is then
    ``trim`` (0 .. stride - 1) frames too long and those last frames are dropped after decoding.
    Sections are consecutive runs of ``section_frames`` latent frames; the LAST section is
    shorter when the latent frames do not divide evenly (nothing is generated to be thrown
    away, and no section is longer than the memory the user chose for one).
    """

    seconds: float
    fps: float
    section_frames: int
    time_stride: int
    frames: int
    latent_frames: int
    sections: tuple[Section, ...]

    @property
    def decoded_frames(self) -> int:
        return 1 + self.time_stride * (self.latent_frames - 1)

    @property
    def trim(self) -> int:
        """Pixel frames to drop from the end of the decoded video."""
        return self.decoded_frames - self.frames

    @property
    def duration(self) -> float:
        """Seconds of the video actually produced (``frames / fps``)."""
        return self.frames / self.fps

    def boundaries(self) -> list[float]:
        """Section boundaries in seconds: start of each section, then the end of the video."""
        return [s.start_s for s in self.sections] + [self.sections[-1].end_s]


def schedule_sections(
    seconds: float, fps: float, section_frames: int, time_stride: int = TIME_STRIDE
) -> SectionSchedule:
    """Cut a video into sections (see ``SectionSchedule``); ``time_stride`` is the VAE's time compression."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(
            f"total seconds must be a positive number, got {seconds!r}; ask for at least one frame of video."
        )
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not math.isfinite(fps) or fps <= 0:
        raise ValueError(f"fps must be a positive number, got {fps!r}; use e.g. 16 for Wan 2.1 or 24 for Wan 2.2.")
    if isinstance(section_frames, bool) or not isinstance(section_frames, int) or section_frames < 1:
        raise ValueError(f"section length must be a whole number of latent frames >= 1, got {section_frames!r}.")
    if isinstance(time_stride, bool) or not isinstance(time_stride, int) or time_stride < 1:
        raise ValueError(f"time stride must be a whole number >= 1, got {time_stride!r}; Wan and Hunyuan VAEs use 4.")
    frames = video_frames(seconds, fps)
    if frames < 1:
        raise ValueError(
            f"{seconds} seconds at {fps} fps makes {seconds * fps:.3g} frames, less than one; "
            "raise the total seconds or the fps."
        )
    latent_frames = latent_frames_of(frames, time_stride)
    sections = []
    for index, start in enumerate(range(0, latent_frames, section_frames)):
        end = min(start + section_frames, latent_frames)
        pixel_end = min(first_frame(end, time_stride), frames)
        sections.append(Section(index, start, end - start, first_frame(start, time_stride), pixel_end, float(fps)))
    return SectionSchedule(
        float(seconds), float(fps), section_frames, time_stride, frames, latent_frames, tuple(sections)
    )


# --- the same rule for training clips ----------------------------------------------------------------
def cue_latent_position(seconds: float, fps: float, time_stride: int = TIME_STRIDE, frame_stride: int = 1) -> float:
    """Where a cue at ``seconds`` starts, counted in latent frames of a clip (``first_frame`` inverted).

    The clip keeps every ``frame_stride``-th frame of a video at ``fps``, so the cue falls on clip frame
    ``seconds * time_stride / seconds_per_latent_frame(fps, time_stride, frame_stride)``, computed exactly
    (``seconds_per_latent_frame`` as a float would move a cue written on a section's middle off it);
    latent frame j >= 1 starts at clip frame ``time_stride * (j - 1) + 1``. ``latent_section_cue`` turns
    the position back into clip frames.
    """
    frame = exact(seconds) * time_stride / (Fraction(time_stride * frame_stride) / exact(fps))
    return float(frame if frame <= 1 else (frame + time_stride - 1) / time_stride)


def _clip_frame(position, time_stride: int) -> Fraction:
    position = exact(position)
    return position if position <= 1 else time_stride * position - time_stride + 1


def latent_section_cue(
    positions: Sequence[float], start: int, end: int, time_stride: int = TIME_STRIDE, timing: str = MIDDLE
) -> int:
    """The cue a run of latent frames ``[start, end)`` of a clip takes, as a generated section would.

    ``positions`` are the cues' ``cue_latent_position``s. The run covers clip frames
    ``[first_frame(start), first_frame(end))`` and the question is asked there, in clip frames, exactly as
    ``section_cues`` asks it of a generated section in seconds.
    """
    frames = [_clip_frame(p, time_stride) for p in positions]
    return section_cue(frames, first_frame(start, time_stride), first_frame(end, time_stride), timing)


def latent_section_prompt(
    prompts: Sequence[tuple[float, T]], start: int, end: int, time_stride: int = TIME_STRIDE
) -> T:
    """The prompt a run of latent frames ``[start, end)`` takes; ``prompts`` are (``cue_latent_position``, prompt)."""
    return prompts[latent_section_cue([p for p, _ in prompts], start, end, time_stride)][1]
