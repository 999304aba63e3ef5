"""The text bench/joint_bench.py writes: its kept JSON records rendered as tables, verdicts and profiles."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

LIMIT = 0.03  # the joint's allowed overhead over the stock N + K step


def render_timing(rec: dict) -> list[str]:
    s, times, meta = rec["section"], rec["times"], rec["meta"]
    m = rec["machine"]
    lines = [
        f"## timing: {rec['model']} ({rec['class']}, width {rec['width']}, {rec['heads']} heads, {rec['blocks']} "
        f"blocks), {m['when']}, torch {m['torch']}, {m['threads']} torch thread(s), load average "
        f"{m['load']} -> {rec['load_end']}",
        f"# section: {s['frames']} latent frames at {s['video'][0]}x{s['video'][1]} (latent {s['latent'][1]}x"
        f"{s['latent'][0]}, {s['cells']} tokens a frame): N = {s['n']}; text {rec['text_tokens']} tokens; bf16 "
        f"weights and activations; warm-up round, then {rec['rounds']} interleaved rounds",
        f"# command: {rec['command']}",
        "# wall: perf_counter; cpu: process CPU time (one torch thread, so the time other people's jobs held the "
        "cores is left out); seconds per step: median [min..max]; / N+K: ratio of medians to the row's stock N+K",
        "",
        f"{'variant':<40} {'tokens':>24} {'wall median [min..max]':>23} {'cpu median [min..max]':>23} "
        f"{'/N+K wall':>9} {'/N+K cpu':>8}",
    ]
    verdicts = []
    for label, row in times.items():
        info = meta.get(label)
        tokens, ratios = str(s["n"]), ["", ""]
        if info is not None:
            tokens = f"{s['n']}+{info['k']}"
            ref = times[info["ref"]]
            ratios = [f"{statistics.median(row[c]) / statistics.median(ref[c]):.3f}" for c in ("wall", "cpu")]
            verdicts.append(verdict(label, row, ref, times[info["stock"]], info))
            if info.get("ref_clean"):  # the same computation in stock form: informative, next to the rule's row
                clean_over, clean_pairs = overhead(row, times[info["ref_clean"]], "cpu")
                verdicts.append(
                    f"{label}: vs {info['ref_clean']} (the stock step that also keeps the context clean): cpu "
                    f"{clean_over:+.1%} (paired rounds {clean_pairs[0]:+.1%}..{clean_pairs[-1]:+.1%})"
                )
        if label.startswith("stock N+K"):
            base = meta[label.replace("stock N+K", "joint", 1).replace(", context at t = 0]", "]")]
            shape = base["clean_shape"] if label.endswith("context at t = 0]") else base["shape"]
            tokens = f"{s['n'] + base['k']} ({shape})"
        spans = [f"{statistics.median(row[c]):.3f} [{min(row[c]):.3f}..{max(row[c]):.3f}]" for c in ("wall", "cpu")]
        lines.append(f"{label:<40} {tokens:>24} {spans[0]:>23} {spans[1]:>23} {ratios[0]:>9} {ratios[1]:>8}")
    lines += ["", *verdicts]
    failed = [v.split(":")[0] + (" (within noise)" if "within noise" in v else "") for v in verdicts if "-> FAIL" in v]
    verdicts_ruled = [v for v in verdicts if " -> " in v]
    lines.append(
        f"verdict for {rec['model']}: {'FAIL' if failed else 'PASS'}: {len(verdicts_ruled) - len(failed)} of "
        f"{len(verdicts_ruled)} joint rows within {LIMIT:.0%} of their stock N+K step by median CPU time"
        + (f"; over it: {', '.join(failed)}" if failed else "")
    )
    lines.append(
        "checks (warm-up round): "
        + "; ".join(
            f"{label}: finite {c['finite']}, shape {c['shape']}, max |B - A| {c['diff']:.3g}"
            for label, c in rec["checks"].items()
        )
    )
    for label, ops in rec.get("profiles", {}).items():
        lines += ["", f"# torch.profiler: {label} vs its stock N+K step, self ms per call (mean of {rec['rounds']} "]
        lines[-1] += "calls each), the ops that differ most; op times are wall time, so other people's jobs add noise"
        lines.append(f"{'op':<36} {'joint ms':>9} {'stock ms':>9} {'diff ms':>8} {'joint calls':>11}")
        total = [sum(row[c] for row in ops.values()) for c in (0, 1)]
        for name, row in sorted(ops.items(), key=lambda kv: -abs(kv[1][0] - kv[1][1]))[:12]:
            lines.append(f"{name[:36]:<36} {row[0]:>9.1f} {row[1]:>9.1f} {row[0] - row[1]:>+8.1f} {row[2]:>11}")
        lines.append(f"{'all ops':<36} {total[0]:>9.1f} {total[1]:>9.1f} {total[0] - total[1]:>+8.1f}")
    if rec.get("ops"):
        lines += ["", f"# isolated ops, process CPU ms (median of 20), K = the sliding window's {rec['window']} frames"]
        lines += [f"{ms:>8.1f}  {what}" for what, ms in rec["ops"].items()]
    return lines


def overhead(joint: dict, ref: dict, clock: str) -> tuple[float, list[float]]:
    """(median(joint) / median(ref) - 1, the per-round paired ratios - 1) on one clock."""
    pairs = sorted(b / c - 1 for b, c in zip(joint[clock], ref[clock]))
    return statistics.median(joint[clock]) / statistics.median(ref[clock]) - 1, pairs


def verdict(label: str, joint: dict, ref: dict, stock_n: dict, info: dict) -> str:
    """The 3 % rule on CPU time (wall time beside it), with the spread that says whether it is within noise."""
    over, pairs = overhead(joint, ref, "cpu")
    wall, wall_pairs = overhead(joint, ref, "wall")
    spread = (max(ref["cpu"]) - min(ref["cpu"])) / statistics.median(ref["cpu"])
    context_cost = statistics.median(ref["cpu"]) / statistics.median(stock_n["cpu"]) - 1
    noise = pairs[0] <= LIMIT < pairs[-1]
    return (
        f"{label}: K = {info['k']}; overhead over stock N+K: cpu {over:+.1%} -> {'PASS' if over <= LIMIT else 'FAIL'}"
        f" (paired rounds {pairs[0]:+.1%}..{pairs[-1]:+.1%}, stock N+K's own spread {spread:.1%}"
        f"{'; within noise: paired rounds fall on both sides of 3 %' if noise else ''}); wall {wall:+.1%} "
        f"(paired {wall_pairs[0]:+.1%}..{wall_pairs[-1]:+.1%}); the K tokens cost {context_cost:+.1%} over stock N "
        f"(cpu); tokens resolved once per section in {info['resolve_s']:.3f} s"
    )


def render_rss(recs: list[dict]) -> list[str]:
    lines = [
        "## peak RSS per context mode (each mode its own process; MiB)",
        "# Long Video Sampler, 3 sections of the timed section's latent frames at the timed size, 2 steps, cfg 1, "
        "euler, continuation 1; bf16 weights, computed in the host's dtype on the CPU (column 'compute')",
        "# loader peak: VmHWM after comfy.sd.load_diffusion_model; the mark is then reset, so 'run peak' is "
        "the sampler's own high-water mark",
        "",
        f"{'model':<12} {'mode':<10} {'loader peak':>11} {'after load':>10} {'run peak':>9} {'peak - before':>15} "
        f"{'at end':>7} {'compute':>8} {'run s':>6} {'load avg':>8}  result",
    ]
    for r in recs:
        loaded, before, after = r["loaded"], r["before"], r["after"]
        peak = after["VmHWM"] if r["reset"] else float("nan")
        result = f"refused: {r['refused']}" if "refused" in r else f"finite {r['finite']}, latent {r['latent']}"
        lines.append(
            f"{r['model']:<12} {r['mode']:<10} {loaded['VmHWM']:>11.0f} {before['VmRSS']:>10.0f} {peak:>9.0f} "
            f"{peak - before['VmRSS']:>15.0f} {after['VmRSS']:>7.0f} {r.get('compute', '?'):>8} {r['run_s']:>6.1f} "
            f"{r['machine']['load']:>8}  {result}"
        )
    return lines


def render(out: Path, timings: list[Path], rss_files: list[Path], command: str) -> None:
    """The text of every kept record (files that do not exist are skipped) into ``out``."""
    first = next((json.loads(p.read_text())["machine"] for p in timings + rss_files if p.exists()), None)
    lines = [
        "# One DiT step through the pack's joint vs the stock forward, real-width fixtures on CPU; peak RSS per mode",
        f"# command: {command} (each part below names the command that made it; --model/--mode/--part pick parts)",
        "# fixtures: scripts/fixtures_real.py (the checkpoints' width, heads, channels and key layout, random seeded "
        "weights, 2 blocks; HunyuanVideo 1 double + 1 single block), loaded by comfy.sd.load_diffusion_model "
        "(dtype bf16) of ComfyUI 0.3.75",
        f"# machine: {first['cpu'] if first else '?'}, {first['cores'] if first else '?'} cores, SHARED with other "
        "people's jobs while this ran (load averages below): timings are noisy; each verdict shows the per-round "
        "spread and says when the 3 % limit lies within it",
        "# rule: the joint passes when median(joint) / median(stock N+K) - 1 <= 3 % in process CPU time (wall time "
        "beside it); A = stock N, B = joint, C = stock N+K, interleaved A B C A B C ...",
        "# depth: 2 blocks where the checkpoints have 30 (Wan) or 20 + 40 (HunyuanVideo): what the joint does once a "
        "call (appending tokens, building RoPE rows and modulation) weighs about 15x more here than at full depth; "
        "what it adds in every block weighs the same",
        "",
    ]
    sections = [render_timing(json.loads(p.read_text())) for p in timings if p.exists()]
    lines += [line for section in sections for line in section if line.startswith("verdict for")] + [""]
    for section in sections:
        lines += section + [""]
    recs = [json.loads(p.read_text()) for p in rss_files if p.exists()]
    if recs:
        lines += render_rss(recs)
    out.write_text("\n".join(lines).rstrip() + "\n")
    print("\n".join(lines))
