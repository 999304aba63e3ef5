"""The editor's validation (web/storyboard_rules.js) says exactly what the backend says.

Each storyboard below goes through both histenc.storyboard.storyboard_problems and the JS mirror
(run with node); the sentences must be identical, so a problem shown in the editor is the one the
queue would refuse with. JSON syntax errors are compared by shape only: the parsers word them differently.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from histenc.longvideo.storyboard import format_time, storyboard_problems

HERE = Path(__file__).resolve().parent
NODE = shutil.which("node")

CASES = [
    ("0:00 a woman knits\n0:04.5 she looks up", None),
    ("0:00 a\n0:04.5 b\n1:02.5 c", 60),                     # past the end
    ("0:00 a\n0:00 b", None),                                # same time
    ("0:10 a\n0:05 b", None),                                # unsorted
    ("0:00 a\n0:05", None),                                  # empty prompt
    ("0:00 a\n0:05 -  ", None),                              # separator only
    ("# comment\n\n0:00 a\r\n12.5s b\n0:20 | c\n0:30, d", None),
    ("she looks up\n0:05 b", None),                          # no time
    ("0:00 a\n0:75 b\n1:5 c", None),                         # bad colon parts
    ("-0:03 a\n0:02 b", None),                               # negative
    ("", None),
    ("   \n# only a comment", None),
    ("0:00 a\n1:00:03.25 b", 3600),
    ('[{"t": 0, "prompt": "a"}, {"t": 4.5, "prompt": "b"}]', 2),
    ('[{"t": "0:04", "prompt": "a"}, {"t": "0:4", "prompt": "b"}]', None),
    ('[{"t": 0, "prompt": "a"}, {"t": 0, "prompt": ""}]', None),
    ('[{"t": 0}, {"t": true, "prompt": "x"}, {"t": 1, "prompt": 5}, 7]', None),
    ('[{"t": null, "prompt": "x"}, {"t": 1, "prompt": "a", "extra": 1}]', None),
    ('{"global": "film grain", "prompts": [{"t": 3, "prompt": "a"}, {"t": 1, "prompt": "b"}]}', None),
    ('{"global": 5, "prompts": []}', None),
    ('{"global": "", "prompts": []}', None),
    ('{"prompts": [], "camera": "x"}', None),
    ('{"story": 1}', None),
    ('"just a string"', None),
    ("[]", None),
]


def run_js(cases):
    proc = subprocess.run([NODE, str(HERE / "parity.mjs")], input=json.dumps(cases), capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


pytestmark = pytest.mark.skipif(NODE is None, reason="node is not installed; the JS rules cannot run here")


def test_problems_match_backend_sentence_for_sentence():
    js = run_js(CASES)
    for (text, seconds), got in zip(CASES, js):
        assert got == storyboard_problems(text, seconds), text


def test_invalid_json_reports_one_sentence_with_its_place():
    text = '[{"t": 0, "prompt": "a"},\n {"t": 1 "prompt": "b"}]'
    (got,) = run_js([(text, None)])
    (want,) = storyboard_problems(text)
    assert len(got) == 1
    assert got[0].startswith("storyboard looks like JSON but line 2 column")
    assert want.startswith("storyboard looks like JSON but line 2 column")
    assert got[0].endswith("fix the JSON or write one '0:00 prompt' line per prompt.")


@pytest.mark.parametrize("seconds", [0, 4, 4.5, 62.5, 3599.75, 60.1, 0.0625, 1.1, 7.3])
def test_times_are_written_like_the_backend(seconds):
    text = f"0:00 a\n{seconds} b"
    (got,) = run_js([(text, 0.01)])  # past the end: the sentence carries both times formatted
    assert got == storyboard_problems(text, 0.01)
    assert any(format_time(seconds) in s for s in got) or seconds == 0
