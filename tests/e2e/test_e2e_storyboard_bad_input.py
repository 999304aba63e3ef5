"""Storyboard bad input through the real server: the table of tests/histenc/longvideo/test_storyboard_bad_input.py
queued with POST /prompt, where ComfyUI runs the Storyboard node's validate_inputs on its event loop.

Each bad storyboard is refused with its one sentence, reported once; each tricky one runs and reads as it should;
and while the largest storyboard the node takes is being validated the server keeps answering (a GET
/system_stats issued meanwhile is timed).
"""

from __future__ import annotations

import json
import statistics
import threading
import time
import urllib.error
import urllib.request

import pytest

from histenc.longvideo.storyboard import MAX_STORYBOARD_CHARS, Storyboard
from tests.histenc.longvideo.test_storyboard_bad_input import BAD_INPUT, READS_AS, maximal

STORYBOARD_NODE = "2"
BLOCK_LIMIT_S = 0.050


def workflow(text: str) -> dict:
    """Storyboard -> Preview Any (which shows the parsed storyboard), with the test text encoder."""
    return {
        "1": {"class_type": "HistEncTestTextEncoder", "inputs": {}},
        STORYBOARD_NODE: {
            "class_type": "HistEncStoryboard",
            "inputs": {"clip": ["1", 0], "storyboard": text, "global_prompt": ""},
        },
        "3": {"class_type": "PreviewAny", "inputs": {"source": [STORYBOARD_NODE, 0]}},
    }


def post_prompt(host, prompt: dict) -> tuple[int, dict]:
    """POST /prompt; (status, JSON answer) whether or not the server accepted it."""
    body = json.dumps({"prompt": prompt, "client_id": "histenc-bad-input"}).encode()
    request = urllib.request.Request(host.url + "/prompt", data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


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


def stats_latency(host) -> float:
    start = time.perf_counter()
    with urllib.request.urlopen(host.url + "/system_stats", timeout=30) as reply:
        reply.read()
    return time.perf_counter() - start


def latencies_while_posting(host, prompt: dict) -> tuple[list[float], float, tuple[int, dict]]:
    """GET /system_stats over and over while POST /prompt runs: the latencies of those issued meanwhile."""
    result = {}

    def post():
        result["answer"] = post_prompt(host, prompt)
        result["end"] = time.perf_counter()

    poster = threading.Thread(target=post)
    begin = time.perf_counter()
    poster.start()
    latencies = []
    while poster.is_alive():
        issued = time.perf_counter()
        latency = stats_latency(host)
        if "end" not in result or issued < result["end"]:
            latencies.append(latency)
    poster.join()
    return latencies, result["end"] - begin, result["answer"]


def test_the_largest_storyboard_keeps_the_server_answering_while_it_is_validated(host, record_property):
    baseline = statistics.median(stats_latency(host) for _ in range(20))
    text = maximal()  # 100,000 characters, a problem on every line: the slowest storyboard to check
    assert len(text) == MAX_STORYBOARD_CHARS
    assert post_prompt(host, workflow(text))[0] == 400  # a first prompt's one-off costs are not the storyboard's
    worst, posts = 0.0, []
    for _ in range(3):
        latencies, took, (status, answer) = latencies_while_posting(host, workflow(text))
        assert (
            status == 400 and "repeats the time 0:00" in answer["node_errors"][STORYBOARD_NODE]["errors"][0]["details"]
        )
        assert latencies, "no GET /system_stats was issued while the prompt was being validated"
        worst, posts = max(worst, max(latencies)), posts + [took]
    too_long = "0:00 a\n" * 100_000  # 700 KB: refused by its size alone
    latencies, took, (status, answer) = latencies_while_posting(host, workflow(too_long))
    assert status == 400 and "over the 100,000 a storyboard may have" in str(answer)
    record_property("system_stats_baseline_ms", round(baseline * 1000, 1))
    record_property("system_stats_worst_while_validating_ms", round(worst * 1000, 1))
    record_property("post_prompt_ms", [round(p * 1000, 1) for p in posts])
    print(
        f"GET /system_stats: {baseline * 1000:.1f} ms alone, at most {worst * 1000:.1f} ms while a "
        f"{len(text):,}-character storyboard was validated (POST /prompt took "
        f"{', '.join(f'{p * 1000:.0f}' for p in posts)} ms); 700 KB refused in {took * 1000:.0f} ms"
    )
    assert worst < BLOCK_LIMIT_S
