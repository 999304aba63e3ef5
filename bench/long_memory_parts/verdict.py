"""The verdict, by a rule written down before any mode was trained, and what stays untested.

RULE is the whole rule; ``verdict`` applies it to the per-seed means and nothing else decides. It reuses
the encoder ranking's pair test (bench/context_proof/verdict.judge_pair): a difference counts only when it
exceeds two seed standard deviations in both PSNR and SSIM.
"""

from __future__ import annotations

from bench.context_proof.verdict import judge_pair

from .setup import MEMORY, WINDOW

RULE = (
    "Rule fixed before any run: each memory mode M (" + ", ".join(MEMORY) + ") is compared with the "
    f"{WINDOW} W on the returned objects' regions in autoregressive generation. M BEATS W when "
    "mean(M) - mean(W) > 2 * max(SD(M), SD(W)) in both region PSNR and region SSIM; M LOSES TO W when "
    "mean(W) - mean(M) > 2 * max(SD(M), SD(W)) in both; otherwise the pair is UNRESOLVED. Mean and SD are over "
    "training seeds of each seed's mean over every returned visit of the same held-out videos, generated from "
    "the same noise. A mode without every seed evaluated is NOT MEASURED; the verdict is INCOMPLETE until "
    "every pair is measured, and no pair is judged past a failed gate."
)

UNTESTED = (
    "a real VAE and a real Wan / HunyuanVideo DiT (a 4-layer width-64 DiT, 16x16-pixel frames and an exactly "
    "invertible latent map stand in)",
    "real videos and text prompts: flat-coloured procedural objects, and a one-hot cue per frame naming which "
    "object is on screen in place of a storyboard prompt",
    "sections of several latent frames (one-frame sections keep the per-frame cue exact) and continuation "
    "frames handed between sections",
    "frame-query pretraining of the history encoder and the paper's learning-rate sweeps: every mode's LoRA "
    "and source are trained only on next-section prediction from the true history (teacher forcing), with one "
    "fixed learning rate per group",
    "the clip KV cache combined with a sliding window or the extension model (paper 002 pairs them); here the "
    "cache is the only context of its mode, and its LoRA covers every layer like the other modes' LoRAs "
    "(the paper trains K/V of the latter half)",
    "Sentence-BERT prompt similarity for the KV cache (the one-hot cue is its prompt embedding) and LPIPS",
    "training on generated (not true) history, FramePack's anti-drifting sampling orders and its "
    "importance orderings (plain time order here)",
)


def pair_state(evals: dict, mode: str, seeds) -> str:
    """BEATS / LOSES TO / UNRESOLVED against the sliding window, or NOT MEASURED."""
    for name in (mode, WINDOW):
        if sorted(evals.get(name, {})) != sorted(seeds):
            return "NOT MEASURED"
    state = judge_pair(evals, WINDOW, mode, "returned")
    return {"holds": "BEATS", "reversed": "LOSES TO", "unresolved": "UNRESOLVED"}[state]


def verdict(evals: dict, seeds) -> tuple[str, list[str]]:
    """('COMPLETE' | 'INCOMPLETE', one line per memory mode)."""
    lines, complete = [], True
    for mode in MEMORY:
        state = pair_state(evals, mode, seeds)
        complete &= state != "NOT MEASURED"
        lines.append(f"{mode} {state} {WINDOW}" if state in ("BEATS", "LOSES TO") else f"{mode} vs {WINDOW}: {state}")
    return ("COMPLETE" if complete else "INCOMPLETE"), lines
