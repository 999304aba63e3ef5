"""What the storyboard timeline editor is told: the server's reading of a written storyboard.

The editor in ``web/`` re-implements no rule: it posts the text (and the sampler's seconds, fps and
section length) to the pack's ``POST /histenc/storyboard`` route and draws this module's answer, so it
shows exactly what a queued prompt would meet.
"""

from __future__ import annotations

import json
import math

from ..units import TIME_STRIDE
from .storyboard import Storyboard, format_time, parse_time, schedule_sections
from .storyboard_read import _clip, read_all
from .timing import MIDDLE, TIMINGS, check_timing

MAX_DESCRIBED_SECTIONS = 5000  # more boundaries than a timeline can draw; the check answers with a sentence instead
_REQUEST_FIELDS = ("text", "seconds", "fps", "section_frames", "time", "timing")


def describe_storyboard(
    text: str,
    seconds: float | None = None,
    fps: float | None = None,
    section_frames: int | None = None,
    time_stride: int = TIME_STRIDE,
    timing: str = MIDDLE,
) -> dict:
    """Everything the timeline editor shows about a written storyboard, as JSON-ready data.

    The editor asks the server for this instead of re-implementing the rules, so it shows what a
    queued prompt would meet: the cues with their times and the line or JSON entry each came from
    (``slot``, 0-based), every problem as ``storyboard_problems`` words it (and per cue), the cut of
    ``schedule_sections`` when ``seconds``, ``fps`` and ``section_frames`` are all given, with the
    cue each section gets under ``timing`` once the storyboard is valid and where each prompt's
    sections start (``switches``), and the JSON and text exports (of any storyboard that parses,
    whatever the video's length).
    """
    check_timing(timing)
    form, raw, global_prompt, problems, editable = read_all(text, seconds)
    by_order: dict[int, list[str]] = {}
    for order, msg in problems:
        by_order.setdefault(order, []).append(msg)
    out = {
        "form": form,
        "editable": editable,
        "global_prompt": global_prompt.strip(),
        "cues": [
            {
                "t": float(t),
                "time": format_time(t),
                "prompt": prompt.strip(),
                "where": where,
                "slot": order - 1,
                "problems": by_order.get(order, []),
            }
            for t, prompt, where, order in raw
        ],
        "problems": [msg for _, msg in problems],
        "end_time": None if seconds is None else format_time(seconds),
        "schedule": None,
        "schedule_problem": None,
        "exports": None,
    }
    if form == "text" and editable:
        out["lines"], out["breaks"] = _split_lines(text)
    try:  # exported without the video length: a storyboard outlives one video
        board = Storyboard.parse(text, timing=timing) if raw else None
    except ValueError:
        board = None
    if board is not None:
        out["exports"] = {"json": board.to_json(), "text": board.to_text()}
    if seconds is None or fps is None or section_frames is None:
        return out
    try:
        if (
            _positive(seconds)
            and _positive(fps)
            and _positive(section_frames)
            and isinstance(section_frames, int)
            and seconds * fps / (time_stride * section_frames) > MAX_DESCRIBED_SECTIONS
        ):
            raise ValueError(
                f"{seconds:g} seconds at {fps:g} fps in sections of {section_frames} latent frames makes more than "
                f"{MAX_DESCRIBED_SECTIONS} sections, more than the timeline draws; use longer sections."
            )
        schedule = schedule_sections(seconds, fps, section_frames, time_stride)
    except ValueError as err:
        out["schedule_problem"] = str(err)
        return out
    valid = board is not None and not problems  # no cue past the end either
    chosen = board.cues_for(schedule.sections, schedule.fps) if valid else [None] * len(schedule.sections)
    out["schedule"] = {
        "timing": timing,
        "frames": schedule.frames,
        "latent_frames": schedule.latent_frames,
        "trim": schedule.trim,
        "duration": schedule.duration,
        "boundaries": schedule.boundaries(),
        "sections": [
            {
                "index": s.index,
                "latent_start": s.latent_start,
                "latent_frames": s.latent_frames,
                "pixel_start": s.pixel_start,
                "pixel_end": s.pixel_end,
                "start_s": s.start_s,
                "end_s": s.end_s,
                "start": format_time(s.start_s),
                "end": format_time(s.end_s),
                "cue": cue,
            }
            for s, cue in zip(schedule.sections, chosen)
        ],
        "switches": [],
        "notes": [],
    }
    if valid:
        out["schedule"]["switches"], out["schedule"]["notes"] = _switches(raw, schedule, chosen, timing)
    return out


def _switches(raw: list[tuple], schedule, chosen: list[int], timing: str) -> tuple[list[dict], list[str]]:
    """Where each prompt's sections start (the rule's result), and a sentence per prompt no section takes."""
    switches = []
    for i, (s, cue) in enumerate(zip(schedule.sections, chosen)):
        if i == 0 or cue != chosen[i - 1]:
            t = float(raw[cue][0])
            switches.append({"cue": cue, "section": s.index, "at_s": s.start_s, "at": format_time(s.start_s), "t": t})
    taken = {w["cue"] for w in switches}
    length = schedule.section_frames * schedule.time_stride / schedule.fps
    notes = [
        f'storyboard {where} at {format_time(t)} is never sampled: no section takes it under the "{timing}" timing; '
        f"keep prompts at least one section ({length:g} s) apart and from the end."
        for k, (t, _, where, _) in enumerate(raw)
        if k not in taken
    ]
    return switches, notes


def storyboard_request(body) -> dict:
    """The timeline editor's question answered: what the pack's ``POST /histenc/storyboard`` route returns.

    ``body`` is the request's JSON: ``text`` (the storyboard as written) with the optional
    ``seconds``, ``fps`` and ``section_frames`` the editor knows from the graph, and/or ``time`` (a
    time typed into the editor). The answer is ``describe_storyboard``'s, plus ``time``: either
    ``{"text", "seconds"}`` or ``{"text", "problem"}``. A malformed request raises one ValueError sentence.
    """
    if not isinstance(body, dict):
        raise ValueError(
            f"the storyboard request must be a JSON object, got {type(body).__name__}; "
            'send e.g. {"text": "0:00 a lighthouse", "seconds": 60}.'
        )
    unknown = sorted(set(body) - set(_REQUEST_FIELDS))
    if unknown:
        raise ValueError(
            f"the storyboard request has the unknown field(s) {unknown}; send only {list(_REQUEST_FIELDS)}."
        )
    if body.get("text") is None and body.get("time") is None:
        raise ValueError('the storyboard request has neither "text" nor "time"; send the storyboard as "text".')
    for name in _REQUEST_FIELDS:
        value = body.get(name)
        if value is None:
            continue
        if name in ("text", "time", "timing"):
            if not isinstance(value, str):
                raise ValueError(f'the storyboard request\'s "{name}" is {_clip(json.dumps(value))}; send it as text.')
        elif not _finite(value):
            raise ValueError(
                f'the storyboard request\'s "{name}" is {_clip(json.dumps(value))}; send a number, or null if unknown.'
            )
    frames = body.get("section_frames")
    if isinstance(frames, float) and frames.is_integer():
        frames = int(frames)  # 9.0 from a browser's number is 9 latent frames
    timing = body.get("timing") or MIDDLE
    if timing not in TIMINGS:
        shown = _clip(json.dumps(timing))
        raise ValueError(f'the storyboard request\'s "timing" is {shown}; send one of {list(TIMINGS)}.')
    out = {}
    if body.get("text") is not None:
        out = describe_storyboard(body["text"], body.get("seconds"), body.get("fps"), frames, timing=timing)
    if body.get("time") is not None:
        try:
            out["time"] = {"text": body["time"], "seconds": parse_time(body["time"])}
        except ValueError as err:
            out["time"] = {"text": body["time"], "problem": str(err)}
    return out


def _finite(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def _positive(value) -> bool:
    return _finite(value) and value > 0


def _split_lines(text: str) -> tuple[list[str], list[str]]:
    """The text cut where ``str.splitlines`` cuts it, keeping the breaks: ``lines[i]`` is line i + 1.

    ``lines`` has one entry more than ``breaks`` (the text after the last break, maybe empty), so
    joining them gives the text back byte for byte: an editor rewrites one line and keeps the rest.
    """
    lines, breaks = [], []
    for piece in text.splitlines(keepends=True):
        body = piece.splitlines()[0]
        lines.append(body)
        breaks.append(piece[len(body) :])
    if not breaks or breaks[-1]:
        lines.append("")
    else:
        breaks.pop()
    return lines, breaks
