"""FramePack context size and packing time, printed as a text table.

Part 1 counts context tokens (no tensors) for every schedule of the paper's ablation table at
832x480 (latent 104x60, 2x2 patch: 1560 cells per latent frame) after 1 s, 10 s, 60 s and 10 min
of 24 fps history through a 4x temporal VAE. Part 2 times one section's packing on this machine
for growing history lengths with a small DiT width, to show the cost stops growing once the
schedule is full (delete tail) or grows only with the cheap tail work (append / compress).

    .cache/hosts/0.3.75/venv/bin/python bench/packing_bench.py > bench/results/packing_cpu.txt
"""

from __future__ import annotations

import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from histenc.context import SectionGrid  # noqa: E402
from histenc.framepack.packing import FramePackContext  # noqa: E402
from histenc.framepack.schedule import PAPER_SCHEDULES, parse_schedule  # noqa: E402
from histenc import units  # noqa: E402
from tests.helpers import ToyDiT  # noqa: E402

FPS, VAE_T = 24, 4
DURATIONS = (("1 s", 1), ("10 s", 10), ("60 s", 60), ("10 min", 600))
HEIGHT, WIDTH = 60, 104


def latent_frames(seconds: float) -> int:
    return units.latent_frames(seconds, FPS, VAE_T)


def token_table() -> None:
    cells = (HEIGHT // 2) * (WIDTH // 2)
    header = ["schedule"] + [f"{name} ({latent_frames(s)} lf)" for name, s in DURATIONS]
    print(" | ".join(f"{h:>34}" if i == 0 else f"{h:>16}" for i, h in enumerate(header)))
    raw = ["no packing (all frames, k1)"] + [str(latent_frames(s) * cells) for _, s in DURATIONS]
    print(" | ".join(f"{v:>34}" if i == 0 else f"{v:>16}" for i, v in enumerate(raw)))
    for name in PAPER_SCHEDULES:
        schedule = parse_schedule(name)
        grid = schedule.section_grid(HEIGHT, WIDTH)
        row = [name] + [str(schedule.context_length(grid, latent_frames(s))) for _, s in DURATIONS]
        print(" | ".join(f"{v:>34}" if i == 0 else f"{v:>16}" for i, v in enumerate(row)))


def time_table(width: int = 128, repeats: int = 3) -> None:
    dit = ToyDiT(width=width, in_channels=16)
    grid = SectionGrid(9, HEIGHT, WIDTH)
    lengths = (6, 60, 360, 1200, 2400)
    history = torch.randn(1, 16, max(lengths), HEIGHT, WIDTH, dtype=torch.float16)
    names = ("td_f16k4f2k2f1k1_g9", "tc_f16k4f2k2f1k1_g9", "ta_f16k4f2k2f1k1_g9", "td_f512k16f64k8f8k2f1k1_g9")
    print(f"{'schedule':>30} | " + " | ".join(f"{n:>5} lf: tokens, ms" for n in lengths))
    for name in names:
        pack = FramePackContext.from_dit(dit, name)
        cells = []
        for n in lengths:
            part = history[:, :, -n:]
            times = []
            with torch.no_grad():
                for _ in range(repeats):
                    start = time.perf_counter()
                    ctx = pack.context(part, grid, dit)
                    times.append((time.perf_counter() - start) * 1000)
            cells.append(f"{ctx.count:>6}, {statistics.median(times):7.1f}")
        print(f"{name:>30} | " + " | ".join(f"{c:>19}" for c in cells))
    print("\n# td schedules stop growing once full (f16k4f2k2f1k1: 19 lf, f512k16...: 585 lf); tc reads every")
    print("# tail frame once (linear, no new tokens), ta adds one token per tail frame.")


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    print(
        f"# FramePack packing benchmark ({platform.machine()} CPU, 2 cores shared, no GPU; torch "
        f"{torch.__version__}, 1 thread)"
    )
    print(
        f"# latent {WIDTH}x{HEIGHT} (832x480), 2x2 patch, {FPS} fps, {VAE_T}x VAE time compression; lf = latent frames"
    )
    print("\n## Context tokens per schedule (section tokens excluded; anchors after the section present)\n")
    token_table()
    print("\n## Packing time per section (DiT width 128, 16 latent channels, float16 history, median of 3)\n")
    time_table()


if __name__ == "__main__":
    main()
