"""Can frame-query pretraining rank history encoders? Gates first, then Table 1's contenders (paper 001).

Gates, asserted before any comparison (a failed gate is recorded, reported, and stops the benchmark):
* G0: closed-form floor and ceilings of this data, rate and width (mean frame, best linear decode of
  each LR input, best linear code of a token box), and tokens at least as wide as a box;
* G1: the base DiT, trained to a validation plateau on this data at full, 2x and 4x downsampled
  latents, gives with no context a one-step x0 within 0.5 dB of the mean-frame floor at each;
* G2: the raw-frames control (the DiT with a LoRA reading every masked history frame) reaches >= 25 dB.
Then every contender (bench/context_proof/setup.py) is trained per seed to a validation plateau with
per-group learning rates chosen by a small sweep on a validation split, and scored on the same held-out
queries, sampled and one-step x0, PSNR and SSIM. The verdict follows the rule in
bench/context_proof/verdict.py, fixed before any run.

It runs in chunks: each call works until ``--minutes`` have passed (at most 10), stores everything
in the work folder and rewrites the report, so repeated calls finish the benchmark:

    nice -n 10 .cache/hosts/0.3.75/venv/bin/python bench/encoder_rank.py --minutes 9 \\
        --out bench/results/encoder_rank_cpu.txt
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.context_proof import chunks, stages, verdict as rule  # noqa: E402
from bench.context_proof.setup import ENCODERS, PAPER_ORDER, RAW, SETTINGS, TRAINED, UNTRAINED, token_count  # noqa: E402

COMMAND = "nice -n 10 .cache/hosts/0.3.75/venv/bin/python bench/encoder_rank.py --minutes 9 --out {out}"


def _mean_sd(values: list[float]) -> str:
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.3f} +- {sd:.3f}"


def report(bench: stages.Bench, progress: dict, out: str) -> str:
    cfg = bench.cfg
    title = "Encoder ranking with gates (paper 001, Table 1) on CPU: frame-query reconstruction of held-out queries"
    lines = chunks.report_header(title, COMMAND.format(out=out), cfg, progress)
    if progress.get("gate_failed"):
        lines += ["", f"STOPPED: {progress['gate_failed']}. No contender is compared past a failed gate."]
    g0 = bench.read("g0.json")
    if g0:
        lines += [
            "",
            f"G0 closed forms ({'passed' if g0['passed'] else 'FAILED: ' + '; '.join(g0['failed'])}); "
            f"a token box holds {g0['box_values']} latent values, tokens are {g0['token_width']} wide",
        ]
        for key, label in (
            ("floor_mean_frame", "floor: mean-frame predictor"),
            ("lr_linear_latent", "best linear decode of the LR input, latent averaging"),
            ("lr_linear_pixels", "best linear decode of the LR input, pixels -> VAE"),
            ("box_code_lr_width", f"best linear code of a box in {g0['box_code_lr_width']['numbers']} numbers"),
            ("box_code_token_width", f"best linear code of a box in {g0['box_code_token_width']['numbers']} numbers"),
        ):
            lines.append(f"  {label:58s} PSNR {g0[key]['psnr']:7.2f} dB  SSIM {g0[key]['ssim']:.3f}")
    g1 = bench.read("g1.json")
    if g1:
        st = g1["base_status"]
        lines += [
            "",
            f"G1 base DiT without context ({'passed' if g1['passed'] else 'FAILED'}; {st['step']} steps, "
            f"{st['reason']}; tolerance {stages.G1_TOLERANCE_DB} dB)",
        ]
        for scale in stages.SCALES:
            r = g1[f"{scale}x"]
            lines.append(
                f"  {scale}x latents: mean-frame floor {r['floor_psnr']:.2f} dB, "
                f"one-step x0 {r['dit_onestep_psnr']:.2f} dB"
            )
        lines += [f"  {f}" for f in g1["failed"]]
    g2 = bench.read("g2.json")
    if g2:
        lines += [
            "",
            f"G2 raw-frames control seed 0: {g2['raw_seed0_sampled_psnr']:.2f} dB sampled "
            f"(needs >= {g2['threshold']}): {'passed' if g2['passed'] else 'FAILED'}",
        ]
    sweeps = {n: bench.read(f"sweep/{stages.slug(n)}.json") for n in TRAINED}
    if any(sweeps.values()):
        lines += [
            "",
            "Learning-rate sweep (seed 0, validation flow loss; group lr x scale: "
            + ", ".join(f"{g} {lr:g}" for g, lr in cfg.group_lr)
            + ")",
        ]
        for n, s in sweeps.items():
            if s:
                vals = "  ".join(f"x{float(k):.2f}: {v:.4f}" for k, v in s["val_loss"].items())
                lines.append(f"  {n:30s} {vals}  -> x{s['chosen_scale']:.2f}")
    evals = bench.evals()
    if evals:
        lines += [
            "",
            f"Results: mean +- SD over seeds of each seed's mean over {cfg.queries} paired held-out queries",
            f"  {'contender':30s} {'tokens':>6s} {'seeds':>5s} {'sampled PSNR':>16s} {'sampled SSIM':>16s} "
            f"{'one-step PSNR':>16s} {'one-step SSIM':>16s}  steps (stop)",
        ]
        for name in (*TRAINED, UNTRAINED):
            if name not in evals:
                continue
            runs = evals[name]
            cols = [
                _mean_sd(rule.seed_means(evals, name, k))
                for k in ("psnr_sampled", "ssim_sampled", "psnr_onestep", "ssim_onestep")
            ]
            stops = (
                ", ".join(
                    f"{r['status']['step']} ({'plateau' if 'plateau' in r['status']['reason'] else 'max'})"
                    for r in runs.values()
                    if "status" in r
                )
                or "untrained"
            )
            seeds = len(runs) if name != UNTRAINED else 1
            lines.append(
                f"  {name:30s} {token_count(cfg, name):6d} {seeds:5d} "
                + " ".join(f"{c:>16s}" for c in cols)
                + f"  {stops}"
            )
        lines += ["", "Paired differences, seed 0 (mean +- SE over queries), sampled / one-step PSNR dB:"]
        ref = "proposed (pixels)"
        for other in (*ENCODERS, RAW, UNTRAINED):
            if other != ref and 0 in evals.get(other, {}) and 0 in evals.get(ref, {}):
                a, b = evals[other][0], evals[ref][0]
                d1, d2 = rule.paired_difference(a, b, "psnr_sampled"), rule.paired_difference(a, b, "psnr_onestep")
                lines.append(f"  {ref} - {other:30s} {d1[0]:+.3f} +- {d1[1]:.3f}   {d2[0]:+.3f} +- {d2[1]:.3f}")
    state, pairs = rule.verdict(evals, cfg.seeds)
    if progress.get("gate_failed"):
        state, pairs = "NOT REPRODUCED ON CPU", ["a gate failed before the contenders could be compared"]
    lines += ["", rule.RULE, "", f"VERDICT: {state}"] + [f"  {p}" for p in pairs]
    lines += ["", "Left untested:"] + [f"  - {u}" for u in rule.UNTESTED]
    lines.append(f"  - contenders not yet evaluated: {', '.join(n for n in PAPER_ORDER if n not in evals) or 'none'}")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    work_help = (
        "where runs are kept between chunks (default bench/results/encoder_rank/<setting>: finished stages are small "
        "JSON files and the base DiT, kept in the repository so a later session resumes; the training checkpoints "
        "of unfinished runs are not)"
    )
    chunks.add_arguments(ap, SETTINGS, work_help, "bench/results/encoder_rank_cpu.txt")
    args = ap.parse_args(argv)
    cfg = SETTINGS[args.setting]
    work = Path(args.work or REPO / "bench" / "results" / "encoder_rank" / cfg.name)
    bench, progress = chunks.run(lambda: stages.Bench(cfg, work), work, args.minutes)
    chunks.write_report(args.out, report(bench, progress, args.out))
    return 3 if progress["gate_failed"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
