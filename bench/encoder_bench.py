"""History encoder benchmark: token counts, LR downsampling choice, incremental vs full cost, size.

Run:  .cache/hosts/0.3.75/venv/bin/python bench/encoder_bench.py [--out bench/results/encoder_cpu.txt] [--quick]

Everything runs on CPU with random weights (the HR output projection is given random weights too,
so the residual branch is really computed and added). Latent geometry follows the Wan VAE:
832x480 pixels -> 104x60 latent, 24 fps -> 6 latent frames per second (the 24/4 rule).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from histenc.context import SectionGrid  # noqa: E402
from histenc.encoder.model import EncoderConfig, HistoryEncoder  # noqa: E402
from histenc.encoder.state import EncoderState  # noqa: E402
from tests.helpers import ToyDiT  # noqa: E402

RATES = ["4x4x2", "2x2x2", "2x2x1", "2x2x4", "2x2x8"]
LAT_H, LAT_W, FPS_LATENT = 60, 104, 6
MIB = 1024 * 1024


def line(out, text=""):
    print(text, flush=True)
    out.append(text)


def token_counts(out):
    line(out, "## Context tokens at 832x480, 24 fps (latent 104x60, 6 latent frames/s)")
    line(out, "naive full history = 52 x 30 cells x frames; 'padded' = what the encoder emits (60 rows pad to the")
    line(out, "next multiple of rate x patch); 'paper formula' = the same count without padding (fractional rows).")
    line(
        out,
        f"{'rate':>8} {'20 s padded':>12} {'20 s paper':>11} {'60 s padded':>12} {'60 s paper':>11} {'60 s ratio':>11}",
    )
    naive = [(LAT_W // 2) * (LAT_H // 2) * s * FPS_LATENT for s in (20, 60)]
    line(out, f"{'naive':>8} {naive[0]:>12,} {'':>11} {naive[1]:>12,}")
    naive60 = (LAT_W // 2) * (LAT_H // 2) * 60 * FPS_LATENT
    for rate in RATES:
        cfg = EncoderConfig(width=1536, rate=rate)
        row = []
        for seconds in (20, 60):
            frames = seconds * FPS_LATENT
            gt, gh, gw = cfg.box
            row += [cfg.tokens_for(frames, LAT_H, LAT_W), frames / gt * LAT_H / gh * LAT_W / gw]
        line(out, f"{rate:>8} {row[0]:>12,} {row[1]:>11,.0f} {row[2]:>12,} {row[3]:>11,.0f} {naive60 / row[2]:>10.1f}x")
    line(out)


def smooth_signal(frames, seed=0):
    """Sum of a few low-frequency waves per channel: periods >= 12 frames and >= 16 latent pixels."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(frames).view(-1, 1, 1).float()
    y = torch.arange(LAT_H).view(1, -1, 1).float()
    x = torch.arange(LAT_W).view(1, 1, -1).float()
    chans = []
    for _ in range(16):
        acc = torch.zeros(frames, LAT_H, LAT_W)
        for _ in range(4):
            ft, fy, fx = torch.rand(3, generator=g) * torch.tensor([1 / 12, 1 / 16, 1 / 16])
            phase = torch.rand(1, generator=g) * 6.283
            acc += torch.cos(6.283 * (ft * t + fy * y + fx * x) + phase)
        chans.append(acc / 2)
    return torch.stack(chans)[None]


def downsample_choice(out):
    line(out, "## LR branch downsampling on latents: area average vs. strided pick")
    line(out, "recon = relative squared error of the box-upsampled pooled latent vs. the latent (lower is better);")
    line(out, "cos / std = LR token vs. the mean of the full-resolution DiT tokens over the same box (random")
    line(out, "1536-wide patch embedding; a real Wan embedding is also linear, so the comparison carries over).")
    dit = ToyDiT(width=1536, seed=3)
    signals = {
        "smooth": smooth_signal(8),
        "white": torch.randn(1, 16, 8, LAT_H, LAT_W, generator=torch.Generator().manual_seed(1)),
    }
    line(out, f"{'rate':>8} {'signal':>7} {'mode':>5} {'recon':>8} {'cos':>7} {'std ratio':>10}")
    for rate in ("4x4x2", "2x2x2", "2x2x8"):
        for name, x in signals.items():
            for mode in ("area", "pick"):
                enc = HistoryEncoder.from_dit(dit, rate=rate, variant="only_lr", lr_downsample=mode, spatial_pad=False)
                rh, rw, rt = enc.config.rate
                xs = x[..., : LAT_H // (2 * rh) * 2 * rh, : LAT_W // (2 * rw) * 2 * rw]
                with torch.no_grad():
                    if mode == "area":
                        small = F.avg_pool3d(xs, (rt, rh, rw))
                    else:
                        small = xs[:, :, rt - 1 :: rt, rh // 2 :: rh, rw // 2 :: rw]
                    up = small.repeat_interleave(rt, 2).repeat_interleave(rh, 3).repeat_interleave(rw, 4)
                    recon = float(((up - xs) ** 2).sum() / ((xs - xs.mean()) ** 2).sum())
                    lr = enc(xs)
                    full = dit.patch_embedding(xs)  # [1, D, T, H/2, W/2]
                    box = F.avg_pool3d(full, (rt, rh, rw)).flatten(2).transpose(1, 2)
                    cos = float(
                        F.cosine_similarity(
                            lr - lr.mean(1, keepdim=True), box - box.mean(1, keepdim=True), dim=-1
                        ).mean()
                    )
                    std = float(lr.std() / box.std())
                line(out, f"{rate:>8} {name:>7} {mode:>5} {recon:>8.4f} {cos:>7.4f} {std:>10.3f}")
    line(out)


def timed(fn, repeats=1):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def clone_state(state):
    return EncoderState.from_dict({k: v.clone() for k, v in state.to_dict().items()})


def incremental(out, width, height, wid, sections, full_ks, rate="4x4x2", repeats=5):
    line(
        out,
        f"## Incremental append vs. full re-encode: rate {rate}, width {width}, latent {wid}x{height}, "
        f"section = 1 s = {FPS_LATENT} latent frames",
    )
    torch.manual_seed(0)
    dit = ToyDiT(width=width, seed=0)
    enc = HistoryEncoder.from_dit(dit, rate=rate)
    with torch.no_grad():
        enc.hr_out.weight.normal_(0, 0.02)
    history = torch.randn(1, 16, sections * FPS_LATENT, height, wid)
    grid = SectionGrid(FPS_LATENT, height, wid)
    per_section, states = {}, {}
    with torch.no_grad():
        for k in range(1, sections + 1):
            if k in (2, sections):  # the state each repeated run below starts from
                states[k] = clone_state(enc.state)
            t0 = time.perf_counter()
            enc.context(history[:, :, : k * FPS_LATENT], grid, dit)  # what a long-video loop calls per section
            per_section[k] = time.perf_counter() - t0

        # Repeat the first and last appends from copies of the state they started from, interleaved so a
        # change in machine load hits both alike; the copies are made before the clock starts.
        def run_append(k):
            base = states[k]
            st = clone_state(base)
            frames = history[:, :, (k - 1) * FPS_LATENT : k * FPS_LATENT]
            t0 = time.perf_counter()
            enc.append(st, frames)
            return time.perf_counter() - t0

        def run_context(k):
            enc.state = clone_state(states[k])
            t0 = time.perf_counter()
            enc.context(history[:, :, : k * FPS_LATENT], grid, dit)
            return time.perf_counter() - t0

        last_state = enc.state
        runs = {2: [], sections: []}
        ctx_runs = {2: [], sections: []}
        for _ in range(repeats):
            for k in runs:
                runs[k].append(run_append(k))
                ctx_runs[k].append(run_context(k))
        enc.state = last_state
        t2, tk = statistics.median(runs[2]), statistics.median(runs[sections])
        c2, ck = statistics.median(ctx_runs[2]), statistics.median(ctx_runs[sections])
        per_section[2], per_section[sections] = c2, ck
        line(out, "context() time per section k (includes the append of section k, token assembly, positions;")
        line(out, f"k=2 and k={sections}: median of {repeats} interleaved runs, others: one run):")
        shown = sorted({2, 3, 5, 10, 20, 30, 40, 50, sections} & set(per_section))
        line(out, "  " + "  ".join(f"k={k}: {per_section[k]:.3f}s" for k in shown))
        line(
            out,
            f"append only, median of {repeats}: t(k=2) = {t2:.3f}s, t(k={sections}) = {tk:.3f}s, "
            f"ratio = {tk / t2:.3f}  (goal <= 1.1)",
        )
        line(out, f"context() ratio t(k={sections}) / t(k=2) = {ck / c2:.3f}  (goal <= 1.1)")
        for k in full_ks:
            fresh = HistoryEncoder(enc.config)
            fresh.load_state_dict(enc.state_dict())
            t_full = timed(lambda: fresh.context(history[:, :, : k * FPS_LATENT], grid, dit))
            speed = t_full / per_section[k]
            line(
                out,
                f"full re-encode k={k:>2}: {t_full:7.2f}s  vs. incremental {per_section[k]:.3f}s -> {speed:5.1f}x"
                + ("  (goal >= 30x)" if k == sections else ""),
            )
    st = enc.state
    line(
        out,
        f"state after {sections} s: caches + pending {st.nbytes(False) / MIB:.1f} MiB, tokens "
        f"{st.nbytes(True) / MIB - st.nbytes(False) / MIB:.1f} MiB ({st.tokens().shape[1]:,} tokens)",
    )
    line(out)


def size_and_memory(out, width, frames=8):
    line(out, f"## Parameters and activations per rate (width {width}, one chunk of {frames} latent frames at 104x60)")
    line(out, "train acts = bytes of every tensor autograd saves for backward in one forward (saved-tensor hooks,")
    line(out, "parameters excluded); no-grad peak = largest single layer's input + output (forward hooks). fp32.")
    line(out, f"{'rate':>8} {'variant':>17} {'params':>11} {'HR params':>10} {'train acts':>11} {'no-grad peak':>13}")
    x = torch.randn(1, 16, frames, LAT_H, LAT_W)
    for rate in RATES:
        for variant in ("full", "only_lr", "large_patchifier"):
            if variant != "full" and rate != "4x4x2":
                continue
            enc = HistoryEncoder(width=width, rate=rate, variant=variant)
            total = sum(p.numel() for p in enc.parameters())
            hr = sum(p.numel() for n, p in enc.named_parameters() if n.startswith("hr"))
            param_ptrs = {p.data_ptr() for p in enc.parameters()}
            saved, peak = {}, [0]

            def pack(t):
                if t.data_ptr() not in param_ptrs:
                    saved[(t.data_ptr(), tuple(t.shape))] = t.numel() * t.element_size()
                return t

            def hook(mod, inp, outp):
                o = outp[0] if isinstance(outp, tuple) else outp
                ins = sum(t.numel() * t.element_size() for t in inp if isinstance(t, torch.Tensor))
                peak[0] = max(peak[0], ins + o.numel() * o.element_size())

            hooks = [m.register_forward_hook(hook) for m in enc.modules() if not list(m.children())]
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                enc(x).sum()
            for h in hooks:
                h.remove()
            line(
                out,
                f"{rate:>8} {variant:>17} {total:>11,} {hr:>10,} {sum(saved.values()) / MIB:>9.0f}Mi "
                f"{peak[0] / MIB:>11.0f}Mi",
            )
    line(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--quick", action="store_true", help="tiny sizes, to check the script runs")
    args = ap.parse_args()
    torch.set_num_threads(2)
    out = []
    t0 = time.perf_counter()
    line(out, "# History encoder benchmark (bench/encoder_bench.py)")
    line(
        out,
        f"machine: {platform.machine()} CPU, 2 cores shared with other jobs ({torch.get_num_threads()} torch threads), "
        f"no GPU; torch {torch.__version__}; load average at start {os.getloadavg()[0]:.1f}",
    )
    line(out)
    token_counts(out)
    if args.quick:
        incremental(out, 64, 16, 16, sections=4, full_ks=[2, 4], repeats=1)
    else:
        downsample_choice(out)
        incremental(out, 1536, LAT_H, LAT_W, sections=60, full_ks=[2, 10, 30, 60])
        incremental(out, 3072, LAT_H // 2, LAT_W // 2, sections=60, full_ks=[2, 60])
        size_and_memory(out, 1536)
    line(out, f"total bench time {time.perf_counter() - t0:.0f}s; load average at end {os.getloadavg()[0]:.1f}")
    if args.out:
        Path(args.out).write_text("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
