"""The written storyboard: its two forms read into cues, and every problem as one sentence.

Text form, one prompt per line; JSON when the text starts with ``[`` or ``{``:

    0:00 a woman knits by the window
    0:04.5 she looks up                 times: 12.5 / 12.5s (seconds), 1:02.5 (m:ss), 1:02:03 (h:mm:ss)
    0:05 - she stands                   one separator (- – | : ,) after the time is dropped when it touches
    0:06 -1 degree outside              the time or a space follows it; the prompt keeps its own characters
    # a comment; blank lines are ignored

    [{"t": 0, "prompt": "..."}, {"t": "0:04.5", "prompt": "..."}]   or {"global": "...", "prompts": [...]}

A storyboard is at most ``MAX_STORYBOARD_CHARS`` characters. ComfyUI checks a queued prompt on its
server's event loop, so the reading is also offered in steps (``read_steps``, a generator that pauses
every ``STEP_LINES`` lines or entries): the node hands the loop back between steps and the server keeps
answering while even the largest storyboard is read.
"""

from __future__ import annotations

import json
import math
import re
from fractions import Fraction
from typing import Generator, Sequence

MAX_STORYBOARD_CHARS = 100_000  # a prompt every 3 s for an hour is about as long; reading it takes milliseconds
STEP_LINES = 400  # lines or entries read per step: about a millisecond
SEPARATORS = "-–|:,"
_TIME = r"-?[0-9]+(?::[0-9]+){0,2}(?:\.[0-9]+)?"
_ANY_DIGITS_TIME = r"-?\d+(?::\d+){0,2}(?:\.\d+)?"  # \d is any Unicode digit: found, then refused by name
_TIME_RE, _ANY_DIGITS_RE = re.compile(_TIME), re.compile(_ANY_DIGITS_TIME)
_LINE = re.compile(rf"^(?P<time>{_ANY_DIGITS_TIME}s?)(?P<rest>(?:\s|[{SEPARATORS}]).*)?$")
_MAX_WHOLE_DIGITS = 400  # past ~309 digits of seconds a float is infinite anyway


def format_time(seconds: float) -> str:
    """``62.5 -> '1:02.5'``, ``4 -> '0:04'``: the text form's own time syntax (parses back exactly)."""
    sign = "-" if seconds < 0 else ""
    text = repr(abs(float(seconds)))
    if "e" in text or "n" in text:  # 1e+16, 5e-07, inf, nan: exact decimal arithmetic instead
        if not math.isfinite(seconds):
            return f"{sign}{abs(seconds)}"
        minutes, rest = divmod(Fraction(text), 60)
        whole = int(rest)
        frac = repr(float(rest - whole))[1:] if rest != whole else ""  # '.5' from '0.5'
        return f"{sign}{int(minutes)}:{whole:02d}{frac}"
    whole, _, frac = text.partition(".")
    minutes, rest = divmod(int(whole), 60)
    return f"{sign}{minutes}:{rest:02d}{'' if frac == '0' else '.' + frac}"


def parse_time(text: str) -> float:
    """``'1:02.5' -> 62.5``; ``'12.5'`` / ``'12.5s'`` are seconds. Raises one ValueError sentence naming the text."""
    raw = text.strip()
    body = raw[:-1] if raw.endswith("s") else raw
    if not _TIME_RE.fullmatch(body):
        if _ANY_DIGITS_RE.fullmatch(body):
            raise ValueError(f"time '{_clip(raw)}' has digits other than 0-9; write it with 0-9, like 1:02.5.")
        raise ValueError(f"time '{_clip(raw)}' is not a time; write seconds (12.5) or minutes:seconds (1:02.5).")
    whole, _, frac = body.lstrip("-").partition(".")
    parts = whole.split(":")
    for part in body.lstrip("-").split(":")[1:]:
        if len(part.split(".")[0]) != 2 or part[:2] >= "60":
            raise ValueError(
                f"time '{_clip(raw)}' has '{_clip(part)}' after a colon; write two-digit minutes and seconds "
                "below 60, like 1:02.5."
            )
    if len(parts[0].lstrip("0")) > _MAX_WHOLE_DIGITS:
        raise ValueError(_too_large(raw))
    seconds = 0
    for part in parts:
        seconds = seconds * 60 + int(part)
    value = float(f"{seconds}.{frac or 0}")  # the float nearest the exact decimal: '1:45.71' is 105.71
    if not math.isfinite(value):
        raise ValueError(_too_large(raw))
    return -value if body.startswith("-") else value


def _too_large(raw: str) -> str:
    return (
        f"time '{_clip(raw)}' is too large to be a time in a video; write seconds (12.5) or minutes:seconds (1:02.5)."
    )


Reading = tuple[str, list[tuple], str, list[tuple[int, str]], bool]
Steps = Generator[None, None, Reading]


def read_all(text, seconds: float | None) -> Reading:
    """(form, cues as (t, prompt, where, order), global prompt, problems by order, whether edits can reach the cues).

    ``order`` is the 1-based line (text) or entry (JSON) a cue or problem comes from; 0 is the whole text.
    """
    return finish(read_steps(text, seconds))


def finish(steps: Generator):
    """Run a generator of steps to its end; what it returns."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value


def read_steps(text, seconds: float | None) -> Steps:
    """``read_all`` in steps: yields every ``STEP_LINES`` lines or entries, returns what ``read_all`` returns."""
    if not isinstance(text, str):
        why = f"storyboard must be text, got {type(text).__name__}; pass JSON or one '0:00 prompt' line per prompt."
        return "text", [], "", [(0, why)], False
    stripped = text.strip()
    form = "json" if stripped[:1] in ("[", "{") else "text"
    if len(text) > MAX_STORYBOARD_CHARS:
        return form, [], "", [(0, too_long(text))], False
    if form == "json":
        raw, global_prompt, problems = yield from _read_json(stripped)
        editable = not any(order == 0 for order, _ in problems)  # order 0: the JSON itself is unreadable
    else:
        editable, global_prompt = True, ""
        raw, problems = yield from _read_text(text)
    problems = sorted(problems + (yield from _cue_problem_steps(raw, seconds)), key=lambda p: p[0])
    if not raw and not problems:
        problems.append((0, "storyboard is empty; write at least one prompt, e.g. '0:00 a woman knits by the window'."))
    return form, raw, global_prompt, problems, editable


def too_long(text: str) -> str:
    return (
        f"storyboard is {len(text):,} characters, over the {MAX_STORYBOARD_CHARS:,} a storyboard may have; "
        "shorten the prompts or split the video into shorter storyboards."
    )


def read_prompt(rest: str) -> str:
    """The prompt of a text line from what follows its time: one separator dropped, the prompt's own text kept."""
    if rest and rest[0] in SEPARATORS:  # touching the time: '0:05-a storm', '0:05: a storm'
        return rest[1:].strip()
    rest = rest.strip()
    if rest and rest[0] in SEPARATORS and (len(rest) == 1 or rest[1].isspace()):  # '0:05 - a storm'
        return rest[1:].strip()
    return rest  # '0:05 -1 degree night' keeps its minus


def write_prompt(prompt: str) -> str:
    """A prompt as ``read_prompt`` reads it back: one separator goes first when the prompt would lose its own."""
    prompt = " ".join(prompt.splitlines())  # the text form holds one line per prompt
    return f"- {prompt}" if read_prompt(" " + prompt) != prompt.strip() else prompt


def _read_text(text: str) -> Generator[None, None, tuple[list[tuple], list[tuple[int, str]]]]:
    """(cues as (t, prompt, where, line), problems as (line, sentence)); blank and # lines skipped."""
    raw, problems = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if number % STEP_LINES == 0:
            yield
        body = line.strip()
        if not body or body.startswith("#"):
            continue
        m = _LINE.match(body)
        if not m:
            problems.append(
                (
                    number,
                    f"storyboard line {number} ('{_clip(body)}') does not start with a time; "
                    "begin it with seconds or minutes:seconds, e.g. '0:04.5 she looks up'.",
                )
            )
            continue
        try:
            t = parse_time(m.group("time"))
        except ValueError as err:
            problems.append((number, f"storyboard line {number}: {err}"))
            continue
        raw.append((t, read_prompt(m.group("rest") or ""), f"line {number}", number))
    return raw, problems


def _read_json(text: str) -> Generator[None, None, tuple[list[tuple], str, list[tuple[int, str]]]]:
    """(cues as (t, prompt, where, order), global prompt, problems as (order, sentence))."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        why = (
            f"storyboard looks like JSON but line {err.lineno} column {err.colno} is invalid ({err.msg}); "
            "fix the JSON or write one '0:00 prompt' line per prompt."
        )
        return [], "", [(0, why)]
    except RecursionError:
        why = 'storyboard JSON is nested too deeply to read; write a flat list of {"t": seconds, "prompt": text}.'
        return [], "", [(0, why)]
    except ValueError:  # a number past Python's 4300-digit limit for reading integers
        why = "storyboard JSON holds a number too long to read; write each time as seconds (12.5) or as '1:02.5'."
        return [], "", [(0, why)]
    global_prompt = ""
    if isinstance(data, dict):
        unknown = sorted(set(data) - {"global", "prompts"})
        if unknown or not isinstance(data.get("prompts"), list):
            why = (
                'storyboard JSON object must be {"global": "...", "prompts": [...]}, '
                f"got keys {_clip(str(sorted(data)), 80)}; or give just the list of prompts."
            )
            return [], "", [(0, why)]
        global_prompt = data.get("global") or ""
        if not isinstance(global_prompt, str):
            return [], "", [(0, 'storyboard "global" must be text; write the global prompt as a string.')]
        data = data["prompts"]
    if not isinstance(data, list):
        return [], "", [(0, 'storyboard JSON must be a list of {"t": seconds, "prompt": text} entries.')]
    raw, problems = [], []
    for i, item in enumerate(data, start=1):
        if i % STEP_LINES == 0:
            yield
        where = f"entry {i}"
        if not isinstance(item, dict) or set(item) != {"t", "prompt"}:
            problems.append((i, f'storyboard {where} is {_shown(item)}; write it as {{"t": 4.5, "prompt": "..."}}.'))
            continue
        t, prompt = item["t"], item["prompt"]
        if isinstance(t, str):
            try:
                t = parse_time(t)
            except ValueError as err:
                problems.append((i, f"storyboard {where}: {err}"))
                continue
        if isinstance(t, int) and not isinstance(t, bool):
            try:
                t = float(t)
            except OverflowError:  # more than 308 digits
                problems.append((i, f"storyboard {where}: {_too_large(str(t))}"))
                continue
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t):
            problems.append((i, f"storyboard {where} has t = {_shown(t)}; give the time as a number of seconds."))
            continue
        if not isinstance(prompt, str):
            problems.append((i, f"storyboard {where} has a prompt that is not text ({_shown(prompt)}); quote it."))
            continue
        raw.append((float(t), prompt, where, i))
    return raw, global_prompt, problems


def cue_problems(raw: Sequence[tuple], seconds: float | None) -> list[tuple[int, str]]:
    """Rules on the cues themselves: times non-negative, strictly increasing, inside the video; text present."""
    return finish(_cue_problem_steps(raw, seconds))


def _cue_problem_steps(raw: Sequence[tuple], seconds: float | None) -> Generator[None, None, list[tuple[int, str]]]:
    problems = []
    for i, (t, prompt, where, order) in enumerate(raw):
        if i % STEP_LINES == STEP_LINES - 1:
            yield
        if t < 0:
            problems.append((order, f"storyboard {where} has the negative time {format_time(t)}; times start at 0:00."))
        elif seconds is not None and t > seconds:
            problems.append((order, past_end(where, t, seconds)))
        if not str(prompt).strip():
            problems.append(
                (order, f"storyboard {where} at {format_time(t)} has no prompt text; write what the video shows then.")
            )
        if i and t >= 0 and raw[i - 1][0] >= 0:
            prev_t, _, prev_where, _ = raw[i - 1]
            if t == prev_t:
                problems.append(
                    (
                        order,
                        f"storyboard {where} repeats the time {format_time(t)} of {prev_where}; "
                        "give each prompt its own time.",
                    )
                )
            elif t < prev_t:
                problems.append(
                    (
                        order,
                        f"storyboard {where} at {format_time(t)} comes before {prev_where} at {format_time(prev_t)}; "
                        "sort the prompts by time.",
                    )
                )
    return problems


def past_end(where: str, t: float, seconds: float) -> str:
    return (
        f"storyboard {where} at {format_time(t)} is past the end of the {format_time(seconds)} video; "
        "lengthen the video or move the prompt earlier."
    )


def _shown(value) -> str:
    """A JSON value as the sentences quote it, cut short (and never failing on deep nesting)."""
    try:
        return _clip(json.dumps(value, ensure_ascii=False))
    except (RecursionError, ValueError):
        return f"a {type(value).__name__} nested too deeply to show"


def _clip(text: str, n: int = 40) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."
