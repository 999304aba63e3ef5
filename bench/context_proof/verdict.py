"""The verdict, by a rule written down before any contender was trained, and what stays untested.

RULE is the whole rule; ``verdict`` applies it to the per-seed means and nothing else decides.
"""

from __future__ import annotations

import statistics

from .setup import PAPER_ORDER

RULE = (
    "Rule fixed before any run: for each adjacent pair (A worse, B better) of Table 1's order "
    + " < ".join(PAPER_ORDER)
    + ", the pair HOLDS when mean(B) - mean(A) > 2 * max(SD(A), SD(B)) in both PSNR and SSIM, and is REVERSED "
    "when mean(A) - mean(B) > 2 * max(SD(A), SD(B)) in both; otherwise it is UNRESOLVED. Mean and SD are over "
    "seeds of each seed's mean over the same paired held-out queries. Sampled and one-step x0 are judged "
    "separately. The paper's ordering is REPRODUCED ON CPU only if every pair holds in both modes; otherwise "
    "the verdict is NOT REPRODUCED ON CPU, naming each pair that did not hold. With fewer than all seeds of all "
    "four contenders evaluated the verdict is INCOMPLETE."
)

UNTESTED = (
    "a real VAE and a real Wan / HunyuanVideo DiT (a 2-layer width-128 DiT, 16x16-pixel frames and an exactly "
    "invertible latent map stand in)",
    "the paper's rates 4x4x2, 2x2x1 and 2x2x4 (only 2x2x2 fits tokens as wide as the box at this width)",
    "LPIPS and the paper's 4096 in-the-wild test videos (PSNR / SSIM on procedural videos only)",
    "pretraining at the paper's scale (millions of videos, 8 GPUs) and LoRA rank 128 (rank 64 on width 128 here)",
    "the encoder's cross-attention refinement and autoregressive finetuning (Sec. 3.2), and generation quality",
    "encoders with the paper's 64-512 channels (32-128 here)",
)


def seed_means(evals: dict[str, dict[int, dict]], name: str, key: str) -> list[float]:
    return [statistics.fmean(e[key]) for _, e in sorted(evals.get(name, {}).items())]


def _stat(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def judge_pair(evals, worse: str, better: str, mode: str) -> str:
    states = []
    for metric in ("psnr", "ssim"):
        ma, sa = _stat(seed_means(evals, worse, f"{metric}_{mode}"))
        mb, sb = _stat(seed_means(evals, better, f"{metric}_{mode}"))
        margin = 2 * max(sa, sb)
        states.append("holds" if mb - ma > margin else "reversed" if ma - mb > margin else "unresolved")
    return states[0] if states[0] == states[1] else "unresolved"


def verdict(evals: dict[str, dict[int, dict]], seeds) -> tuple[str, list[str]]:
    """('REPRODUCED ON CPU' | 'NOT REPRODUCED ON CPU' | 'INCOMPLETE', one line per pair and mode)."""
    missing = [n for n in PAPER_ORDER if sorted(evals.get(n, {})) != sorted(seeds)]
    if missing:
        return "INCOMPLETE", [f"not all seeds evaluated for: {', '.join(missing)}"]
    lines, all_hold = [], True
    for mode in ("sampled", "onestep"):
        for worse, better in zip(PAPER_ORDER[:-1], PAPER_ORDER[1:]):
            state = judge_pair(evals, worse, better, mode)
            all_hold &= state == "holds"
            lines.append(f"{mode:8s} {worse} < {better}: {state.upper()}")
    return ("REPRODUCED ON CPU" if all_hold else "NOT REPRODUCED ON CPU"), lines


def paired_difference(a: dict, b: dict, key: str) -> tuple[float, float]:
    """Mean and standard error over queries of b - a (the same queries, same noise)."""
    d = [y - x for x, y in zip(a[key], b[key])]
    return statistics.fmean(d), (statistics.stdev(d) / len(d) ** 0.5 if len(d) > 1 else 0.0)
