"""Storyboard parsing (both forms), validation sentences, the nearest-timestamp rule, and the section schedule.

The default rule (the cue in force at a section's middle) has its own tests in test_storyboard_timing.py.
"""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from histenc.longvideo.storyboard import (
    NEAREST,
    Cue,
    Section,
    Storyboard,
    format_time,
    parse_time,
    schedule_sections,
    storyboard_problems,
)

TEXT = """# kitchen scene
0:00 a woman knits by the window

0:04.5 - she looks up
12.5s | a cat jumps on the sill
1:02.5: the sun sets
"""


def test_text_form_reads_every_time_syntax_and_separator():
    board = Storyboard.parse(TEXT)
    assert [c.t for c in board.cues] == [0.0, 4.5, 12.5, 62.5]
    assert [c.prompt for c in board.cues] == [
        "a woman knits by the window",
        "she looks up",
        "a cat jumps on the sill",
        "the sun sets",
    ]


def test_json_and_text_forms_are_detected_and_equivalent():
    as_json = json.dumps(
        [
            {"t": 0, "prompt": "a woman knits by the window"},
            {"t": "0:04.5", "prompt": "she looks up"},
            {"t": 12.5, "prompt": "a cat jumps on the sill"},
            {"t": 62.5, "prompt": "the sun sets"},
        ]
    )
    assert Storyboard.parse("\n  " + as_json) == Storyboard.parse(TEXT)


def test_round_trips_through_json_and_text():
    board = Storyboard.parse(TEXT)
    assert Storyboard.parse(board.to_json()) == board
    assert Storyboard.parse(board.to_text()) == board
    with_global = Storyboard(board.cues, "35mm film, soft light")
    back = Storyboard.parse(with_global.to_json())
    assert back == with_global and back.global_prompt == "35mm film, soft light"


def test_hours_minutes_seconds():
    assert parse_time("1:02:03.25") == 3723.25
    assert parse_time("12.5") == parse_time("12.5s") == 12.5
    assert parse_time("0:59") == 59.0


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=0, max_value=10**7).map(lambda n: n / 100))
def test_format_time_parses_back_exactly(seconds):
    assert parse_time(format_time(seconds)) == seconds


def test_global_prompt_is_prepended_to_every_section_prompt():
    board = Storyboard.parse("0:00 a dog\n0:02 a cat", global_prompt="watercolour")
    prompts = [p.prompt for p in board.assign(schedule_sections(4.0, 8, 2))]
    assert prompts[0] == "watercolour, a dog" and prompts[-1] == "watercolour, a cat"
    assert Storyboard.parse("0:00 a dog", global_prompt="Watercolour.").prompt_at(0) == "Watercolour. a dog"
    assert Storyboard.parse("0:00 a dog").prompt_at(0) == "a dog"


# -- the nearest-timestamp rule (the paper's; a storyboard's timing option) -----------------------


def _section(pixel_start, pixel_end, fps):
    return Section(0, 0, 1, pixel_start, pixel_end, fps)


def test_nearest_rule_uses_the_section_midpoint():
    board = Storyboard([Cue(0, "a"), Cue(4, "b"), Cue(10, "c")], timing=NEAREST)
    assert board.cue_for(_section(0, 48, 24), 24) == 0  # midpoint 1 s
    assert board.cue_for(_section(48, 120, 24), 24) == 1  # midpoint 3.5 s -> 4 s
    assert board.cue_for(_section(168, 240, 24), 24) == 2  # midpoint 8.5 s -> 10 s


def test_exact_tie_goes_to_the_earlier_prompt():
    board = Storyboard([Cue(0, "a"), Cue(4, "b")], timing=NEAREST)
    assert board.cue_for(_section(24, 72, 24), 24) == 0  # midpoint exactly 2 s: equal distance
    assert board.cue_for(_section(25, 72, 24), 24) == 1  # a frame later, 4 s is nearer


def test_ties_are_exact_not_float_accidents():
    # midpoint (1 + 3) / 20 = 0.2 s; in floats |0.3 - 0.2| < |0.1 - 0.2|, exactly they are equal
    board = Storyboard([Cue(0.1, "a"), Cue(0.3, "b")], timing=NEAREST)
    assert abs(0.3 - 0.2) < abs(0.1 - 0.2)
    assert board.cue_for(_section(1, 3, 10), 10) == 0


def test_every_section_gets_one_prompt_in_time_order():
    schedule = schedule_sections(60, 16, 5)
    board = Storyboard.parse("0:00 a\n0:20 b\n0:40 c\n1:00 d", timing=NEAREST)
    chosen = [p.cue for p in board.assign(schedule)]
    assert len(chosen) == len(schedule.sections)
    assert chosen == sorted(chosen) and set(chosen) == {0, 1, 2, 3}
    for p in board.assign(schedule):
        gaps = [abs(c.t - p.section.mid_s) for c in board.cues]
        assert gaps[p.cue] == pytest.approx(min(gaps))


# -- the section schedule -----------------------------------------------------------------------


def test_schedule_that_divides_evenly():
    s = schedule_sections(seconds=2.125, fps=8, section_frames=3)  # 17 frames = 1 + 4 * 4 -> 5 latent frames
    assert (s.frames, s.latent_frames, s.trim) == (17, 5, 0)
    assert [(x.latent_start, x.latent_frames) for x in s.sections] == [(0, 3), (3, 2)]
    assert [(x.pixel_start, x.pixel_end) for x in s.sections] == [(0, 9), (9, 17)]  # 1 + 4*2, then 4*2


def test_schedule_with_remainder_shortens_the_last_section_and_trims_frames():
    s = schedule_sections(seconds=60, fps=24, section_frames=21)
    assert s.frames == 1440 and s.latent_frames == 361 and s.decoded_frames == 1441 and s.trim == 1
    assert [x.latent_frames for x in s.sections] == [21] * 17 + [4]
    assert s.sections[-1].pixel_end == 1440 and s.duration == 60.0


@settings(max_examples=80, deadline=None)
@given(st.floats(0.05, 90), st.sampled_from([8, 12, 15, 16, 23.976, 24, 25, 30]), st.integers(1, 33))
def test_schedule_covers_every_frame_once(seconds, fps, section_frames):
    try:
        s = schedule_sections(seconds, fps, section_frames)
    except ValueError:
        assert seconds * fps < 0.5
        return
    assert s.sections[0].pixel_start == 0 and s.sections[-1].pixel_end == s.frames
    for a, b in zip(s.sections, s.sections[1:]):
        assert a.pixel_end == b.pixel_start and a.latent_end == b.latent_start
    assert sum(x.latent_frames for x in s.sections) == s.latent_frames
    assert all(0 < x.latent_frames <= section_frames and x.pixel_frames > 0 for x in s.sections)
    assert all(x.latent_frames == section_frames for x in s.sections[:-1])
    assert 0 <= s.trim < 4 and abs(s.duration - seconds) <= 0.5 / fps + 1e-9
    bounds = s.boundaries()
    assert bounds == sorted(bounds) and len(bounds) == len(s.sections) + 1 and bounds[-1] == s.duration


def test_boundaries_in_seconds():
    s = schedule_sections(seconds=2.0, fps=8, section_frames=2)  # 16 frames, 5 latent frames
    assert s.boundaries() == [0.0, 5 / 8, 13 / 8, 2.0]


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"seconds": 0, "fps": 24, "section_frames": 4}, "total seconds"),
        ({"seconds": -3, "fps": 24, "section_frames": 4}, "total seconds"),
        ({"seconds": float("nan"), "fps": 24, "section_frames": 4}, "total seconds"),
        ({"seconds": 5, "fps": 0, "section_frames": 4}, "fps"),
        ({"seconds": 5, "fps": -1, "section_frames": 4}, "fps"),
        ({"seconds": 5, "fps": 24, "section_frames": 0}, "section length"),
        ({"seconds": 5, "fps": 24, "section_frames": 2.5}, "section length"),
        ({"seconds": 0.01, "fps": 24, "section_frames": 4}, "less than one"),
    ],
)
def test_schedule_rejects_inputs_that_cannot_make_a_frame(kwargs, words):
    with pytest.raises(ValueError, match=words):
        schedule_sections(**kwargs)


# -- bad storyboards: one sentence each ----------------------------------------------------------


@pytest.mark.parametrize(
    "text, words",
    [
        ("", "storyboard is empty"),
        ("\n# only a comment\n\n", "storyboard is empty"),
        ("[]", "storyboard is empty"),
        ("0:05 a\n0:03 b", "line 2 at 0:03 comes before line 1 at 0:05; sort"),
        ("0:03 a\n0:03 b", "line 2 repeats the time 0:03 of line 1"),
        ("0:00 a\n-0:02 b", "line 2 has the negative time -0:02"),
        ('[{"t": -1, "prompt": "a"}]', "entry 1 has the negative time"),
        ("0:00 a\n0:04", "line 2 at 0:04 has no prompt text"),
        ('[{"t": 0, "prompt": "  "}]', "entry 1 at 0:00 has no prompt text"),
        ("0:00 a\nshe looks up", r"line 2 \('she looks up'\) does not start with a time"),
        ("0:00 a\n0:7 b", "line 2: time '0:7'"),
        ("0:00 a\n1:75 b", "line 2: time '1:75'"),
        ('[{"t": 0, "prompt": "a"},]', "looks like JSON but line 1 column"),
        ('[{"t": 0, "text": "a"}]', "entry 1 is"),
        ('[{"t": true, "prompt": "a"}]', "entry 1 has t = true"),
        ('[{"t": 0, "prompt": 5}]', "entry 1 has a prompt that is not text"),
        ('{"prompts": 3}', "JSON object must be"),
        ('{"global": 3, "prompts": []}', '"global" must be text'),
        ('{"t": 0, "prompt": "a"}', "JSON object must be"),
    ],
)
def test_each_bad_storyboard_names_the_problem(text, words):
    with pytest.raises(ValueError, match=words):
        Storyboard.parse(text)
    assert any(re.search(words, p) for p in storyboard_problems(text))


def test_storyboard_that_is_not_text():
    with pytest.raises(ValueError, match="storyboard must be text, got int"):
        Storyboard.parse(3)


def test_timestamps_past_the_end_are_rejected_with_the_video_length():
    assert storyboard_problems("0:00 a\n1:05 b", seconds=60) == [
        "storyboard line 2 at 1:05 is past the end of the 1:00 video; lengthen the video or move the prompt earlier."
    ]
    assert storyboard_problems("0:00 a\n1:00 b", seconds=60) == []
    board = Storyboard.parse("0:00 a\n1:05 b")
    with pytest.raises(ValueError, match="entry 2 at 1:05 is past the end"):
        board.assign(schedule_sections(60, 16, 4))


def test_problems_lists_every_problem_in_line_order():
    problems = storyboard_problems("0:05 a\n0:03 b\nnope\n0:09", seconds=8)
    assert len(problems) == 4
    assert [p.split()[2] for p in problems] == ["2", "3", "4", "4"]


def test_parse_error_counts_the_remaining_problems():
    with pytest.raises(ValueError, match=r"\(1 more problem"):
        Storyboard.parse("0:05 a\n0:03 b\nnope")


def test_valid_storyboard_has_no_problems():
    assert storyboard_problems(TEXT, seconds=63) == []


def test_constructing_from_cues_validates_them():
    with pytest.raises(ValueError, match="storyboard is empty"):
        Storyboard([])
    with pytest.raises(ValueError, match="entry 2 repeats the time"):
        Storyboard([Cue(1, "a"), Cue(1, "b")])
