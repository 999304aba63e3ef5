"""Sampling orders for long videos: which sections each step generates and what it may look at.

A plan is plain data the long-video sampler follows step by step. Sections are equal runs of
``section_frames`` latent frames; with an input image (image-to-video) the image is the video's
first ``image_frames`` latent frames, inside section 0 (the sampler gives it to section 0 as its
first frame). Every step names the sections it generates and the already generated sections it
may use as context, with their start times, so context placed out of order keeps its true time
index (RoPE random access: the phases of frames not yet made are simply skipped). While section 0
is not made, the image itself is context for every step (the inverted order's anchor).

The long-video loop (``histenc.longvideo.loop``) gives each section every finished frame on both
sides at its true time, which is exactly the plan's context: ``context_times`` is what a section
must receive, and the tests compare the two for every order.

Orders (FramePack Sec. 4.1):
    forward    section 0, 1, 2, ... each seeing everything before it (vanilla)
    endpoints  the first section, then the last one seeing it, then the gap filled forward
    inverted   image-to-video: last section first, then backward toward the user's image, which
               every section sees as its anchor
    anchors    one endpoint per storyboard prompt, made in turn (each seeing the anchors made
               before it), then the gaps filled forward
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

ORDERS = ("forward", "endpoints", "inverted", "anchors")


@dataclass(frozen=True)
class Step:
    generate: tuple[int, ...]  # sections made in this step
    context: tuple[int, ...]  # sections made earlier, usable as context (ascending)
    image: bool  # the input image is usable as context


@dataclass(frozen=True)
class Plan:
    order: str
    sections: int
    section_frames: int
    image_frames: int
    steps: tuple[Step, ...]

    def start(self, section: int) -> int:
        """Latent-frame time index where ``section`` starts (the image, if any, is frame 0, in section 0)."""
        return section * self.section_frames

    @property
    def total_frames(self) -> int:
        return self.sections * self.section_frames

    def section_order(self) -> list[list[int]]:
        """The steps as lists of section indices: what ``histenc.autoregress.SectionLoop`` takes as ``order``."""
        return [list(step.generate) for step in self.steps]

    def context_times(self, step: Step, section: int | None = None) -> dict[str, list[int]]:
        """Per-frame time indices of a step's context relative to ``section`` (default: the first
        one it generates) starting at 0: ``before`` (< 0, image first) and ``after`` (>= frames)."""
        target = step.generate[0] if section is None else section
        origin = self.start(target)
        frames = [t for s in step.context for t in range(self.start(s), self.start(s) + self.section_frames)]
        if step.image and 0 not in step.context and target != 0:
            frames = list(range(self.image_frames)) + frames
        rel = sorted(t - origin for t in frames)
        return {"before": [t for t in rel if t < 0], "after": [t for t in rel if t >= self.section_frames]}

    def check(self) -> "Plan":
        """Every section made exactly once, context only from earlier steps."""
        made: set[int] = set()
        for i, step in enumerate(self.steps):
            missing = set(step.context) - made
            if missing:
                raise ValueError(f"step {i} of the {self.order} plan uses section {min(missing)} before it is made.")
            again = set(step.generate) & made
            if again:
                raise ValueError(f"step {i} of the {self.order} plan makes section {min(again)} a second time.")
            made |= set(step.generate)
        if made != set(range(self.sections)):
            raise ValueError(f"the {self.order} plan never makes section {min(set(range(self.sections)) - made)}.")
        return self


def _check_sizes(sections: int, section_frames: int) -> None:
    if int(sections) < 1:
        raise ValueError(f"a plan needs at least 1 section, got {sections}; make the video longer than one section.")
    if int(section_frames) < 1:
        raise ValueError(f"sections must have at least 1 latent frame, got {section_frames}.")


def _plan(order, sections, section_frames, image, steps_generate) -> Plan:
    made: list[int] = []
    steps = []
    for gen in steps_generate:
        steps.append(Step(tuple(gen), tuple(sorted(made)), image))
        made.extend(gen)
    return Plan(order, sections, section_frames, 1 if image else 0, tuple(steps)).check()


def forward(sections: int, section_frames: int, image: bool = False) -> Plan:
    _check_sizes(sections, section_frames)
    return _plan("forward", sections, section_frames, image, [(i,) for i in range(sections)])


def endpoints(sections: int, section_frames: int, image: bool = False) -> Plan:
    _check_sizes(sections, section_frames)
    ends = [(0,), (sections - 1,)] if sections > 1 else [(0,)]
    return _plan("endpoints", sections, section_frames, image, ends + [(i,) for i in range(1, sections - 1)])


def inverted(sections: int, section_frames: int, image: bool = True) -> Plan:
    _check_sizes(sections, section_frames)
    return _plan("inverted", sections, section_frames, image, [(i,) for i in reversed(range(sections))])


def anchored(sections: int, section_frames: int, anchors: Sequence[int], image: bool = False) -> Plan:
    """One step per anchor section (storyboard prompt), in the given order, then the gaps forward."""
    _check_sizes(sections, section_frames)
    anchors = [int(a) for a in anchors]
    bad = [a for a in anchors if not 0 <= a < sections]
    if bad or len(set(anchors)) != len(anchors) or not anchors:
        raise ValueError(
            f"anchor sections must be distinct indices in 0..{sections - 1}, got {anchors}; "
            "give one section per storyboard prompt."
        )
    gaps = [(i,) for i in range(sections) if i not in anchors]
    return _plan("anchors", sections, section_frames, image, [(a,) for a in anchors] + gaps)


def anchor_sections(prompt_seconds: Sequence[float], sections: int, section_seconds: float) -> list[int]:
    """The section holding each storyboard prompt's start time (later duplicates dropped)."""
    if section_seconds <= 0:
        raise ValueError(f"section length must be positive, got {section_seconds} seconds.")
    out: list[int] = []
    for t in prompt_seconds:
        s = min(max(int(float(t) // section_seconds), 0), sections - 1)
        if s not in out:
            out.append(s)
    return out


def first_of_each(labels: Sequence) -> list[int]:
    """Index of the first item of each distinct label, in order: one anchor section per storyboard
    prompt (label = the cue each section was given), so every prompt gets its own endpoint."""
    seen: dict = {}
    for i, label in enumerate(labels):
        seen.setdefault(label, i)
    return list(seen.values())


def plan(
    order: str, sections: int, section_frames: int, image: bool = False, anchors: Sequence[int] | None = None
) -> Plan:
    """Build a plan by name (``ORDERS``); ``anchors`` only for "anchors"."""
    if order == "forward":
        return forward(sections, section_frames, image)
    if order == "endpoints":
        return endpoints(sections, section_frames, image)
    if order == "inverted":
        return inverted(sections, section_frames, image)
    if order == "anchors":
        return anchored(sections, section_frames, anchors or [0], image)
    raise ValueError(f"sampling order must be one of {', '.join(ORDERS)}, got {order!r}.")


def plan_for_schedule(schedule, sections: int, image: bool = False, anchors: Sequence[int] | None = None) -> Plan:
    """The plan a FramePack schedule name implies (its g part sets the section length)."""
    frames = schedule.generate_frames
    if frames is None:
        raise ValueError(f"schedule '{schedule}' has no g part, so it does not say how long a section is; add one.")
    order = {"vanilla": "forward", "endpoint": "endpoints", "inverted": "inverted"}[schedule.sampling]
    if anchors and order == "endpoints":
        order = "anchors"
    return plan(order, sections, frames, image=image or order == "inverted", anchors=anchors)
