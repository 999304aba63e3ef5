"""One chunk of a staged benchmark: work until a deadline of at most ten minutes (the CPU machine's limit on one
command), record what was done in the work folder, and let the next call continue. Shared by
bench/encoder_rank.py and bench/long_memory.py, whose ``Bench`` objects run their stages up to a deadline."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Callable

import torch

from .stages import GateFailed

MAX_MINUTES = 10.0


def add_arguments(ap: argparse.ArgumentParser, settings: dict, work_help: str, out: str) -> None:
    """The options every chunked benchmark takes: --setting, --minutes, --work, --out."""
    ap.add_argument("--setting", choices=sorted(settings), default="full")
    ap.add_argument("--minutes", type=float, default=9.0, help=f"work for this long, at most {MAX_MINUTES:g}")
    ap.add_argument("--work", help=work_help)
    ap.add_argument("--out", default=out, help="the report, rewritten every chunk")


def run(make_bench: Callable[[], object], work: Path, minutes: float) -> tuple[object, dict]:
    """(the bench, its progress) after one chunk; a failed gate ends the benchmark and is named in the progress."""
    if not 0 < minutes <= MAX_MINUTES:
        raise SystemExit(f"--minutes is {minutes}; use more than 0 and at most {MAX_MINUTES:g}.")
    torch.set_num_threads(1)  # the CPU is shared: one thread is faster than two fighting
    start = time.monotonic()
    bench = make_bench()
    gate = None
    try:
        finished = bench.run(start + minutes * 60)
    except GateFailed as err:
        finished, gate = True, str(err)
    return bench, record_progress(work, time.monotonic() - start, finished, gate)


def record_progress(work: Path, seconds: float, finished: bool, gate: str | None) -> dict:
    """Chunks and compute seconds so far, summed over calls, in ``work/progress.json``."""
    path = Path(work) / "progress.json"
    p = json.loads(path.read_text()) if path.is_file() else {"chunks": 0, "seconds": 0.0}
    p = {"chunks": p["chunks"] + 1, "seconds": p["seconds"] + seconds, "finished": finished, "gate_failed": gate}
    path.write_text(json.dumps(p))
    return p


def report_header(title: str, command: str, cfg, progress: dict) -> list[str]:
    """The first lines of a chunked benchmark's report: what, how to continue, where, which setting, how far."""
    import json
    import platform

    lines = [
        title,
        "command (repeat until finished): " + command,
        f"machine: {platform.platform()}, {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        "1 thread, shared CPU",
        f"setting {cfg.name!r}: " + json.dumps(cfg.to_json()),
        f"compute so far: {progress['seconds']:.0f} s in {progress['chunks']} chunks; "
        + ("finished" if progress["finished"] else "NOT FINISHED (run the command again to continue)"),
    ]
    if cfg.name != "full":
        lines.append("THIS SETTING ONLY PROVES THE MACHINERY; ITS NUMBERS RANK NOTHING.")
    return lines


def write_report(out: str, text: str) -> None:
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(text)
    print(text)
