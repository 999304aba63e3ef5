"""Per-section wall time and peak RSS of a 60-second storyboard run on CPU with the tiny Wan fixture.

    .cache/hosts/0.3.75/venv/bin/python bench/long_video_bench.py [--modes window,encoder] \
        [--out bench/results/long_video_cpu.txt]

With a bounded context mode the time and memory per section should stay flat as the video grows;
the "full history" row (a window as long as the video) shows what an unbounded context costs.
The tiny model is untrained: this measures the pipeline, not image quality.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def rss_mb() -> float:
    """Current resident set size in MiB (Linux /proc), and the peak so far from getrusage."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def load_pack():
    import importlib.util

    from scripts.host import import_comfy

    import_comfy()
    spec = importlib.util.spec_from_file_location(
        "comfyui_histenc", REPO / "__init__.py", submodule_search_locations=[str(REPO)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules["comfyui_histenc"] = module
    spec.loader.exec_module(module)
    spec = importlib.util.spec_from_file_location("histenc_test_nodes", REPO / "tests" / "host_nodes" / "__init__.py")
    stubs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stubs)
    return stubs


def tiny_wan_model():
    """The tiny Wan 2.1 T2V fixture through the stock loader, on one torch thread (the CPU is shared)."""
    import comfy.sd
    import torch
    from scripts.fixtures import write_fixtures

    torch.set_num_threads(1)
    models = Path(tempfile.mkdtemp()) / "models"
    write_fixtures(models)
    return comfy.sd.load_diffusion_model(str(models / "diffusion_models" / "histenc_tiny_wan21_t2v.safetensors"))


def run(mode: str, model, stubs, seconds: float, fps: float, section_frames: int, size: int):
    import comfy.sample
    import torch
    from comfyui_histenc.histenc_nodes.history_encoder import HistoryEncoderContext, InitHistoryEncoder
    from comfyui_histenc.histenc_nodes.long_video import LongVideoSampler
    from comfyui_histenc.histenc_nodes.storyboard import EncodedStoryboard
    from histenc.longvideo.storyboard import Storyboard
    from histenc.window import SlidingWindow

    if mode == "window":
        context = [SlidingWindow(2)]
    elif mode == "encoder":
        context = HistoryEncoderContext.execute(InitHistoryEncoder.execute(model, "4x4x2", "full", 0).args[0], 1).args[
            0
        ]
    elif mode == "full history":
        context = [SlidingWindow(10_000)]
    else:
        raise ValueError(f"unknown mode {mode!r}")
    third = seconds / 3  # three prompts at thirds of the video (0:00, 0:20, 0:40 for the default minute)
    text = f"0 a lighthouse\n{third:g} a storm\n{2 * third:g} gulls return"
    board = EncodedStoryboard(Storyboard.parse(text), stubs.FakeClip())
    negative = [[stubs.embed_text("low quality"), {}]]
    times, rss = [], []
    real = comfy.sample.sample

    def timed(*args, **kwargs):
        start = time.perf_counter()
        out = real(*args, **kwargs)
        times.append(time.perf_counter() - start)
        rss.append(rss_mb())
        return out

    comfy.sample.sample = timed
    try:
        with torch.inference_mode():
            LongVideoSampler.execute(
                model,
                board,
                negative,
                seconds,
                fps,
                section_frames,
                size,
                size,
                0,
                2,
                1.0,
                "euler",
                "simple",
                1,
                "",
                context=context,
            )
    finally:
        comfy.sample.sample = real
    return times, rss


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--modes", default="window,encoder,full history")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "long_video_cpu.txt"))
    args = parser.parse_args()
    stubs = load_pack()
    model = tiny_wan_model()
    fps, section_frames, size = 16.0, 8, 64
    lines = [
        "# Long-video sampler on CPU: per-section wall time and RSS, tiny Wan 2.1 fixture (dim 128, 2 blocks)",
        f"# {args.seconds:g} s at {fps:g} fps, {section_frames} latent frames per section, {size}x{size}, 2 steps, "
        "cfg 1, "
        "euler; 1 torch thread",
        f"# machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average at start "
        f"{os.getloadavg()[0]:.1f}; command: .cache/hosts/0.3.75/venv/bin/python bench/long_video_bench.py",
        "",
        f"{'mode':<14} {'sections':>8} {'first 5 s/sec':>13} {'last 5 s/sec':>12} {'ratio':>6} "
        f"{'RSS first MiB':>13} {'RSS last MiB':>12} {'peak RSS MiB':>12}",
    ]
    for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
        times, rss = run(mode, model, stubs, args.seconds, fps, section_frames, size)
        first, last = sum(times[1:6]) / 5, sum(times[-5:]) / 5
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        lines.append(
            f"{mode:<14} {len(times):>8} {first:>13.3f} {last:>12.3f} {last / first:>6.2f} "
            f"{rss[1]:>13.0f} {rss[-1]:>12.0f} {peak:>12.0f}"
        )
        lines.append("  per-section s: " + " ".join(f"{t:.2f}" for t in times))
        print(lines[-2], flush=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
