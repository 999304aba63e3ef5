"""Block swap on a CUDA GPU: peak VRAM and step time against all-on-GPU, ComfyUI lowvram and on-access swap.

Real widths with random weights, loaded through ComfyUI's stock loader (so its ops, fp8 casting and
lowvram mode are the real ones): Wan2.1-1.3B bf16, Wan2.2-5B bf16, Wan-14B fp8; 832x480, 1-second
sections, history 2 s to 60 s, each context mode (its token count from the planner's formulas,
random tokens through the real context joint). One model call per step (batch 1 by default).

Approaches, each at several blocks-to-swap N (budget = model size - N blocks):
  gpu          everything resident (the compute-only step)
  native       ComfyUI lowvram at that budget (patch_model with lowvram_model_memory): per-layer casts
  native+pf    the same load plus histenc block prefetch over ComfyUI's offloaded layers (the node path)
  histenc      histenc BlockSwap with its own pinned storage on N whole blocks
  on_access    the same N blocks fetched layer by layer when called, no prefetch (FramePack DynamicSwap)
Reported: torch.cuda.max_memory_allocated / reserved, step time, bytes streamed per step and the
H2D lower bound (bytes / measured pinned bandwidth), the planner's predicted peak beside the measured one.

    .cache/hosts/0.3.75/venv/bin/python bench/offload_bench.py                  # CUDA: JSON + text under bench/results
    .cache/hosts/0.3.75/venv/bin/python bench/offload_bench.py --planner-only   # any machine: the planner's table
    .cache/hosts/0.3.75/venv/bin/python bench/offload_bench.py --smoke          # CPU: tiny widths, code paths only
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from histenc.memory.vram import GB, ModelSpec, choose, context_tokens, context_weight_bytes, plan, preset  # noqa: E402
from histenc.units import latent_frames, span_latent_frames  # noqa: E402

BENCH_MODELS = {"wan2.1-1.3b": 6.0, "wan2.2-5b": 10.0, "wan2.1-14b-fp8": 12.0}  # model: goal peak GB at 60 s
MODES = ("none", "window:3", "framepack:td_f16k4f4k2f1k1_g9", "encoder:4x4x2")
HISTORY_S = (2, 10, 30, 60)
WIDTH, HEIGHT, SECTION_S = 832, 480, 1.0


# ------------------------------------------------------------------------------------------ planner (CPU)
def planner_rows(models=tuple(BENCH_MODELS), modes=MODES, history=HISTORY_S, budgets=(6, 8, 12), batch=1):
    rows = []
    for name in models:
        spec = preset(name)
        section = span_latent_frames(SECTION_S, spec.fps)
        for mode in modes:
            for seconds in history:
                hist = latent_frames(seconds, spec.fps)
                ctx = context_tokens(mode, spec, WIDTH, HEIGHT, section, hist)
                row = {
                    "model": spec.name,
                    "mode": mode,
                    "history_s": seconds,
                    "context_tokens": ctx,
                    "tokens": plan(spec, WIDTH, HEIGHT, section, hist, ctx, batch=batch).tokens,
                    "peak_no_swap_gb": plan(spec, WIDTH, HEIGHT, section, hist, ctx, 0, batch).peak / GB,
                }
                for budget in budgets:
                    try:
                        p = choose(spec, budget, WIDTH, HEIGHT, section, hist, ctx, batch)
                        row[f"{budget}GB"] = (p.blocks_to_swap, p.peak / GB, p.ram_pinned / GB)
                    except ValueError as e:
                        row[f"{budget}GB"] = ("needs", float(str(e).split("works is ")[1].split(" GB")[0]), None)
                rows.append(row)
    return rows


def planner_text(rows, budgets=(6, 8, 12), batch=1) -> str:
    lines = [
        f"# VRAM planner predictions (histenc.vram; no GPU involved), {WIDTH}x{HEIGHT}, {SECTION_S:g} s sections, "
        f"batch {batch}, 0.5 GB headroom",
        "# per budget: blocks to swap / predicted peak allocated GB / pinned system RAM GB, or the smallest budget",
        "",
    ]
    head = f"{'model':>17} | {'context mode':>30} | {'hist':>4} | {'ctx tok':>7} | {'tokens':>6} | {'no swap':>7}"
    head += "".join(f" | {str(b) + ' GB':>20}" for b in budgets)
    lines += [head, "-" * len(head)]
    for r in rows:
        line = (
            f"{r['model']:>17} | {r['mode']:>30} | {r['history_s']:>3}s | {r['context_tokens']:>7} | "
            f"{r['tokens']:>6} | {r['peak_no_swap_gb']:>7.2f}"
        )
        for b in budgets:
            n, peak, ram = r[f"{b}GB"]
            cell = f"needs {peak:.1f} GB" if n == "needs" else f"{n:>2} / {peak:5.2f} / {ram:5.2f}"
            line += f" | {cell:>20}"
        lines.append(line)
    return "\n".join(lines)


HUNYUAN_RESULTS = REPO / "bench" / "results" / "vram_planner_hunyuan_cpu.txt"
HUNYUAN_SIZES = ((640, 640), (832, 480))


def hunyuan_planner_text(budgets=(6, 8, 12), history=(10, 30, 60), section=9, mode="framepack:framepack_f1") -> str:
    """The planner's table for HunyuanVideo 13B with FramePack F1 context: 9-latent-frame sections at 30 fps."""
    lines = [
        "# python bench/offload_bench.py --planner-hunyuan   (writes this file; histenc.vram, no GPU involved)",
        f"# HunyuanVideo 13B, {mode}, {section}-latent-frame sections (FramePack's ~1 s at 30 fps), 1 continuation "
        "frame, 0.5 GB headroom",
        "# per budget: blocks to swap (of 20 double + 40 single, doubles first) / predicted peak allocated GB / "
        "pinned system RAM GB, or the smallest budget that works",
        "",
    ]
    head = f"{'model':>21} | {'size':>7} | {'batch':>5} | {'hist':>4} | {'ctx tok':>7} | {'tokens':>6} | {'no swap':>7}"
    head += "".join(f" | {str(b) + ' GB':>20}" for b in budgets)
    lines += [head, "-" * len(head)]
    for name in ("hunyuan-13b", "hunyuan-13b-fp8"):
        spec = preset(name)
        for w, h in HUNYUAN_SIZES:
            for batch in (1, 2):
                for seconds in history:
                    hist = latent_frames(seconds, spec.fps)
                    ctx = context_tokens(mode, spec, w, h, section, hist)
                    terms = dict(continuation=1, source_weights=context_weight_bytes(mode, spec))
                    p0 = plan(spec, w, h, section, hist, ctx, 0, batch, **terms)
                    line = (
                        f"{spec.name:>21} | {w}x{h} | {batch:>5} | {seconds:>3}s | {ctx:>7} | {p0.tokens:>6} | "
                        f"{p0.peak / GB:>7.2f}"
                    )
                    for budget in budgets:
                        try:
                            p = choose(spec, budget, w, h, section, hist, ctx, batch, **terms)
                            cell = f"{p.blocks_to_swap:>2} / {p.peak / GB:5.2f} / {p.ram_pinned / GB:5.2f}"
                        except ValueError as e:
                            cell = f"needs {str(e).split('works is ')[1].split(' GB')[0]} GB"
                        line += f" | {cell:>20}"
                    lines.append(line)
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------ GPU run
def import_pack():
    from scripts.host import import_comfy

    path = import_comfy()
    sys.path.remove(str(path))
    sys.path.insert(0, str(path))
    if "nodes" in sys.modules and not str(getattr(sys.modules["nodes"], "__file__", "")).startswith(str(path)):
        del sys.modules["nodes"]
    import nodes  # noqa: F401  ComfyUI's nodes.py

    name = "comfyui_histenc"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, REPO / "__init__.py", submodule_search_locations=[str(REPO)]
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)


def random_model(spec: ModelSpec, device):
    """ComfyUI's stock loader on a random state dict with the real keys and shapes of ``spec``."""
    import comfy.sd
    from comfy.ldm.wan.model import WanModel

    with torch.device("meta"):
        shapes = WanModel(
            model_type="i2v" if spec.i2v else "t2v",
            patch_size=spec.patch,
            in_dim=spec.in_channels,
            dim=spec.width,
            ffn_dim=spec.ffn,
            freq_dim=spec.freq_dim,
            text_dim=spec.text_width,
            out_dim=spec.latent_channels,
            num_heads=spec.heads,
            num_layers=spec.layers,
            qk_norm=True,
            cross_attn_norm=True,
            eps=1e-6,
            operations=torch.nn,
        ).state_dict()
    store = torch.float8_e4m3fn if spec.weight_bytes == 1 else torch.bfloat16
    gen_device = device if device.type == "cuda" else torch.device("cpu")
    sd = {}
    for k, v in shapes.items():
        w = torch.randn(v.shape, device=gen_device, dtype=torch.bfloat16) * (0.02 if v.ndim > 1 else 0.1)
        sd[k] = w.to(store).cpu()
    dtype = store if store != torch.bfloat16 else None
    return comfy.sd.load_diffusion_model_state_dict(sd, model_options={"dtype": dtype} if dtype else {})


class FixedTokens:
    """Context source with ``n`` random tokens before the section: only the count matters here."""

    def __init__(self, n: int, width: int, cells: tuple[int, int]):
        from histenc.context import ContextTokens, grid_positions

        h, w = cells
        frames = max(1, math.ceil(n / (h * w)))
        self.out = ContextTokens(torch.randn(1, n, width) * 0.5, grid_positions(frames, h, w, t0=-float(frames))[:n])

    def context(self, history, grid, dit):
        return self.out


def h2d_bandwidth(device, size=1 << 30) -> float:
    host = torch.empty(size, dtype=torch.uint8).pin_memory()
    dev = torch.empty(size, dtype=torch.uint8, device=device)
    dev.copy_(host, non_blocking=True)
    torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(3):
        dev.copy_(host, non_blocking=True)
    torch.cuda.synchronize(device)
    return 3 * size / (time.perf_counter() - t0)


def measure(call, device, repeats):
    cuda = device.type == "cuda"
    call()  # warm-up (also the first fetches, cuDNN / SDPA selection)
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        if cuda:
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated(device) if cuda else 0
    reserved = torch.cuda.max_memory_reserved(device) if cuda else 0
    return sorted(times)[len(times) // 2], peak, reserved


def run_config(patcher, spec, approach, n, ctx, section, batch, device, repeats, transfer_factory):
    """Load ``patcher`` the way ``approach`` does, time ``repeats`` model calls; restore everything after."""
    import comfy.model_management as mm
    from comfyui_histenc.histenc_nodes._common import attach_context
    from comfyui_histenc.histenc_nodes.offload import attach_block_swap

    from histenc.memory.offload import BlockSwap, OnAccess

    lat_h, lat_w = HEIGHT // spec.vae_stride[1], WIDTH // spec.vae_stride[2]
    cells = (lat_h // spec.patch[1], lat_w // spec.patch[2])
    model = patcher
    if ctx:
        history = torch.zeros(1, spec.latent_channels, 1, lat_h, lat_w)
        model = attach_context(patcher, [FixedTokens(ctx, spec.width, cells)], history)
    if approach == "native+pf":
        model = attach_block_swap(model, n, prefetch=True, transfer=transfer_factory())
    mm.unload_all_models()
    mm.soft_empty_cache()
    budget = 0 if approach not in ("native", "native+pf") or n == 0 else model.model_size() - n * spec.block
    model.patch_model(device_to=device, lowvram_model_memory=budget)
    dm = model.get_model_object("diffusion_model")
    engine = hooks = None
    if approach in ("histenc", "on_access") and n:
        if approach == "histenc":
            engine = BlockSwap(dm.blocks, transfer_factory(), swap=range(n)).install()
            engine.park()
        else:
            transfer = transfer_factory()
            engine = BlockSwap(dm.blocks, transfer, swap=range(n))
            engine.park()
            hooks = OnAccess([dm.blocks[i] for i in range(n)], transfer)
    g = torch.Generator().manual_seed(0)
    dtype = model.model.get_dtype() if model.model.manual_cast_dtype is None else model.model.manual_cast_dtype
    x = torch.randn(batch, spec.in_channels, section, lat_h, lat_w, generator=g).to(device, dtype)
    t = torch.full((batch,), 500.0, device=device)
    text = (torch.randn(batch, 512, spec.text_width, generator=g) * 0.1).to(device, dtype)
    opts = model.model_options["transformer_options"]
    resident = model.loaded_size() if budget else None
    try:
        with torch.no_grad():
            step, peak, reserved = measure(lambda: dm(x, t, text, transformer_options=opts), device, repeats)
    finally:
        if hooks is not None:
            hooks.remove()
        if engine is not None:
            engine.uninstall() if approach == "histenc" else None
            engine.unpark()
        swap_engine = model.get_attachment("histenc_block_swap")
        streamed = None
        if swap_engine is not None:
            streamed = swap_engine.stats.fetched_bytes / (repeats + 1)
            swap_engine.release()
        model.unpatch_model(device_to=model.offload_device)
        mm.unload_all_models()
    if approach == "histenc" and n:
        streamed = engine.stats.fetched_bytes / (repeats + 1)
    elif approach == "on_access" and n:
        streamed = hooks.moved / (repeats + 1)
    elif approach == "native" and n:
        streamed = model.model_size() - resident
    return {
        "step_s": step,
        "peak_allocated": peak,
        "peak_reserved": reserved,
        "streamed_bytes": streamed or 0,
        "resident_bytes": resident,
    }


def bench(args) -> dict:
    import_pack()
    from histenc.memory.offload import CudaTransfer, RecordingTransfer

    device = torch.device("cuda" if not args.smoke else "cpu")
    transfer_factory = (lambda: CudaTransfer(device)) if device.type == "cuda" else RecordingTransfer
    bandwidth = h2d_bandwidth(device) if device.type == "cuda" else None
    results = []
    for name in args.models:
        spec = preset(name)
        if args.smoke:  # tiny widths: only the code paths are checked, numbers mean nothing
            spec = replace(spec, width=128, ffn=256, layers=4, heads=1)
        patcher = random_model(spec, device)
        from comfyui_histenc.histenc_nodes.offload import model_spec

        spec = replace(model_spec(patcher), name=spec.name, fps=spec.fps, vae_stride=spec.vae_stride)
        section = span_latent_frames(SECTION_S, spec.fps)
        for mode in args.modes:
            for seconds in args.history:
                hist = latent_frames(seconds, spec.fps)
                ctx = context_tokens(mode, spec, WIDTH, HEIGHT, section, hist)
                counts = sorted({0, *(max(1, round(f * spec.layers)) for f in args.swap)})
                for approach in args.approaches:
                    for n in counts if approach != "gpu" else [0]:
                        if approach != "gpu" and n == 0:
                            continue
                        if device.type == "cpu" and approach.startswith("native"):
                            continue  # ComfyUI has no lowvram mode on the CPU
                        predicted = plan(spec, WIDTH, HEIGHT, section, hist, ctx, n, args.batch)
                        try:
                            r = run_config(
                                patcher,
                                spec,
                                approach,
                                n,
                                ctx,
                                section,
                                args.batch,
                                device,
                                args.repeats,
                                transfer_factory,
                            )
                        except torch.OutOfMemoryError:
                            r = {"error": "out of memory"}
                        row = {
                            "model": spec.name,
                            "mode": mode,
                            "history_s": seconds,
                            "context_tokens": ctx,
                            "tokens": predicted.tokens,
                            "approach": approach,
                            "blocks_to_swap": n,
                            "predicted_peak": predicted.peak,
                            **r,
                        }
                        if bandwidth and r.get("streamed_bytes"):
                            row["h2d_bound_s"] = r["streamed_bytes"] / bandwidth
                        results.append(row)
                        print(row_text(row), flush=True)
        del patcher
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu (smoke run)",
        "torch": torch.__version__,
        "h2d_bytes_per_s": bandwidth,
        "batch": args.batch,
        "width": WIDTH,
        "height": HEIGHT,
        "section_s": SECTION_S,
        "results": results,
    }


def row_text(r) -> str:
    if "error" in r:
        return (
            f"{r['model']:>17} {r['mode']:>30} {r['history_s']:>3}s {r['approach']:>10} "
            f"N={r['blocks_to_swap']:>2}: {r['error']}"
        )
    bound = f"{r['h2d_bound_s'] * 1000:8.1f}" if "h2d_bound_s" in r else f"{'-':>8}"
    return (
        f"{r['model']:>17} {r['mode']:>30} {r['history_s']:>3}s {r['tokens']:>6} tok {r['approach']:>10} "
        f"N={r['blocks_to_swap']:>2}  step {r['step_s'] * 1000:8.1f} ms  h2d bound {bound} ms  "
        f"peak {r['peak_allocated'] / GB:6.2f} GB (reserved {r['peak_reserved'] / GB:6.2f}, "
        f"predicted {r['predicted_peak'] / GB:6.2f})  streamed {r['streamed_bytes'] / GB:6.2f} GB"
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--planner-only", action="store_true", help="print the planner's predictions table and stop")
    ap.add_argument(
        "--planner-hunyuan", action="store_true", help=f"write the HunyuanVideo 13B planner table to {HUNYUAN_RESULTS}"
    )
    ap.add_argument("--smoke", action="store_true", help="CPU run at tiny widths to check the code paths")
    ap.add_argument("--models", nargs="+", default=list(BENCH_MODELS))
    ap.add_argument("--modes", nargs="+", default=list(MODES))
    ap.add_argument("--history", nargs="+", type=float, default=[2, 60])
    ap.add_argument("--swap", nargs="+", type=float, default=[0.25, 0.5, 1.0], help="fractions of the blocks")
    ap.add_argument("--approaches", nargs="+", default=["gpu", "native", "native+pf", "histenc", "on_access"])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = ap.parse_args(argv)
    if args.planner_only:  # batch 1 and 2 (cond + uncond together); raw history shows what packing saves
        modes = list(args.modes) + ["raw"]
        print("\n\n".join(planner_text(planner_rows(args.models, modes, HISTORY_S, batch=b), batch=b) for b in (1, 2)))
        return 0
    if args.planner_hunyuan:
        HUNYUAN_RESULTS.write_text(hunyuan_planner_text())
        print(HUNYUAN_RESULTS.read_text())
        return 0
    if not args.smoke and not torch.cuda.is_available():
        print(
            "error: the offload benchmark measures GPU memory and PCIe streaming, and this machine has no CUDA "
            "device; run it on a CUDA GPU, or pass --planner-only for the planner's predictions."
        )
        return 2
    data = bench(args)
    if args.smoke:
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    tag = "".join(c if c.isalnum() else "_" for c in data["device"]).strip("_").lower()
    (args.out / f"offload_{tag}.json").write_text(json.dumps(data, indent=1))
    header = (
        f"# offload benchmark on {data['device']} (torch {data['torch']}, {platform.machine()}), "
        f"pinned H2D {data['h2d_bytes_per_s'] / GB:.1f} GB/s, batch {data['batch']}, "
        f"{WIDTH}x{HEIGHT}, {SECTION_S:g} s sections"
    )
    (args.out / f"offload_{tag}.txt").write_text(header + "\n" + "\n".join(row_text(r) for r in data["results"]) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
