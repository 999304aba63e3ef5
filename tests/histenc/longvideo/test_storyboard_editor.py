"""What the timeline editor is told: the server's reading of a storyboard (describe_storyboard, the route's body)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from histenc.longvideo.storyboard import NEAREST, Storyboard, format_time, schedule_sections, storyboard_problems
from histenc.longvideo.storyboard_editor import describe_storyboard, storyboard_request

TEXT = """# kitchen scene
0:00 a woman knits by the window

0:04.5 - she looks up
12.5s | a cat jumps on the sill
1:02.5: the sun sets
"""


# -- what the timeline editor is told (describe_storyboard / storyboard_request) ---------------------

EDITOR_CASES = [
    ("0:00 a woman knits\n0:04.5 she looks up", None),
    ("0:00 a\n0:04.5 b\n1:02.5 c", 60),
    ("0:00 a\n0:00 b", None),
    ("0:10 a\n0:05 b", None),
    ("0:00 a\n0:05 -  ", None),
    ("# comment\n\n0:00 a\r\n12.5s b\n0:20 | c\n0:30, d", None),
    ("she looks up\n0:05 b", None),
    ("0:00 a\n0:75 b\n1:5 c", None),
    ("-0:03 a\n0:02 b", None),
    ("", None),
    ("   \n# only a comment", None),
    ('[{"t": 0, "prompt": "a"}, {"t": 4.5, "prompt": "b"}]', 2),
    ('[{"t": 0}, {"t": true, "prompt": "x"}, {"t": 1, "prompt": 5}, 7, {"t": 1, "prompt": "y"}]', None),
    ('{"global": "film grain", "prompts": [{"t": 3, "prompt": "a"}, {"t": 1, "prompt": "b"}]}', None),
    ('{"global": 5, "prompts": []}', None),
    ('[{"t": 0, "prompt": "a"},\n {"t": 1 "prompt": "b"}]', None),
    ("[]", None),
]


@pytest.mark.parametrize("text, seconds", EDITOR_CASES)
def test_the_editor_is_told_the_problems_the_queue_would_meet(text, seconds):
    got = describe_storyboard(text, seconds)
    assert got["problems"] == storyboard_problems(text, seconds)
    assert json.loads(json.dumps(got)) == got  # the route sends it as it is
    for cue in got["cues"]:  # each cue carries the sentences about its own line or entry, in order
        assert cue["problems"] == [p for p in got["problems"] if p.startswith(f"storyboard {cue['where']}")]
        assert cue["time"] == format_time(cue["t"])
    assert got["form"] == ("json" if text.strip()[:1] in "[{" and text.strip() else "text")


def test_cues_name_the_line_or_entry_they_come_from():
    got = describe_storyboard("# scene\r\n0:00 a lighthouse\n\n12.5s - a storm  \n")
    assert [(c["t"], c["prompt"], c["slot"], c["where"]) for c in got["cues"]] == [
        (0.0, "a lighthouse", 1, "line 2"),
        (12.5, "a storm", 3, "line 4"),
    ]
    assert got["lines"] == ["# scene", "0:00 a lighthouse", "", "12.5s - a storm  ", ""]
    assert got["breaks"] == ["\r\n", "\n", "\n", "\n"]
    board = describe_storyboard('{"global": "film", "prompts": [7, {"t": "0:02", "prompt": "b"}]}')
    assert board["editable"] and board["global_prompt"] == "film" and "lines" not in board
    assert [(c["slot"], c["where"]) for c in board["cues"]] == [(1, "entry 2")]
    assert not describe_storyboard('{"global": 5, "prompts": []}')["editable"]
    assert not describe_storyboard("[1,")["editable"]
    assert describe_storyboard("[]")["editable"]


@settings(max_examples=80, deadline=None)
@given(
    st.lists(
        st.sampled_from(["0:00 a", "", "# c", "x", "\r\n", "\n", "\r", "\x0b", "\u2028", "\x85", " "]), max_size=12
    ).map("".join)
)
def test_lines_and_breaks_give_the_text_back_with_python_line_numbers(text):
    got = describe_storyboard(text)
    lines, breaks = got["lines"], got["breaks"]
    assert len(lines) == len(breaks) + 1
    assert "".join(line + brk for line, brk in zip(lines, breaks + [""])) == text
    assert lines[: len(text.splitlines())] == text.splitlines()
    for cue in got["cues"]:
        assert lines[cue["slot"]].strip().startswith("0:00")


def test_exports_are_the_storyboards_own_forms_and_only_of_a_valid_one():
    text = '{"global": "film", "prompts": [{"t": "0:00", "prompt": "a"}, {"t": 4.5, "prompt": "b"}]}'
    got = describe_storyboard(text, seconds=2)  # past the end of this video, still a storyboard to export
    assert got["problems"] and got["exports"] == {
        "json": Storyboard.parse(text).to_json(),
        "text": Storyboard.parse(text).to_text(),
    }
    assert describe_storyboard("0:00 a\n0:00 b")["exports"] is None


def test_sections_are_the_schedule_and_get_their_cue_once_valid():
    text = "0:00 a\n0:01.5 b"
    got = describe_storyboard(text, 2, 16, 4)
    schedule = schedule_sections(2, 16, 4)
    assert got["schedule"]["boundaries"] == schedule.boundaries()
    assert (got["schedule"]["frames"], got["schedule"]["latent_frames"]) == (32, 9)
    assert [s["cue"] for s in got["schedule"]["sections"]] == [p.cue for p in Storyboard.parse(text).assign(schedule)]
    assert [s["cue"] for s in got["schedule"]["sections"]] == [0, 0, 1]  # 0:01.5 is in force at 0:01.8125's middle
    assert [(s["start"], s["end"]) for s in got["schedule"]["sections"]][1] == ("0:00.8125", "0:01.8125")
    assert got["end_time"] == "0:02"
    invalid = describe_storyboard("0:00 a\n0:00 b", 2, 16, 4)
    assert [s["cue"] for s in invalid["schedule"]["sections"]] == [None, None, None]
    assert describe_storyboard(text, 2, 16)["schedule"] is None  # a setting unknown: no cut


def test_the_answer_carries_where_the_rule_switches_prompts():
    text = "0:00 a harbour\n0:20 a storm\n0:20.1 gulls\n0:40 rain"
    got = describe_storyboard(text, 60, 16, 4)["schedule"]
    assert got["timing"] == "in force at the section's middle"
    assert [(w["cue"], w["section"], w["at"], w["t"]) for w in got["switches"]] == [
        (0, 0, "0:00", 0.0),
        (2, 20, "0:19.8125", 20.1),  # 0:20 and 0:20.1 share the boundary nearest them: the later one shows
        (3, 40, "0:39.8125", 40.0),
    ]
    assert got["notes"] == [
        "storyboard line 2 at 0:20 is never sampled: no section takes it under the \"in force at the section's "
        'middle" timing; keep prompts at least one section (1 s) apart and from the end.'
    ]
    nearest = describe_storyboard(text, 60, 16, 4, timing=NEAREST)["schedule"]
    assert nearest["timing"] == NEAREST and [w["at"] for w in nearest["switches"]][1] == "0:09.8125"
    assert describe_storyboard("0:00 a\n0:00 b", 60, 16, 4)["schedule"]["switches"] == []  # not valid: nothing
    sent = storyboard_request({"text": text, "seconds": 60, "fps": 16, "section_frames": 4, "timing": NEAREST})
    assert sent["schedule"] == nearest


@pytest.mark.parametrize(
    "fps, frames, words",
    [
        (0, 4, "fps must be a positive number"),
        (16, 2.5, "section length must be a whole number"),
        (120, 1, "more than 5000 sections"),
    ],
)
def test_settings_that_cannot_be_cut_are_one_sentence(fps, frames, words):
    got = describe_storyboard("0:00 a", 3600, fps, frames)
    assert got["schedule"] is None and words in got["schedule_problem"]
    assert got["problems"] == []


def test_requests_are_checked_field_by_field():
    got = storyboard_request({"text": "0:00 a", "seconds": 2, "fps": 16.0, "section_frames": 4.0, "time": "1:5"})
    assert got["schedule"]["sections"][0]["latent_frames"] == 4  # 4.0 from a browser is 4 latent frames
    assert got["time"] == {
        "text": "1:5",
        "problem": ("time '1:5' has '5' after a colon; write two-digit minutes and seconds below 60, like 1:02.5."),
    }
    assert storyboard_request({"time": " 12.5s "}) == {"time": {"text": " 12.5s ", "seconds": 12.5}}
    assert storyboard_request({"text": "0:00 a", "seconds": None})["end_time"] is None


@pytest.mark.parametrize(
    "body, words",
    [
        ("0:00 a", "must be a JSON object, got str"),
        ({}, 'neither "text" nor "time"'),
        ({"text": "0:00 a", "globl": "x"}, "unknown field(s) ['globl']"),
        ({"text": ["0:00 a"]}, '"text" is ["0:00 a"]; send it as text'),
        ({"text": "0:00 a", "fps": True}, '"fps" is true; send a number'),
        ({"text": "0:00 a", "seconds": float("inf")}, '"seconds" is Infinity; send a number'),
        ({"text": "0:00 a", "timing": "middle"}, '"timing" is "middle"; send one of ["in force at the section'),
        ({"text": "0:00 a", "timing": 1}, '"timing" is 1; send it as text'),
    ],
)
def test_a_malformed_request_is_one_sentence(body, words):
    with pytest.raises(ValueError) as err:
        storyboard_request(body)
    assert words in str(err.value) and str(err.value).count(";") == 1
