"""How long a queued storyboard keeps the server from answering: the Storyboard node's validate_inputs runs on
ComfyUI's event loop, so while the largest storyboard the node takes is checked, every other request waits for
the loop. The goal (issue: a maximal storyboard blocks the server < 50 ms) is checked here, on a real server,
never by a timed test.

Measured, on a real ComfyUI (``main.py --cpu`` on 127.0.0.1) with the pack installed:
* GET /system_stats alone (median of 20), then issued over and over while POST /prompt carries the largest
  storyboard (100,000 characters, a problem on every line: the slowest content found), three times: the worst
  latency of a GET issued while the POST was being answered is the time the loop was held;
* a storyboard over the size limit (700 KB): refused by its size, unread;
* in-process: the longest gap between two turns of an event loop running validate_inputs on that storyboard,
  and the time to read each of the slowest storyboards whole (off the loop, as the editor's route does).

    python3 bench/storyboard_latency_bench.py [--host 0.3.75] [--out bench/results/storyboard_latency_cpu_<host>.txt]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from scripts import host as hostlib  # noqa: E402

BLOCK_LIMIT_S = 0.050  # the goal: the largest storyboard holds the server's loop for less than this
STORYBOARD_NODE = "2"


def maximal(line: str = "0:00 x\n") -> str:
    """A storyboard of exactly the largest size, one line repeated (``0:00 x``: a problem on every line)."""
    from histenc.longvideo.storyboard import MAX_STORYBOARD_CHARS

    return (line * (MAX_STORYBOARD_CHARS // len(line) + 1))[:MAX_STORYBOARD_CHARS]


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


def post_prompt(url: str, prompt: dict) -> tuple[int, dict]:
    """POST /prompt; (status, JSON answer) whether or not the server accepted it."""
    body = json.dumps({"prompt": prompt, "client_id": "histenc-storyboard"}).encode()
    request = urllib.request.Request(url + "/prompt", data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def stats_latency(url: str) -> float:
    start = time.perf_counter()
    with urllib.request.urlopen(url + "/system_stats", timeout=30) as reply:
        reply.read()
    return time.perf_counter() - start


def latencies_while_posting(url: str, prompt: dict) -> tuple[list[float], float, tuple[int, dict]]:
    """GET /system_stats over and over while POST /prompt runs: (latencies of those issued meanwhile, the POST's
    own time, its answer)."""
    result = {}

    def post():
        result["answer"] = post_prompt(url, prompt)
        result["end"] = time.perf_counter()

    poster = threading.Thread(target=post)
    begin = time.perf_counter()
    poster.start()
    latencies = []
    while poster.is_alive():
        issued = time.perf_counter()
        latency = stats_latency(url)
        if "end" not in result or issued < result["end"]:
            latencies.append(latency)
    poster.join()
    return latencies, result["end"] - begin, result["answer"]


def loop_gap(text: str) -> tuple[float, int]:
    """(longest gap between turns of an event loop running validate_inputs on ``text``, turns taken)."""
    from histenc.longvideo.storyboard import storyboard_problem_steps

    async def validate():  # what the node's validate_inputs does: a step of reading, then a turn of the loop
        steps = storyboard_problem_steps(text)
        while True:
            try:
                next(steps)
            except StopIteration as done:
                return done.value
            await asyncio.sleep(0)

    async def beside_a_ticker():
        ticks, task = [time.perf_counter()], asyncio.ensure_future(validate())
        while not task.done():
            await asyncio.sleep(0)
            ticks.append(time.perf_counter())
        return max(b - a for a, b in zip(ticks, ticks[1:])), len(ticks)

    return asyncio.run(beside_a_ticker())


def measure_server(host_name: str) -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        server = hostlib.Server(hostlib.make_base(Path(tmp))).start()
        try:
            url = server.url
            text = maximal()
            assert post_prompt(url, workflow(text))[0] == 400  # a first prompt's one-off costs are not the board's
            baseline = statistics.median(stats_latency(url) for _ in range(20))
            rows = []
            for _ in range(3):
                latencies, took, (status, answer) = latencies_while_posting(url, workflow(text))
                detail = answer["node_errors"][STORYBOARD_NODE]["errors"][0]["details"] if status == 400 else answer
                rows.append((max(latencies) if latencies else float("nan"), len(latencies), took, status, detail))
            too_long = "0:00 a\n" * 100_000
            _, refused_in, (status, answer) = latencies_while_posting(url, workflow(too_long))
        finally:
            server.stop()
    worst = max(r[0] for r in rows)
    verdict = "PASS" if worst < BLOCK_LIMIT_S else "FAIL"
    lines = [
        f"## real server: ComfyUI {host_name}, GET /system_stats alone {baseline * 1000:.1f} ms (median of 20)",
        f"{'round':<6} {'worst GET while validating':>27} {'GETs':>5} {'POST /prompt':>13}  answer",
    ]
    for i, (lat, count, took, status, detail) in enumerate(rows, 1):
        lines.append(f"{i:<6} {lat * 1000:>24.1f} ms {count:>5} {took * 1000:>10.0f} ms  {status}: {str(detail)[:70]}")
    lines += [
        f"700 KB storyboard: answered {status} in {refused_in * 1000:.0f} ms ({str(answer)[:90]})",
        f"verdict: {verdict}: the largest storyboard held the loop at most {worst * 1000:.1f} ms "
        f"(limit {BLOCK_LIMIT_S * 1000:.0f} ms, GET latency included)",
    ]
    return lines


def measure_in_process() -> list[str]:
    from histenc.longvideo.storyboard import storyboard_problems

    gap, turns = loop_gap(maximal())
    lines = ["## in process", f"validate_inputs on the largest storyboard: {turns} loop turns, longest gap "
             f"{gap * 1000:.2f} ms"]  # fmt: skip
    for line in ("0:00 x\n", "1:5 x\n", "x\n"):
        start = time.perf_counter()
        problems = storyboard_problems(maximal(line))
        took = time.perf_counter() - start
        lines.append(f"read whole, {line.strip()!r} x {100_000 // len(line):,}: {took * 1000:.0f} ms, "
                     f"{len(problems)} problem(s)")  # fmt: skip
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="0.3.75", help="the ComfyUI host to start (scripts/host.py names)")
    ap.add_argument("--out", help="default bench/results/storyboard_latency_cpu_<host>.txt")
    args = ap.parse_args(argv)
    args.out = args.out or str(REPO / "bench" / "results" / f"storyboard_latency_cpu_{args.host}.txt")
    os.environ["HISTENC_HOST"] = args.host
    hostlib.reexec_in_venv()
    head = [
        "# How long the largest storyboard holds ComfyUI's event loop while POST /prompt validates it",
        f"# command: python3 bench/storyboard_latency_bench.py --host {args.host}",
        f"# machine: {platform.machine()}, {os.cpu_count()} cores (shared), python {platform.python_version()}, "
        f"load average {os.getloadavg()[0]:.2f}",
        "",
    ]
    lines = head + measure_server(args.host) + [""] + measure_in_process()
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
