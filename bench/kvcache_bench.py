"""Clip KV cache over 60 tiny sections on CPU: per-section time, held K/V bytes and RSS stay flat with K = 5.

    .cache/hosts/0.3.75/venv/bin/python bench/kvcache_bench.py [--configs "K=5,K=5 all blocks,keep all,off"] [--out ...]

Each section is a full long-video sampler section with the tiny Wan 2.1 fixture: clip selection,
rebuilding evicted K/V, sampling (2 steps) and the record pass. The storyboard cycles through four
prompts so selection, eviction and recomputation all happen. "keep all" (K = 60) shows what an
unbounded cache costs; "off" is the sampler without the cache. The tiny model is untrained: this
measures cost, not image quality.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.long_video_bench import load_pack, rss_mb, tiny_wan_model  # noqa: E402

CONFIGS = {"K=5": (5, "latter half"), "K=5 all blocks": (5, "all"), "keep all": (60, "latter half"), "off": None}
STORYBOARD = "\n".join(
    f"0:{s:02d} {p}"
    for s, p in zip(
        range(0, 30, 3), ["a lighthouse at dawn", "a storm rolls in", "gulls over the sea", "a ship passes"] * 4
    )
)


def run(config, model, stubs, seconds: float, fps: float, section_frames: int, size: int) -> dict:
    import torch
    from comfyui_histenc.histenc_nodes.kvcache import ClipKVCacheSource
    from comfyui_histenc.histenc_nodes.long_video import LongVideoSampler, SectionSampler
    from comfyui_histenc.histenc_nodes.storyboard import EncodedStoryboard
    from histenc.longvideo.storyboard import Storyboard

    source = None if config is None else ClipKVCacheSource(max_clips=config[0], blocks=config[1])
    board = EncodedStoryboard(Storyboard.parse(STORYBOARD), stubs.FakeClip())
    negative = [[stubs.embed_text("low quality"), {}]]
    rows = {"time": [], "held": [], "rss": []}
    real = SectionSampler.__call__

    def timed(self, *args, **kwargs):
        start = time.perf_counter()
        out = real(self, *args, **kwargs)
        rows["time"].append(time.perf_counter() - start)
        rows["held"].append(0 if source is None else source.cache.held_bytes())
        rows["rss"].append(rss_mb())
        return out

    SectionSampler.__call__ = timed
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
                context=[source] if source else None,
            )
    finally:
        SectionSampler.__call__ = real
    rows["stats"] = None if source is None else source.cache.stats
    return rows


def mean(xs):
    return sum(xs) / len(xs)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "kvcache_cpu.txt"))
    args = parser.parse_args()
    stubs = load_pack()
    from histenc.longvideo.storyboard import schedule_sections

    model = tiny_wan_model()
    fps, section_frames, size = 16.0, 2, 64
    seconds = (60 * section_frames - 1) * 4 / fps + 1 / fps  # 120 latent frames: 60 sections of 2
    assert len(schedule_sections(seconds, fps, section_frames).sections) == 60
    lines = [
        "# Clip KV cache on CPU: 60 sections, tiny Wan 2.1 fixture (dim 128, 2 blocks), 1 torch thread",
        f"# {section_frames} latent frames per section at {size}x{size} (32 tokens), 2 steps, cfg 1, euler, "
        "continuation 1; storyboard cycles 4 prompts every 3 s",
        "# per section = selection + rebuilding evicted K/V + sampling + record pass (the whole sampler section)",
        f"# machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load average at start "
        f"{os.getloadavg()[0]:.1f}; command: .cache/hosts/0.3.75/venv/bin/python bench/kvcache_bench.py",
        "",
        f"{'config':<15} {'s/sec 6-10':>10} {'s/sec 56-60':>11} {'ratio':>6} {'K/V KiB 6-10':>12} "
        f"{'K/V KiB 56-60':>13} {'peak K/V KiB':>12} {'RSS MiB 6':>9} {'RSS MiB 60':>10} "
        f"{'recomputed':>10} {'evicted':>7}",
    ]
    for name in [c.strip() for c in args.configs.split(",") if c.strip()]:
        rows = run(CONFIGS[name], model, stubs, seconds, fps, section_frames, size)
        t, held, rss, stats = rows["time"], rows["held"], rows["rss"], rows["stats"]
        early, late = mean(t[5:10]), mean(t[-5:])
        lines.append(
            f"{name:<15} {early:>10.3f} {late:>11.3f} {late / early:>6.2f} {mean(held[5:10]) / 1024:>12.1f} "
            f"{mean(held[-5:]) / 1024:>13.1f} {(stats.held_bytes_peak if stats else 0) / 1024:>12.1f} "
            f"{rss[5]:>9.0f} {rss[-1]:>10.0f} {stats.recomputed if stats else 0:>10} {stats.evicted if stats else 0:>7}"
        )
        lines.append("  per-section s:     " + " ".join(f"{x:.2f}" for x in t))
        lines.append("  held K/V KiB:      " + " ".join(f"{h / 1024:.0f}" for h in held))
        print("\n".join(lines[-3:]), flush=True)
    lines.append("")
    lines.append(f"peak RSS of the whole run: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
