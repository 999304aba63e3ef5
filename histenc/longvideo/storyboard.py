"""Storyboard: timestamped prompts, and which prompt each generated section receives.

Written as text (``0:04.5 she looks up``, one prompt per line) or JSON (``[{"t": 4.5, "prompt": ...}]``,
optionally ``{"global": ..., "prompts": [...]}``); ``storyboard_read`` reads both forms.

A prompt holds from its time until the next prompt. Sections are the unit of sampling and a prompt
cannot change inside one, so every section gets exactly ONE prompt: the one in force at its middle,
which puts every switch on the section boundary nearest the written time (``timing``; the nearest-
timestamp rule is the other choice a storyboard can carry). The rules are written once, here and in
``storyboard_read``, so nodes and the frontend report the same sentences: the timeline editor asks the
server (``describe_storyboard`` behind the pack's route) rather than keeping a copy.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from fractions import Fraction
from typing import Sequence

from .storyboard_read import MAX_STORYBOARD_CHARS, cue_problems, finish, format_time, parse_time, past_end, read_all
from .storyboard_read import read_steps, write_prompt
from .timing import MIDDLE, NEAREST, TIMINGS, Section, SectionSchedule, check_timing, schedule_sections
from .timing import exact, section_cues

__all__ = [
    "MAX_STORYBOARD_CHARS",
    "MIDDLE",
    "NEAREST",
    "TIMINGS",
    "Cue",
    "Section",
    "SectionPrompt",
    "SectionSchedule",
    "Storyboard",
    "format_time",
    "parse_time",
    "schedule_sections",
    "storyboard_problem_steps",
    "storyboard_problems",
]


@dataclass(frozen=True)
class Cue:
    """One storyboard entry: from ``t`` seconds on, the video shows ``prompt``."""

    t: float
    prompt: str


@dataclass(frozen=True)
class SectionPrompt:
    """A section of the schedule with the prompt it is sampled with (global prompt included)."""

    section: Section
    prompt: str
    cue: int  # index of the storyboard cue that was chosen


def _join(global_prompt: str, prompt: str) -> str:
    g = global_prompt.strip()
    if not g:
        return prompt
    return f"{g} {prompt}" if g[-1] in ",.;:!?" else f"{g}, {prompt}"


class Storyboard:
    """Validated, time-sorted cues, an optional global prompt prepended to every one, and the timing rule."""

    def __init__(self, cues: Sequence[Cue], global_prompt: str = "", timing: str = MIDDLE):
        self.cues = tuple(cues)
        self.global_prompt = global_prompt.strip()
        self.timing = check_timing(timing)
        if not self.cues:
            raise ValueError("storyboard is empty; give at least one cue, e.g. Cue(0, 'a woman knits by the window').")
        problems = cue_problems([(c.t, c.prompt, f"entry {i + 1}", i) for i, c in enumerate(self.cues)], None)
        if problems:
            raise ValueError(problems[0][1])

    @staticmethod
    def parse(
        text: str, seconds: float | None = None, global_prompt: str | None = None, timing: str = MIDDLE
    ) -> "Storyboard":
        """Parse either written form; ``seconds`` (video length) also rejects cues past the end.

        ``global_prompt`` overrides a global prompt stored in the JSON form when given.
        """
        cues, stored_global, problems = _read(text, seconds)
        if problems:
            more = f" ({len(problems) - 1} more problem(s) after fixing this one)" if len(problems) > 1 else ""
            raise ValueError(problems[0] + more)
        return Storyboard(cues, stored_global if global_prompt is None else global_prompt, timing)

    def to_json(self) -> str:
        """JSON form; parses back to an equal storyboard (the object form when there is a global prompt)."""
        entries = [{"t": c.t, "prompt": c.prompt} for c in self.cues]
        if self.global_prompt:
            return json.dumps({"global": self.global_prompt, "prompts": entries}, ensure_ascii=False)
        return json.dumps(entries, ensure_ascii=False)

    def to_text(self) -> str:
        """Plain-text form, one line per cue, reading back to the same cues (the global prompt is not part of it).

        A prompt that starts like a separator (``- a list``) gets one written before it; line breaks
        inside a prompt become spaces, as the text form holds one line per prompt.
        """
        return "\n".join(f"{format_time(c.t)} {write_prompt(c.prompt)}" for c in self.cues)

    def __eq__(self, other) -> bool:
        return isinstance(other, Storyboard) and (self.cues, self.global_prompt, self.timing) == (
            other.cues,
            other.global_prompt,
            other.timing,
        )

    def __repr__(self) -> str:
        return f"Storyboard({list(self.cues)!r}, global_prompt={self.global_prompt!r}, timing={self.timing!r})"

    def cue_for(self, section: Section, fps: float) -> int:
        """Index of the ONE cue a section receives under the storyboard's ``timing`` (``timing.section_cues``).

        The section is on screen during [first pixel frame / fps, end pixel frame / fps); ``MIDDLE`` gives
        it the cue in force at the middle of that span, ``NEAREST`` the cue whose time is nearest it.
        """
        return self.cues_for([section], fps)[0]

    def cues_for(self, sections: Sequence[Section], fps: float) -> list[int]:
        """``cue_for`` of many sections at once (one pass over the cues)."""
        rate = exact(fps)
        spans = [(Fraction(s.pixel_start) / rate, Fraction(s.pixel_end) / rate) for s in sections]
        return section_cues([c.t for c in self.cues], spans, self.timing)

    def prompt_at(self, index: int) -> str:
        """The prompt of cue ``index`` with the global prompt prepended."""
        return _join(self.global_prompt, self.cues[index].prompt)

    def assign(self, schedule: SectionSchedule) -> list[SectionPrompt]:
        """The prompt of every section of ``schedule`` (the storyboard's timing); rejects cues past its end."""
        end = schedule.seconds
        late = [c for c in self.cues if c.t > end]
        if late:
            raise ValueError(past_end(f"entry {self.cues.index(late[0]) + 1}", late[0].t, end))
        chosen = self.cues_for(schedule.sections, schedule.fps)
        return [SectionPrompt(s, self.prompt_at(i), i) for s, i in zip(schedule.sections, chosen)]


def storyboard_problems(text: str, seconds: float | None = None) -> list[str]:
    """Every problem of a written storyboard, one sentence each (empty list: it is valid)."""
    return finish(storyboard_problem_steps(text, seconds))


def storyboard_problem_steps(text: str, seconds: float | None = None):
    """``storyboard_problems`` as a generator that pauses every few hundred lines (see ``read_steps``)."""
    _, _, _, problems, _ = yield from read_steps(text, seconds)
    return [msg for _, msg in problems]


def _read(text: str, seconds: float | None) -> tuple[list[Cue], str, list[str]]:
    _, raw, global_prompt, problems, _ = read_all(text, seconds)
    return [Cue(float(r[0]), r[1].strip()) for r in raw], global_prompt, [msg for _, msg in problems]
