"""Storyboard: timestamped prompts, and which prompt each generated section receives.

Two equivalent written forms, detected automatically (JSON when the text starts with ``[`` or ``{``):

    [{"t": 0, "prompt": "a woman knits by the window"}, {"t": 4.5, "prompt": "she looks up"}]
    {"global": "film grain", "prompts": [{"t": 0, "prompt": "..."}]}      (optional global prompt)

    0:00 a woman knits by the window
    0:04.5 she looks up                 times: 12.5 / 12.5s (seconds), 1:02.5 (m:ss), 1:02:03 (h:mm:ss)
    # a comment; blank lines are ignored; "0:05 - prompt" and "0:05 | prompt" also read

A prompt holds from its timestamp on, so every section gets exactly ONE prompt (the nearest
rule, see ``Storyboard.cue_for``); sections are the unit of sampling and a prompt cannot change
inside one. The rules are written once here as ``storyboard_problems`` (a pure function returning
every problem as one sentence) so nodes and the frontend report the same sentences: the timeline
editor asks the server (``describe_storyboard`` behind the pack's route) rather than keeping a copy.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Sequence

from ..units import TIME_STRIDE, latent_frames_of, video_frames

_TIME = r"-?\d+(?::\d+){0,2}(?:\.\d+)?s?"
_LINE = re.compile(rf"^(?P<time>{_TIME})(?P<rest>(?:\s|[-–|:,]).*)?$")
_SEPARATORS = "-–|:,"


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


@dataclass(frozen=True)
class Section:
    """One sampled chunk of the video: a run of latent frames and the pixel frames they decode to.

    Pixel frames are counted in the whole decoded video (the Wan/Hunyuan causal VAE: latent frame
    0 decodes to pixel frame 0, latent frame j >= 1 to pixel frames stride*j - stride + 1 ..
    stride*j). A frame i is shown during [i / fps, (i + 1) / fps), so the section is on screen
    during [start_s, end_s).
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
        """The section's time for the nearest rule: the middle of [start_s, end_s)."""
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

    def pixel(j: int) -> int:  # first pixel frame of latent frame j (also the end of latent frame j - 1)
        return 0 if j == 0 else time_stride * j - time_stride + 1

    sections = []
    for index, start in enumerate(range(0, latent_frames, section_frames)):
        end = min(start + section_frames, latent_frames)
        sections.append(Section(index, start, end - start, pixel(start), min(pixel(end), frames), float(fps)))
    return SectionSchedule(
        float(seconds), float(fps), section_frames, time_stride, frames, latent_frames, tuple(sections)
    )


def format_time(seconds: float) -> str:
    """``62.5 -> '1:02.5'``, ``4 -> '0:04'``: the text form's own time syntax (parses back exactly)."""
    sign = "-" if seconds < 0 else ""
    seconds = abs(seconds)
    minutes, rest = divmod(Fraction(repr(float(seconds))), 60)
    whole = int(rest)
    frac = repr(float(rest - whole))[1:] if rest != whole else ""  # '.5' from '0.5'
    return f"{sign}{int(minutes)}:{whole:02d}{frac}"


def parse_time(text: str) -> float:
    """``'1:02.5' -> 62.5``; ``'12.5'`` / ``'12.5s'`` are seconds. Raises ValueError naming the text."""
    raw = text.strip()
    body = raw[:-1] if raw.endswith("s") else raw
    if not re.fullmatch(_TIME.removesuffix("s?"), body):
        raise ValueError(f"time '{raw}' is not a time; write seconds (12.5) or minutes:seconds (1:02.5).")
    sign = -1.0 if body.startswith("-") else 1.0
    parts = body.lstrip("-").split(":")
    for part in parts[1:]:
        if float(part) >= 60 or len(part.split(".")[0]) != 2:
            raise ValueError(
                f"time '{raw}' has '{part}' after a colon; write two-digit minutes and seconds below 60, like 1:02.5."
            )
    value = Fraction(0)
    for part in parts:  # exact decimal arithmetic: '1:45.71' must give the float nearest 105.71
        value = value * 60 + Fraction(part)
    return sign * float(value)


def _join(global_prompt: str, prompt: str) -> str:
    g = global_prompt.strip()
    if not g:
        return prompt
    return f"{g} {prompt}" if g[-1] in ",.;:!?" else f"{g}, {prompt}"


class Storyboard:
    """Validated, time-sorted cues plus an optional global prompt prepended to every one."""

    def __init__(self, cues: Sequence[Cue], global_prompt: str = ""):
        self.cues = tuple(cues)
        self.global_prompt = global_prompt.strip()
        if not self.cues:
            raise ValueError("storyboard is empty; give at least one cue, e.g. Cue(0, 'a woman knits by the window').")
        problems = _cue_problems([(c.t, c.prompt, f"entry {i + 1}", i) for i, c in enumerate(self.cues)], None)
        if problems:
            raise ValueError(problems[0][1])

    @staticmethod
    def parse(text: str, seconds: float | None = None, global_prompt: str | None = None) -> "Storyboard":
        """Parse either written form; ``seconds`` (video length) also rejects cues past the end.

        ``global_prompt`` overrides a global prompt stored in the JSON form when given.
        """
        cues, stored_global, problems = _read(text, seconds)
        if problems:
            more = f" ({len(problems) - 1} more problem(s) after fixing this one)" if len(problems) > 1 else ""
            raise ValueError(problems[0] + more)
        return Storyboard(cues, stored_global if global_prompt is None else global_prompt)

    def to_json(self) -> str:
        """JSON form; parses back to an equal storyboard (the object form when there is a global prompt)."""
        entries = [{"t": c.t, "prompt": c.prompt} for c in self.cues]
        if self.global_prompt:
            return json.dumps({"global": self.global_prompt, "prompts": entries}, ensure_ascii=False)
        return json.dumps(entries, ensure_ascii=False)

    def to_text(self) -> str:
        """Plain-text form, one line per cue (the global prompt is not part of the text form)."""
        return "\n".join(f"{format_time(c.t)} {c.prompt}" for c in self.cues)

    def __eq__(self, other) -> bool:
        return isinstance(other, Storyboard) and (self.cues, self.global_prompt) == (other.cues, other.global_prompt)

    def __repr__(self) -> str:
        return f"Storyboard({list(self.cues)!r}, global_prompt={self.global_prompt!r})"

    def cue_for(self, section: Section, fps: float) -> int:
        """Index of the ONE cue a section receives: the nearest rule.

        The section's time is its midpoint ``(first pixel frame + end pixel frame) / (2 * fps)``,
        i.e. the middle of the span [start_s, end_s) its frames are shown for. The chosen cue is the
        one whose timestamp is nearest to that midpoint; on an exact tie the EARLIER cue wins (the
        prompt already showing keeps the screen). Arithmetic is exact (timestamps and fps are taken
        as the decimals they were written as), so ties are real ties, not float accidents.
        """
        mid = Fraction(section.pixel_start + section.pixel_end, 2) / Fraction(repr(float(fps)))
        best, best_gap = 0, None
        for i, cue in enumerate(self.cues):
            gap = abs(Fraction(repr(float(cue.t))) - mid)
            if best_gap is None or gap < best_gap:
                best, best_gap = i, gap
        return best

    def prompt_at(self, index: int) -> str:
        """The prompt of cue ``index`` with the global prompt prepended."""
        return _join(self.global_prompt, self.cues[index].prompt)

    def assign(self, schedule: SectionSchedule) -> list[SectionPrompt]:
        """The prompt of every section of ``schedule`` (nearest rule); rejects cues past its end."""
        end = schedule.seconds
        late = [c for c in self.cues if c.t > end]
        if late:
            raise ValueError(_past_end(f"entry {self.cues.index(late[0]) + 1}", late[0].t, end))
        out = []
        for section in schedule.sections:
            i = self.cue_for(section, schedule.fps)
            out.append(SectionPrompt(section, self.prompt_at(i), i))
        return out


def storyboard_problems(text: str, seconds: float | None = None) -> list[str]:
    """Every problem of a written storyboard, one sentence each (empty list: it is valid)."""
    return _read(text, seconds)[2]


def _past_end(where: str, t: float, seconds: float) -> str:
    return (
        f"storyboard {where} at {format_time(t)} is past the end of the {format_time(seconds)} video; "
        "lengthen the video or move the prompt earlier."
    )


def _read(text: str, seconds: float | None) -> tuple[list[Cue], str, list[str]]:
    _, raw, global_prompt, problems, _ = _read_all(text, seconds)
    return [Cue(float(r[0]), r[1].strip()) for r in raw], global_prompt, [msg for _, msg in problems]


def _read_all(text: str, seconds: float | None) -> tuple[str, list[tuple], str, list[tuple[int, str]], bool]:
    """(form, cues as (t, prompt, where, order), global prompt, problems by order, whether edits can reach the cues)."""
    if not isinstance(text, str):
        return (
            "text",
            [],
            "",
            [
                (
                    0,
                    (
                        f"storyboard must be text, got {type(text).__name__}; pass JSON or one '0:00 prompt' line per "
                        "prompt."
                    ),
                )
            ],
            False,
        )
    stripped = text.strip()
    if stripped[:1] in ("[", "{"):
        form = "json"
        raw, global_prompt, problems = _read_json(stripped)
        editable = not any(order == 0 for order, _ in problems)  # order 0: the JSON itself is unreadable
    else:
        form, editable = "text", True
        raw, problems = _read_text(text)
        global_prompt = ""
    problems = sorted(problems + _cue_problems(raw, seconds), key=lambda p: p[0])
    if not raw and not problems:
        problems.append((0, "storyboard is empty; write at least one prompt, e.g. '0:00 a woman knits by the window'."))
    return form, raw, global_prompt, problems, editable


def _read_text(text: str) -> tuple[list[tuple], list[tuple[int, str]]]:
    """(cues as (t, prompt, where, line), problems as (line, sentence)); blank and # lines skipped."""
    raw, problems = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        body = line.strip()
        if not body or body.startswith("#"):
            continue
        m = _LINE.match(body)
        if not m:
            problems.append(
                (
                    number,
                    (
                        f"storyboard line {number} ('{_clip(body)}') does not start with a time; "
                        "begin it with seconds or minutes:seconds, e.g. '0:04.5 she looks up'."
                    ),
                )
            )
            continue
        try:
            t = parse_time(m.group("time"))
        except ValueError as err:
            problems.append((number, f"storyboard line {number}: {err}"))
            continue
        prompt = (m.group("rest") or "").strip().lstrip(_SEPARATORS).strip()
        raw.append((t, prompt, f"line {number}", number))
    return raw, problems


def _read_json(text: str) -> tuple[list[tuple], str, list[tuple[int, str]]]:
    """(cues as (t, prompt, where, order), global prompt, problems as (order, sentence))."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        return (
            [],
            "",
            [
                (
                    0,
                    f"storyboard looks like JSON but line {err.lineno} column {err.colno} is invalid ({err.msg}); "
                    "fix the JSON or write one '0:00 prompt' line per prompt.",
                )
            ],
        )
    global_prompt = ""
    if isinstance(data, dict):
        unknown = sorted(set(data) - {"global", "prompts"})
        if unknown or not isinstance(data.get("prompts"), list):
            return (
                [],
                "",
                [
                    (
                        0,
                        'storyboard JSON object must be {"global": "...", "prompts": [...]}, '
                        f"got keys {sorted(data)}; or give just the list of prompts.",
                    )
                ],
            )
        global_prompt = data.get("global") or ""
        if not isinstance(global_prompt, str):
            return [], "", [(0, 'storyboard "global" must be text; write the global prompt as a string.')]
        data = data["prompts"]
    if not isinstance(data, list):
        return [], "", [(0, 'storyboard JSON must be a list of {"t": seconds, "prompt": text} entries.')]
    raw, problems = [], []
    for i, item in enumerate(data, start=1):
        where = f"entry {i}"
        if not isinstance(item, dict) or set(item) != {"t", "prompt"}:
            problems.append(
                (i, f'storyboard {where} is {_clip(json.dumps(item))}; write it as {{"t": 4.5, "prompt": "..."}}.')
            )
            continue
        t, prompt = item["t"], item["prompt"]
        if isinstance(t, str):
            try:
                t = parse_time(t)
            except ValueError as err:
                problems.append((i, f"storyboard {where}: {err}"))
                continue
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t):
            problems.append((i, f"storyboard {where} has t = {json.dumps(t)}; give the time as a number of seconds."))
            continue
        if not isinstance(prompt, str):
            problems.append((i, f"storyboard {where} has a prompt that is not text ({json.dumps(prompt)}); quote it."))
            continue
        raw.append((float(t), prompt, where, i))
    return raw, global_prompt, problems


def _cue_problems(raw: Sequence[tuple], seconds: float | None) -> list[tuple[int, str]]:
    """Rules on the cues themselves: times non-negative, strictly increasing, inside the video; text present."""
    problems = []
    for i, (t, prompt, where, order) in enumerate(raw):
        if t < 0:
            problems.append((order, f"storyboard {where} has the negative time {format_time(t)}; times start at 0:00."))
        elif seconds is not None and t > seconds:
            problems.append((order, _past_end(where, t, seconds)))
        if not str(prompt).strip():
            problems.append(
                (
                    order,
                    (f"storyboard {where} at {format_time(t)} has no prompt text; write what the video shows then."),
                )
            )
        if i and t >= 0 and raw[i - 1][0] >= 0:
            prev_t, _, prev_where, _ = raw[i - 1]
            if t == prev_t:
                problems.append(
                    (
                        order,
                        (
                            f"storyboard {where} repeats the time {format_time(t)} of {prev_where}; "
                            "give each prompt its own time."
                        ),
                    )
                )
            elif t < prev_t:
                problems.append(
                    (
                        order,
                        (
                            f"storyboard {where} at {format_time(t)} comes before {prev_where} at "
                            f"{format_time(prev_t)}; "
                            "sort the prompts by time."
                        ),
                    )
                )
    return problems


def _clip(text: str, n: int = 40) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."
