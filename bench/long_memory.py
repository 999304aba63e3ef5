"""Does a returning object come back right? Every context mode generating long toy videos, scored (issue 21).

On procedural long-memory videos (objects leave and come back, bench/long_memory_parts/setup.py) a tiny
Wan DiT is trained, then per mode (sliding window, history encoder, FramePack, clip KV cache) a LoRA and
the mode's own weights learn next-section prediction from the true history. Each mode then generates the
held-out videos section by section from its own frames, after a true start image, and is scored on the
regions of objects that come back (PSNR / SSIM against the truth), on whole frames, and on drift by
FramePack's 15 % rule; a no-context floor and teacher-forced (true history) scores frame the numbers.

Gates, asserted before any comparison (a failed gate is recorded, reported, and stops the benchmark):
* G1: the base DiT, trained to a validation plateau, gives with no context a one-step x0 within 0.5 dB of
  the mean-frame floor on the held-out videos;
* G2: with the true history the sliding window's one-step x0 beats no context by >= 3 dB (context reaches
  the DiT and the LoRA uses it).
The verdict follows the rule in bench/long_memory_parts/verdict.py, fixed before any run.

It runs in chunks: each call works until ``--minutes`` have passed (at most 10), stores everything
in the work folder and rewrites the report and plots, so repeated calls finish the benchmark:

    nice -n 10 .cache/hosts/0.3.75/venv/bin/python bench/long_memory.py --minutes 9
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.context_proof import chunks  # noqa: E402
from bench.long_memory_parts import report, stages  # noqa: E402
from bench.long_memory_parts.setup import SETTINGS  # noqa: E402

COMMAND = (
    "nice -n 10 .cache/hosts/0.3.75/venv/bin/python bench/long_memory.py --setting {setting} --minutes 9 --out {out}"
)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    work_help = (
        "where runs are kept between chunks (default bench/results/long_memory/<setting>: finished stages are small "
        "JSON files, the base DiT and the seed-0 weights of every mode, kept in the repository so a later session "
        "resumes; unfinished training lives in its ckpt/ and runs/ folders, which are not)"
    )
    chunks.add_arguments(ap, SETTINGS, work_help, "bench/results/long_memory_cpu.txt")
    ap.add_argument("--plots", help="folder for the PNG plots (default: the work folder's parent)")
    args = ap.parse_args(argv)
    cfg = SETTINGS[args.setting]
    work = Path(args.work or REPO / "bench" / "results" / "long_memory" / cfg.name)
    bench, progress = chunks.run(lambda: stages.Bench(cfg, work), work, args.minutes)
    written = report.plots(bench, Path(args.plots) if args.plots else work.parent)
    text = report.text(bench, progress, COMMAND.format(setting=cfg.name, out=args.out), written)
    chunks.write_report(args.out, text)
    return 3 if progress["gate_failed"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
