"""One DiT step through the pack's joint vs the stock forward, at real width on CPU; and peak RSS per context mode.

    nice -n 5 .cache/hosts/0.3.75/venv/bin/python bench/joint_bench.py [--model wan21_1.3b,wan22_5b,hunyuan] \
        [--mode window,encoder,framepack,kvcache,extension,stock] [--part timing,rss | render] [--threads 1] \
        [--rounds 5] [--profile window,encoder] [--fresh]

Models are the real-width fixtures of scripts/fixtures_real.py (the checkpoints' width, heads and channels with
random seeded weights, cut to 2 blocks) loaded by ComfyUI's own ``comfy.sd.load_diffusion_model`` in bf16.

Timing: the DiT's forward on one section of N tokens is called, interleaved round after round (a warm-up round,
then ``--rounds`` measured), as (A) the stock forward on N tokens, (B) the joint: the same call with the
transformer_options of ``attach_context`` (the DIFFUSION_MODEL wrapper adds K context tokens), (C) the stock forward
on a latent of N + K tokens (the window's frames added, or one latent row of N + K cells for other modes), and for
Wan (D) ``histenc.dit.wan.forward_with_context`` (the training path). The context tokens are resolved once per
section and cached, as in sampling, so B measures the per-step cost; that once-per-section cost is shown apart.
The joint passes when median(B) / median(C) - 1 is at most 3 %.

RSS: each context mode runs three sections of the Long Video Sampler (2 steps, cfg 1) in its own subprocess,
so the high-water mark (VmHWM) is that mode's; the loader's peak is shown apart (the mark is reset after loading).

On this machine (2 shared cores, one torch thread) timing takes 3-4 minutes a model and RSS 5-9 minutes a model;
give --model, --part and --mode to keep each invocation under 10 minutes.

Every measurement is kept as JSON in .cache/bench/joint_bench/ (--records; one file per model and part, one per mode for
RSS); a run skips what is kept unless --fresh, and bench/results/joint_bench_cpu.txt is rendered from all of it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.joint_bench_report import render  # noqa: E402

RECORDS = REPO / ".cache" / "bench" / "joint_bench"
FIXTURES = REPO / ".cache" / "fixtures_real"
COMMAND = "nice -n 5 .cache/hosts/0.3.75/venv/bin/python bench/joint_bench.py"
WINDOW = 2  # sliding-window frames: K = 2 latent frames of tokens
HISTORY = 16  # latent frames of history the timed sources summarise
ENCODER_RATE = "4x4x2"
TIMESTEP = 500.0  # the DiT's timestep scale (sigma 0.5)


@dataclass(frozen=True)
class Bench:
    """One model's settings: the fixture, the section's video size and latent frames, the text it reads."""

    file: str
    width: int
    height: int
    frames: int
    text_tokens: int
    pooled: int = 0  # HunyuanVideo: the CLIP-L pooled vector's width
    per_frame: tuple[bool, ...] = (False,)  # timestep layouts timed (True: one timestep a frame)


MODELS = {
    "wan21_1.3b": Bench("wan21_t2v_1.3b_bf16.safetensors", 416, 240, 5, 512),
    "wan22_5b": Bench("wan22_ti2v_5b_bf16.safetensors", 512, 288, 5, 512, per_frame=(True, False)),
    "hunyuan": Bench("hunyuan_video_t2v_13b_bf16.safetensors", 288, 160, 5, 128, pooled=768),
}
TIMED = ("window", "encoder", "framepack")  # the modes that hand the DiT tokens
MODES = ("stock", "window", "encoder", "framepack", "kvcache", "extension")


def schedule_text(frames: int) -> str:
    return f"td_f16k4f2k2f1k1_g{frames}"


# ------------------------------------------------------------------------------------------ shared helpers
def memory() -> dict:
    """VmRSS and VmHWM (the peak since start or since the last reset) of this process, MiB."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = int(line.split()[1]) / 1024
    return out


def reset_peak() -> bool:
    """Start VmHWM again from the current RSS (Linux: 5 to clear_refs); False where the kernel refuses."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def machine() -> dict:
    import torch

    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "load": round(os.getloadavg()[0], 2),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "when": time.strftime("%Y-%m-%d %H:%M"),
    }


def load(name: str, threads: int):
    """The pack imported as ComfyUI imports it, and the model through the stock loader (bf16)."""
    import torch

    torch.set_num_threads(threads)
    from bench.long_video_bench import load_pack

    load_pack()
    import comfy.sd

    path = FIXTURES / MODELS[name].file
    if not path.exists():
        raise SystemExit(f"{path} is missing; run python3 scripts/fixtures_real.py first.")
    return comfy.sd.load_diffusion_model(str(path), model_options={"dtype": torch.bfloat16})


def sources(mode: str, model, frames: int) -> list:
    """The context sources a user's graph gives for ``mode``, built by the pack's own nodes."""
    from comfyui_histenc.histenc.extension import ExtensionProjection
    from comfyui_histenc.histenc.framepack.schedule import parse_schedule
    from comfyui_histenc.histenc_nodes._common import model_info
    from comfyui_histenc.histenc_nodes.context import SlidingWindowContext
    from comfyui_histenc.histenc_nodes.extension import VideoExtensionSource
    from comfyui_histenc.histenc_nodes.framepack import FramePackContextNode
    from comfyui_histenc.histenc_nodes.history_encoder import HistoryEncoderContext, InitHistoryEncoder
    from comfyui_histenc.histenc_nodes.kvcache import SIMILARITY, ClipKVCacheNode

    if mode == "stock":
        return []
    if mode == "window":
        return SlidingWindowContext.execute(frames=WINDOW).args[0]
    if mode == "encoder":
        encoder = InitHistoryEncoder.execute(model=model, rate=ENCODER_RATE, variant="full", seed=0).args[0]
        return HistoryEncoderContext.execute(encoder=encoder, window_frames=0).args[0]
    if mode == "framepack":
        node = FramePackContextNode.execute
        schedule = parse_schedule(schedule_text(frames))
        return node(model=model, schedule=schedule, ordering="time", lambda_time=1.0, fps=16.0).args[0]
    if mode == "kvcache":
        node = ClipKVCacheNode.execute
        settings = dict(max_clips=5, blocks="latter half", similarity=SIMILARITY[0], tolerance=0.001)
        return node(**settings, keep_kv_on="model device").args[0]
    if mode == "extension":
        info = model_info(model)
        projection = ExtensionProjection(info.latent_channels, info.width, tuple(info.patch))
        return [VideoExtensionSource(projection, "zero-initialised projection")]
    raise ValueError(f"mode {mode!r} is not one of {', '.join(MODES)}; pick one of them.")


# ------------------------------------------------------------------------------------------ timing (child)
def clean_reference(ref, k: int, cells: int, frames: int, n: int, patch):
    """The stock step that computes what the joint computes on a one-timestep step of a per-frame-timestep model:
    N + K tokens, the K context tokens at t = 0 and the N section tokens at the step's t. Whole context frames
    keep the frame layout; otherwise every token is a frame of one cell, so each can have its own timestep."""
    import torch

    if k % cells == 0:
        return ref, torch.tensor([[0.0] * (k // cells) + [TIMESTEP] * frames])
    c = ref.shape[1]
    latent = torch.randn(1, c, n + k, patch[1], patch[2], generator=torch.Generator().manual_seed(1)).to(ref.dtype)
    return latent, torch.tensor([[0.0] * k + [TIMESTEP] * n])


def timing(name: str, modes: list[str], rounds: int, profile: list[str]) -> dict:
    model = load(name, ARGS.threads)
    import torch
    from comfyui_histenc.histenc.context import SectionGrid
    from comfyui_histenc.histenc.dit import wan
    from comfyui_histenc.histenc.dit.payload import PAYLOAD_KEY
    from comfyui_histenc.histenc.train.frame_query import section_freqs
    from comfyui_histenc.histenc_nodes._common import attach_context, model_dit, model_info

    bench = MODELS[name]
    dm = model.get_model_object("diffusion_model")
    info = model_info(model)
    dtype = torch.bfloat16
    c, f = info.latent_channels, bench.frames
    h, w = bench.height // info.spatial_compression, bench.width // info.spatial_compression
    cells = (h // info.patch[1]) * (w // info.patch[2])
    n = f * cells
    g = torch.Generator().manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=g).to(dtype)

    x = randn(1, c, f, h, w)
    history = randn(1, c, HISTORY, h, w)
    text = randn(1, bench.text_tokens, 4096)
    extra = {} if not bench.pooled else {"y": randn(1, bench.pooled), "guidance": torch.tensor([6.0])}

    def step(latent, t, options):
        return lambda: dm(latent, t, text, transformer_options=options, **extra)

    variants, rows, meta = [], {}, {}
    for per_frame in bench.per_frame:
        tag = "t per frame" if per_frame else "one t"

        def t_for(frames):
            return torch.full((1, frames), TIMESTEP) if per_frame else torch.tensor([TIMESTEP])

        a = f"stock N [{tag}]"
        variants.append((a, step(x, t_for(f), {})))
        for mode in modes:
            if per_frame and mode != "window":
                continue  # a latent of N + K tokens with one timestep a frame exists only for whole frames
            m = attach_context(model, sources(mode, model, f), history.float())
            options = m.model_options["transformer_options"]
            payload = options[PAYLOAD_KEY]
            start = time.perf_counter()
            k = payload.count(model_dit(m, "cpu", dtype), SectionGrid(f, h, w, tuple(info.patch)))
            resolve = time.perf_counter() - start
            if k % cells == 0:
                ref, shape = randn(1, c, f + k // cells, h, w), f"{f + k // cells} frames"
                t_ref = t_for(f + k // cells)
            else:
                ref, shape = randn(1, c, 1, info.patch[1], info.patch[2] * (n + k)), f"1 x 1 x {n + k} cells"
                t_ref = t_for(1)
            b, cc = f"joint, {mode} [{tag}]", f"stock N+K, {mode} [{tag}]"
            variants += [(b, step(x, t_for(f), options)), (cc, step(ref, t_ref, {}))]
            meta[b] = {"mode": mode, "tag": tag, "k": k, "resolve_s": resolve, "stock": a, "ref": cc, "shape": shape}
            if info.per_frame_timesteps and not per_frame:  # the joint modulates the context as clean (t = 0)
                clean, t_clean = clean_reference(ref, k, cells, f, n, info.patch)
                label = f"stock N+K, {mode} [one t, context at t = 0]"
                variants.append((label, step(clean, t_clean, {})))
                meta[b]["ref_clean"] = label
                meta[b]["clean_shape"] = shape if k % cells == 0 else f"{n + k} frames of 1 cell"
            if info.family == "wan" and mode == "window" and not per_frame:
                freqs = section_freqs(dm, range(f), h, w, "cpu")
                d = f"forward_with_context, {mode} [{tag}]"
                variants.append((d, lambda p=payload, t=t_for(f): wan.forward_with_context(dm, p, x, t, text, freqs)))
                meta[d] = {**meta[b], "stock": a}
    checks = {}
    with torch.inference_mode():
        for r in range(rounds + 1):
            outs = {}
            for label, call in variants:
                wall, cpu = time.perf_counter(), time.process_time()
                out = call()
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                if r == 0:
                    outs[label] = out
                else:
                    rows.setdefault(label, {"wall": [], "cpu": []})
                    rows[label]["wall"].append(wall)
                    rows[label]["cpu"].append(cpu)
            if r == 0:
                for label, row in meta.items():
                    out, stock = outs[label], outs[row["stock"]]
                    same = out.shape == x.shape
                    diff = (out.float() - stock.float()).abs().max().item() if same else float("nan")
                    checks[label] = {"finite": bool(torch.isfinite(out).all()), "shape": same, "diff": diff}
            print(f"  round {r}/{rounds} done", file=sys.stderr, flush=True)
        profiles = {}
        for mode, tag in ((m, t) for m in profile for t in ("t per frame", "one t")):
            pair = [f"joint, {mode} [{tag}]", f"stock N+K, {mode} [{tag}]"]
            calls = dict(v for v in variants if v[0] in pair)
            if len(calls) == 2:  # the joint and its stock N+K step, called in turn, ops averaged over the calls
                profiles[pair[0]] = profiled([calls[label] for label in pair], rounds)
        ops = modulation_ops(dm, n, WINDOW * cells, f, dtype) if profile and info.per_frame_timesteps else {}
    section = {"frames": f, "latent": [h, w], "video": [bench.width, bench.height], "cells": cells, "n": n}
    rec = dict(model=name, width=info.width, heads=info.heads, blocks=info.blocks, text_tokens=bench.text_tokens)
    rec.update({"class": type(model.model).__name__, "section": section, "rounds": rounds, "window": WINDOW})
    return {**rec, "times": rows, "meta": meta, "checks": checks, "profiles": profiles, "ops": ops}


def profiled(calls: list, rounds: int) -> dict:
    """{op: [self CPU ms per call of each of ``calls`` (mean of ``rounds`` turns), op count in the first]}."""
    from torch.profiler import ProfilerActivity, profile

    ops: dict[str, list[float]] = {}
    for _ in range(rounds):
        for i, call in enumerate(calls):
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                call()
            for event in prof.key_averages():
                row = ops.setdefault(event.key, [0.0] * len(calls) + [0])
                row[i] += event.self_cpu_time_total / 1000 / rounds
                if i == 0:
                    row[-1] = event.count
    return ops


def modulation_ops(dm, n: int, k: int, frames: int, dtype) -> dict:
    """Process CPU ms (median of 20) of what one Wan block does with its modulation input e (``modulation + e``,
    then ``repeat_e`` for each of its six uses) for N + K tokens, by the layout of e; and of what the joint builds
    once a call when the context is modulated as clean (Wan 2.2): e per token."""
    import torch
    from comfy.ldm.wan.model import repeat_e

    mod = dm.blocks[0].modulation.detach().to(dtype)
    d, cells = mod.shape[-1], n // frames
    x = torch.zeros(1, n + k, d, dtype=dtype)
    e = {rows: torch.randn(1, rows, 6, d).to(dtype) for rows in (1, (n + k) // cells, n + k)}
    section = torch.randn(1, frames, 6, d).to(dtype)

    def block(rows):
        return lambda: [repeat_e(part, x) for part in (mod.unsqueeze(0) + e[rows]).unbind(2)]

    def cpu_ms(fn) -> float:
        times = []
        for _ in range(20):
            start = time.process_time()
            fn()
            times.append(time.process_time() - start)
        return statistics.median(times) * 1000

    return {
        f"per block, e per token [1, {n + k}, 6, {d}] (the joint, clean context)": cpu_ms(block(n + k)),
        f"per block, e per frame [1, {(n + k) // cells}, 6, {d}] (stock N+K, t per frame)": cpu_ms(
            block((n + k) // cells)
        ),
        f"per block, one e [1, 1, 6, {d}] (stock N+K, one t)": cpu_ms(block(1)),
        "once a call, the joint builds e per token (repeat_interleave + cat)": cpu_ms(
            lambda: torch.cat([torch.repeat_interleave(section, cells, dim=1), e[n + k][:, :k]], dim=1)
        ),
    }


# ------------------------------------------------------------------------------------------ RSS (child)
class TextEncoder:
    """Just enough of comfy.sd.CLIP for the Storyboard: seeded embeddings of the model's text width."""

    def __init__(self, tokens: int, pooled: int):
        self.tokens, self.pooled = tokens, pooled

    def tokenize(self, text, **kwargs):
        return {"text": text}

    def encode_from_tokens_scheduled(self, tokens, **kwargs):
        import torch

        g = torch.Generator().manual_seed(sum(map(ord, tokens["text"])))
        cond = torch.randn(1, self.tokens, 4096, generator=g) * 0.5
        extra = {"pooled_output": torch.randn(1, self.pooled, generator=g)} if self.pooled else {}
        return [[cond, extra]]


def rss(name: str, mode: str) -> dict:
    started = memory()
    model = load(name, ARGS.threads)
    loaded = memory()
    import torch
    from comfyui_histenc.histenc.longvideo.storyboard import Storyboard, schedule_sections
    from comfyui_histenc.histenc_nodes.long_video import LongVideoSampler
    from comfyui_histenc.histenc_nodes.storyboard import EncodedStoryboard

    bench = MODELS[name]
    fps, sections = 16.0, 3
    video_frames = (sections * bench.frames - 1) * 4 + 1  # 3 sections of the timed section's latent frames
    seconds = video_frames / fps
    assert len(schedule_sections(seconds, fps, bench.frames).sections) == sections
    clip = TextEncoder(min(bench.text_tokens, 64), bench.pooled)
    board = EncodedStoryboard(Storyboard.parse("0 a lighthouse at dawn\n1.5 a storm rolls in"), clip)
    negative = clip.encode_from_tokens_scheduled(clip.tokenize("low quality"))
    record = {"model": name, "mode": mode, "started": started, "loaded": loaded, "seconds": seconds}
    record["compute"] = str(model.model.manual_cast_dtype or model.model.get_dtype()).replace("torch.", "")
    record["reset"] = reset_peak()
    before = memory()
    start = time.perf_counter()
    try:
        context = sources(mode, model, bench.frames)
        with torch.inference_mode():
            size = dict(seconds=seconds, fps=fps, section_frames=bench.frames, width=bench.width, height=bench.height)
            sampling = dict(seed=0, steps=2, cfg=1.0, sampler_name="euler", scheduler="simple", continuation_frames=1)
            out = LongVideoSampler.execute(
                model=model,
                storyboard=board,
                negative=negative,
                **size,
                **sampling,
                job_name="",
                context=context or None,
            )
        samples = out.args[0]["samples"]
        record["finite"] = bool(torch.isfinite(samples).all())
        record["latent"] = list(samples.shape)
    except ValueError as err:  # a mode the model's family does not take: the pack's own sentence
        record["refused"] = str(err)
    record["run_s"] = time.perf_counter() - start
    record["before"], record["after"] = before, memory()
    return record


# ------------------------------------------------------------------------------------------ driver
def child(kind: str, model: str, modes: list[str], path: Path) -> None:
    argv = [sys.executable, __file__, "--child", kind, "--model", model, "--mode", ",".join(modes)]
    argv += ["--threads", str(ARGS.threads), "--rounds", str(ARGS.rounds), "--record", str(path)]
    part = f"{COMMAND} --model {model} --mode {','.join(modes)} --part {kind} --threads {ARGS.threads}"
    if kind == "timing":
        part += f" --rounds {ARGS.rounds}" + (f" --profile {ARGS.profile}" if ARGS.profile else "")
    argv += ["--command", part + " --fresh"]
    if ARGS.profile:
        argv += ["--profile", ARGS.profile]
    print(f"{kind} {model} {','.join(modes)}", flush=True)
    subprocess.run(argv, check=True, cwd=REPO)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=",".join(MODELS), help=f"comma list of {', '.join(MODELS)}")
    parser.add_argument("--mode", default=",".join(MODES), help=f"comma list of {', '.join(MODES)}")
    parser.add_argument("--part", default="timing,rss", help="timing, rss, both, or render (only rewrite --out)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    parser.add_argument("--rounds", type=int, default=5, help="measured rounds after the warm-up round")
    parser.add_argument("--profile", default="", help="comma list of timed modes: torch.profiler ops of B vs C")
    parser.add_argument("--fresh", action="store_true", help="measure again what is already kept")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "joint_bench_cpu.txt"))
    parser.add_argument("--records", default=str(RECORDS), help="where the JSON records are kept")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--record", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--command", default=None, help=argparse.SUPPRESS)
    global ARGS
    ARGS = parser.parse_args()
    models = [m.strip() for m in ARGS.model.split(",") if m.strip()]
    modes = [m.strip() for m in ARGS.mode.split(",") if m.strip()]
    for value, known, what in ((models, MODELS, "--model"), (modes, MODES, "--mode")):
        bad = [v for v in value if v not in known]
        if bad:
            parser.error(f"{what} {','.join(bad)} is not one of {', '.join(known)}; pick from those.")
    if ARGS.child:
        import torch

        torch.set_num_threads(ARGS.threads)
        mach = machine()
        if ARGS.child == "timing":
            profile = [m.strip() for m in ARGS.profile.split(",") if m.strip()]
            rec = timing(models[0], [m for m in modes if m in TIMED], ARGS.rounds, profile)
        else:
            rec = rss(models[0], modes[0])
        rec.update(machine=mach, load_end=round(os.getloadavg()[0], 2), command=ARGS.command)
        Path(ARGS.record).write_text(json.dumps(rec, indent=1))
        return
    records = Path(ARGS.records)
    records.mkdir(parents=True, exist_ok=True)
    parts = {p.strip() for p in ARGS.part.split(",") if p.strip()}
    if not parts <= {"timing", "rss", "render"}:
        parser.error(f"--part {ARGS.part} is not timing, rss or render; pick from those.")
    for model in models:
        if "timing" in parts and any(m in TIMED for m in modes):
            path = records / f"{model}_timing.json"
            if ARGS.fresh or not path.exists():
                child("timing", model, [m for m in modes if m in TIMED], path)
        if "rss" in parts:
            for mode in modes:
                path = records / f"{model}_rss_{mode}.json"
                if ARGS.fresh or not path.exists():
                    child("rss", model, [mode], path)
    timings = [records / f"{m}_timing.json" for m in MODELS]
    render(Path(ARGS.out), timings, [records / f"{m}_rss_{mode}.json" for m in MODELS for mode in MODES], COMMAND)


ARGS = None

if __name__ == "__main__":
    main()
