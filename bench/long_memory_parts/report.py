"""The benchmark's text report and its plots, rebuilt from the work folder after every chunk.

Plots (PNG): one Drift Report per mode (histenc.analysis.report) of its seed-0 generation of the first
held-out video, generated frames only, with vertical lines where an object comes back; and one strip of
those frames, the truth on top and one row per mode, so a reader sees what came back.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from bench.context_proof import chunks
from histenc.analysis.metrics import frame_metrics
from histenc.analysis.report import report_from_metrics
from histenc.weights import load_weights

from . import score, verdict as rule
from .setup import MODES, NO_CONTEXT, TRAINED, WINDOW, token_count
from .stages import FRAMES_META, G1_TOLERANCE_DB, slug

COLUMNS = (  # (key, header): per-seed means, then mean +- SD over seeds
    ("psnr_returned", "AR region PSNR"),
    ("ssim_returned", "AR region SSIM"),
    ("psnr_frame", "AR frame PSNR"),
    ("psnr_returned_tf", "TF region PSNR"),
    ("psnr_frame_tf", "TF frame PSNR"),
    ("drift_psnr", "drift dPSNR"),
    ("drift_clarity", "drift dclarity"),
    ("drift_colour", "drift dcolour"),
)


def mean_sd(values: list[float]) -> str:
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.3f} +- {sd:.3f}"


def seed_values(runs: dict[int, dict], key: str) -> list[float]:
    return [score.finite_mean(r[key]) for _, r in sorted(runs.items()) if key in r]


def _stops(runs: dict[int, dict]) -> str:
    out = [
        f"{r['status']['step']} ({'plateau' if 'plateau' in r['status']['reason'] else 'max'})"
        for r in runs.values()
        if "status" in r
    ]
    return ", ".join(out) or "untrained"


def _paired(a: dict, b: dict, key: str) -> str:
    d = [y - x for x, y in zip(a[key], b[key]) if math.isfinite(x) and math.isfinite(y)]
    if not d:
        return "-"
    se = statistics.stdev(d) / len(d) ** 0.5 if len(d) > 1 else 0.0
    return f"{statistics.fmean(d):+.3f} +- {se:.3f}"


def text(bench, progress: dict, command: str, plots: list[str]) -> str:
    cfg, data = bench.cfg, bench.data
    title = "Long-memory generation (issue 21 item 3) on CPU: does a returning object come back right?"
    lines = chunks.report_header(title, command, cfg, progress)
    prefixes = [v.prefix for v in data.test]
    lines += [
        "",
        f"held-out videos: {len(data.test)} of {cfg.frames} frames ({cfg.frames / cfg.fps:g} s at {cfg.fps:g} fps, "
        f"{cfg.size}x{cfg.size} pixels, {cfg.objects} objects), one-frame sections, {cfg.sample_steps} Euler steps "
        f"each; start image = the true frames up to the end of the first round ({min(prefixes)}-{max(prefixes)} "
        f"frames); {sum(len(v.returns) for v in data.test)} returning visits scored",
    ]
    if progress.get("gate_failed"):
        lines += ["", f"STOPPED: {progress['gate_failed']}. No mode is compared past a failed gate."]
    g1 = bench.read("g1.json")
    if g1:
        st = g1.get("base_status") or {}
        lines += [
            "",
            f"G1 base DiT without context ({'passed' if g1['passed'] else 'FAILED'}; {st.get('step', '?')} steps, "
            f"{st.get('reason', '?')}; tolerance {G1_TOLERANCE_DB} dB): mean-frame floor {g1['floor_psnr']:.2f} dB, "
            f"one-step x0 {g1['dit_onestep_psnr']:.2f} dB on the generated part of the held-out videos",
        ]
        lines += [f"  {f}" for f in g1["failed"]]
    g2 = bench.read("g2.json")
    if g2:
        lines += [
            "",
            f"G2 true history, seed 0 ({'passed' if g2['passed'] else 'FAILED'}): sliding window one-step x0 "
            f"{g2['window_tf_psnr']:.2f} dB vs no context {g2['floor_tf_psnr']:.2f} dB (needs +{g2['min_gain']} dB)",
        ]
    evals = bench.evals()
    if evals:
        lines += [
            "",
            "Results: mean +- SD over seeds of each seed's mean (regions: over every returning visit of the held-out "
            "videos; frames and drift: over the videos). AR = autoregressive from the model's own frames; TF = "
            "teacher-forced one-step x0 from the true history (the oracle-history control). Drift = FramePack's "
            "|first 15 % - last 15 %| of the generated frames.",
            f"  {'mode':20s} {'tokens':>6s} {'seeds':>5s} "
            + " ".join(f"{h:>16s}" for _, h in COLUMNS)
            + "  steps (stop)",
        ]
        for mode in MODES:
            if mode in evals:
                runs = evals[mode]
                cols = [mean_sd(seed_values(runs, k)) for k, _ in COLUMNS]
                lines.append(
                    f"  {mode:20s} {token_count(cfg, mode):6d} {len(runs):5d} "
                    + " ".join(f"{c:>16s}" for c in cols)
                    + f"  {_stops(runs)}"
                )
        lines += [
            "",
            f"Paired per-visit differences, seed 0, mode - {WINDOW} (mean +- SE over visits), AR / TF region PSNR:",
        ]
        for mode in MODES:
            if mode != WINDOW and 0 in evals.get(mode, {}) and 0 in evals.get(WINDOW, {}):
                a, b = evals[WINDOW][0], evals[mode][0]
                lines.append(
                    f"  {mode:20s} {_paired(a, b, 'psnr_returned'):>18s}   {_paired(a, b, 'psnr_returned_tf'):>18s}"
                )
    state, pairs = rule.verdict(evals, cfg.seeds)
    if progress.get("gate_failed"):
        state, pairs = "STOPPED AT A GATE", ["a gate failed before the modes could be compared"]
    lines += ["", rule.RULE, "", f"VERDICT: {state}"] + [f"  {p}" for p in pairs]
    if plots:
        lines += ["", "Plots (seed 0, first held-out video): " + ", ".join(plots)]
    lines += ["", "Left untested:"] + [f"  - {u}" for u in rule.UNTESTED]
    missing = [m for m in MODES if sorted(evals.get(m, {})) != sorted(cfg.seeds)]
    lines.append(f"  - modes not yet evaluated at every seed: {', '.join(missing) or 'none'}")
    return "\n".join(lines) + "\n"


def _frames(bench, mode: str) -> torch.Tensor | None:
    path = bench.path("frames", f"{slug(mode)}.safetensors")
    if not path.is_file():
        return None
    return load_weights(path, FRAMES_META)[0]["frames"].float() / 255


def plots(bench, folder: Path) -> list[str]:
    """Write the Drift Reports and the frame strip for every mode with stored frames; their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    video, name = bench.data.test[0], bench.cfg.name
    p = video.prefix
    starts = sorted({s - p for _, s, _ in video.returns} | {0})
    written, rows = [], [("truth", video.pixels)]
    for mode in (NO_CONTEXT, *TRAINED):
        frames = _frames(bench, mode)
        if frames is None:
            continue
        rows.append((mode, frames))
        report = report_from_metrics(frame_metrics(frames[p:], video.pixels[p:]), starts, fps=bench.cfg.fps)
        path = folder / f"drift_{name}_{slug(mode)}.png"
        report.image.save(path)
        written.append(_shown(path))
    if len(rows) > 1:
        path = folder / f"frames_{name}.png"
        strip(rows, p).save(path)
        written.append(_shown(path))
    return written


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def strip(rows: list[tuple[str, torch.Tensor]], start: int, label: int = 130) -> Image.Image:
    """The frames from ``start`` on, one row per (name, frames [T, H, W, 3]), scaled so the strip is <= 2000 wide."""
    count, size = rows[0][1].shape[0] - start, rows[0][1].shape[1]
    scale = max(1, min(4, (2000 - label - count) // max(1, count * size)))
    cell = size * scale + 1
    image = Image.new("RGB", (label + count * cell, len(rows) * cell + 1), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    for r, (name, frames) in enumerate(rows):
        draw.text((2, r * cell + cell // 2 - 5), name, fill=(0, 0, 0))
        pixels = (frames[start:].clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        for k, frame in enumerate(pixels):
            tile = Image.fromarray(frame).resize((size * scale, size * scale), Image.NEAREST)
            image.paste(tile, (label + k * cell, r * cell + 1))
    return image
