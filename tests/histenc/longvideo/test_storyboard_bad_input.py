"""Storyboard input that used to slip through: each is one sentence or reads right.

``BAD_INPUT`` (input -> sentence) and ``READS_AS`` (input -> prompts) are also run through the real server
(validate_inputs behind POST /prompt) by tests/e2e/test_e2e_storyboard_bad_input.py.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.storyboard_latency_bench import maximal
from histenc.longvideo import storyboard_read
from histenc.longvideo.storyboard import (
    MAX_STORYBOARD_CHARS,
    Cue,
    Storyboard,
    storyboard_problem_steps,
    storyboard_problems,
)
from histenc.longvideo.storyboard_editor import describe_storyboard

LIMIT = f"{MAX_STORYBOARD_CHARS:,}"
TOO_LARGE = "is too large to be a time in a video; write seconds (12.5) or minutes:seconds (1:02.5)."
OTHER_DIGITS = "has digits other than 0-9; write it with 0-9, like 1:02.5."


# input -> the one sentence it gets (the first problem; a storyboard of several problems gets them all)
BAD_INPUT = [
    (
        "0:00 a\n" + "x" * MAX_STORYBOARD_CHARS,
        f"storyboard is {MAX_STORYBOARD_CHARS + 7:,} characters, over the {LIMIT} a storyboard may have; "
        "shorten the prompts or split the video into shorter storyboards.",
    ),
    (
        "[" * 5000 + "]" * 5000,
        'storyboard JSON is nested too deeply to read; write a flat list of {"t": seconds, "prompt": text}.',
    ),
    (
        '[{"t": 0, "prompt": "a"}, {"t": ' + "[" * 300 + "]" * 300 + ', "prompt": "b"}]',
        "storyboard entry 2 has t = [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[...; give the time as a number of seconds.",
    ),
    ("0:00 a\n" + "9" * 309 + " b", f"storyboard line 2: time '{'9' * 37}...' {TOO_LARGE}"),  # over 1.8e308
    ("0:00 a\n" + "9" * 5000 + ":00 b", f"storyboard line 2: time '{'9' * 37}...' {TOO_LARGE}"),
    ('[{"t": 1' + "0" * 400 + ', "prompt": "a"}]', f"storyboard entry 1: time '1{'0' * 36}...' {TOO_LARGE}"),
    (
        '[{"t": ' + "7" * 5000 + ', "prompt": "a"}]',
        "storyboard JSON holds a number too long to read; write each time as seconds (12.5) or as '1:02.5'.",
    ),
    (
        "\u0660:\u0660\u0664 a lighthouse",
        f"storyboard line 1: time '\u0660:\u0660\u0664' {OTHER_DIGITS}",
    ),  # Arabic-Indic
    ("0:00 a\n\uff11\uff12.5 b", f"storyboard line 2: time '\uff11\uff12.5' {OTHER_DIGITS}"),  # full-width
    ('[{"t": "\u0967:\u0966\u0968", "prompt": "a"}]', f"storyboard entry 1: time '\u0967:\u0966\u0968' {OTHER_DIGITS}"),
]

# input -> the prompts it reads as (nothing refused)
READS_AS = [
    ("0:00 -1 degree night", ["-1 degree night"]),
    ("0:00 - a storm\n0:01: gulls\n0:02 | rain\n0:03, fog\n0:04 – dusk", ["a storm", "gulls", "rain", "fog", "dusk"]),
    ("0:00-a storm\n0:01:gulls\n0:02,fog", ["a storm", "gulls", "fog"]),  # a separator touching the time
    ("0:00 - - a list item\n0:01 :-) a smile\n0:02 ,,, dots", ["- a list item", ":-) a smile", ",,, dots"]),
    ("0:00 - -1 degree", ["-1 degree"]),  # the separator is dropped once
]


@pytest.mark.parametrize("text, sentence", BAD_INPUT, ids=range(len(BAD_INPUT)))
def test_bad_input_is_one_sentence(text, sentence):
    problems = storyboard_problems(text)
    assert problems[0] == sentence
    assert sentence.count("; ") == 1 and sentence.endswith(".")  # one sentence: what is wrong; what to do
    with pytest.raises(ValueError) as err:
        Storyboard.parse(text)
    assert str(err.value).startswith(sentence[:-1])
    assert describe_storyboard(text, 60, 16, 4)["problems"] == problems  # the editor is told the same


@pytest.mark.parametrize("text, prompts", READS_AS)
def test_prompts_keep_their_own_leading_characters(text, prompts):
    board = Storyboard.parse(text)
    assert [c.prompt for c in board.cues] == prompts
    assert Storyboard.parse(board.to_text()) == board


def test_a_storyboard_up_to_the_limit_is_read_and_one_past_it_is_refused_unread(monkeypatch):
    valid = "\n".join(f"{i // 60}:{i % 60:02d} p" for i in range(12_000))[:MAX_STORYBOARD_CHARS]
    assert storyboard_problems(valid.rsplit("\n", 1)[0]) == []
    too_long = "0:00 a\n" + "nope\n" * (MAX_STORYBOARD_CHARS // 5)

    def unread(*args):
        raise AssertionError("a storyboard over the limit was read")

    monkeypatch.setattr(storyboard_read, "_read_text", unread)  # not read: the size alone decides
    monkeypatch.setattr(storyboard_read, "_read_json", unread)
    assert storyboard_problems(too_long) == [BAD_INPUT[0][1].replace(f"{MAX_STORYBOARD_CHARS + 7:,}", "100,007")]
    got = describe_storyboard(too_long, 60, 16, 4)
    assert not got["editable"] and got["cues"] == [] and "lines" not in got and got["exports"] is None


def test_a_maximal_storyboard_is_read_in_steps_of_bounded_size():
    """The slowest content found (a problem on every line) at the largest size is read a few hundred lines at a
    time, so the server's loop turns between steps (how long a step takes: bench/storyboard_latency_bench.py)."""
    for text in (maximal(), maximal("1:5 x\n"), maximal("x\n")):
        steps, turns = storyboard_problem_steps(text), 0
        while True:
            try:
                next(steps)
                turns += 1
            except StopIteration as done:
                problems = done.value
                break
        assert problems and turns >= text.count("\n") // storyboard_read.STEP_LINES


def test_a_time_typed_into_the_editor_follows_the_same_rules():
    from histenc.longvideo.storyboard_editor import storyboard_request

    assert (
        storyboard_request({"time": "\u0661:\u0660\u0662"})["time"]["problem"]
        == f"time '\u0661:\u0660\u0662' {OTHER_DIGITS}"
    )
    assert storyboard_request({"time": "1" * 400})["time"]["problem"] == f"time '{'1' * 37}...' {TOO_LARGE}"


# Prompts the text form can hold: one line, no surrounding blanks, anything else (separators, digits, unicode).
PROMPT = st.text(
    alphabet=st.sampled_from(list("-–|:,.#s0123456789 abcxyz\t\u00e9\u4e00\u0660")), min_size=1, max_size=14
).filter(lambda p: p.strip() == p and p.strip())


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 10**6), PROMPT), min_size=1, max_size=6, unique_by=lambda c: c[0]))
def test_text_written_by_to_text_reads_back_identically(cues):
    board = Storyboard([Cue(t / 100, p) for t, p in sorted(cues)], timing="nearest timestamp")
    text = board.to_text()
    assert Storyboard.parse(text, timing="nearest timestamp") == board
    assert text.count("\n") == len(cues) - 1


def test_line_breaks_in_a_json_prompt_become_spaces_in_the_text_form():
    board = Storyboard.parse('[{"t": 0, "prompt": "a storm\\nover the sea"}]')
    assert board.to_text() == "0:00 a storm over the sea"
