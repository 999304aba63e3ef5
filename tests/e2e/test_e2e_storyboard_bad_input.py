"""Storyboard bad input through the real server: the table of tests/histenc/longvideo/test_storyboard_bad_input.py
queued with POST /prompt, where ComfyUI runs the Storyboard node's validate_inputs on its event loop.

Each bad storyboard is refused with its one sentence, reported once; each tricky one runs and reads as it should;
and while the largest storyboard the node takes is being validated the server keeps answering GET /system_stats
(how long each waits: bench/storyboard_latency_bench.py).
"""

from __future__ import annotations

import pytest

from bench import storyboard_latency_bench as bench
from bench.storyboard_latency_bench import STORYBOARD_NODE, maximal, workflow
from histenc.longvideo.storyboard import MAX_STORYBOARD_CHARS, Storyboard
from tests.histenc.longvideo.test_storyboard_bad_input import BAD_INPUT, READS_AS


def post_prompt(host, prompt: dict) -> tuple[int, dict]:
    """POST /prompt; (status, JSON answer) whether or not the server accepted it."""
    return bench.post_prompt(host.url, prompt)


@pytest.mark.parametrize("text, sentence", BAD_INPUT, ids=range(len(BAD_INPUT)))
def test_bad_storyboard_is_refused_with_its_sentence_once(host, text, sentence):
    status, answer = post_prompt(host, workflow(text))
    assert status == 400, answer
    errors = answer["node_errors"][STORYBOARD_NODE]["errors"]
    assert [e["type"] for e in errors] == ["custom_validation_failed"]  # once, not once per input of the node
    assert errors[0]["details"] == f"storyboard - {sentence}"


@pytest.mark.parametrize("text, prompts", READS_AS)
def test_tricky_storyboard_runs_and_reads_as_written(host, text, prompts):
    entry = host.run(workflow(text), timeout=120)
    board = Storyboard.parse(text)
    assert [c.prompt for c in board.cues] == prompts
    assert entry["outputs"]["3"]["text"] == [f"EncodedStoryboard({board!r})"]


def test_the_largest_storyboard_keeps_the_server_answering_while_it_is_validated(host):
    """GET /system_stats requests issued while the largest storyboard is validated are answered before the POST
    is (the loop turns between steps of the reading). How long each waited is measured by
    bench/storyboard_latency_bench.py (bench/results/storyboard_latency_cpu_<host>.txt), not asserted here."""
    text = maximal()  # 100,000 characters, a problem on every line: the slowest storyboard to check
    assert len(text) == MAX_STORYBOARD_CHARS
    assert post_prompt(host, workflow(text))[0] == 400  # a first prompt's one-off costs are not the storyboard's
    latencies, _, (status, answer) = bench.latencies_while_posting(host.url, workflow(text))
    assert status == 400 and "repeats the time 0:00" in answer["node_errors"][STORYBOARD_NODE]["errors"][0]["details"]
    assert latencies, "no GET /system_stats was answered while the prompt was being validated"
    too_long = "0:00 a\n" * 100_000  # 700 KB: refused by its size alone
    status, answer = post_prompt(host, workflow(too_long))
    assert status == 400 and "over the 100,000 a storyboard may have" in str(answer)
