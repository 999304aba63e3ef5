"""VRAM planner: how much GPU memory one denoising step of a section needs, and how many blocks to swap.

Why: ComfyUI sizes its weight budget from the section's latent alone; the context tokens a long
history adds (thousands to hundreds of thousands) are invisible to it, which is how a "6 GB"
workflow runs out of memory at minute 3. The planner counts them with the context modes' own token
formulas and predicts the peak of torch's allocator (what ``torch.cuda.max_memory_allocated``
reports) as

    peak = resident weights + swap slots + cast workspace + persistent tensors + one block's peak

- resident weights: every weight not swapped, in its storage dtype (fp8 = 1 byte);
- swap slots: two blocks in flight when any block is swapped (the one running, the next arriving);
- cast workspace: one FFN matrix in the compute dtype while fp8 weights are upcast per layer;
- persistent: the hidden states [B, L, D] are counted in the block peak; outside it live the RoPE
  table (fp32, [L, head_dim / 2, 2, 2]), the text context, the cached context tokens, and for
  per-frame timesteps with context (Wan 2.2) the per-token modulation [B, L, 6, D] twice (the
  forward's and the block's own sum);
- one block's peak, in units of B x L x D activations: 8 in self-attention (x, its modulated input,
  q, k, v, the attention output and its reshape, with RoPE computed in fp32) and 2 + 2 F / D in
  the FFN (x, its input, the hidden layer before and after GELU). Attention itself is assumed
  memory-efficient (flash / SDPA / sage: only a log-sum-exp row per head and token);
- context state, what the context sources keep on the model device across steps: the clip KV cache's
  stored K and V (2 x cached blocks x clips x a clip's tokens x width x compute bytes; in system RAM
  instead when the cache keeps them on the CPU) and the sources' own weights (the fp32 FramePack
  projections and the history encoder, both moved to the DiT's device: ``ContextSource.weight_bytes``).

L counts every latent frame the DiT samples: the section's new frames plus the frames it is given
beside them (the previous section's last ``continuation`` frames, dropped afterwards, and in endpoint
or inverted orders the next section's first frames), not just ``section_frames``.

Host RAM while loading is a line of its own: the stock loader holds the file's tensors and the built
model whole at once, beside the host process itself (measured: 6.1 GiB for the 2.6 GiB Wan 1.3B bf16
file, 19.4 GiB for the 9.3 GiB Wan 2.2 5B one).

``python -m histenc.vram --help`` prints a plan from the command line.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import asdict, dataclass

from .model_spec import (  # noqa: F401  (the planner's public names)
    GB,
    HUNYUAN_TEXT_TOKENS,
    LOADER_PROCESS,
    PRESETS,
    TEXT_TOKENS,
    ModelSpec,
    hunyuan_spec,
    preset,
    spec_from_module,
    stored_bytes,
)
from ..units import check_size, latent_frames, span_latent_frames


def latent_size(spec: ModelSpec, width: int, height: int) -> tuple[int, int]:
    """(latent height, latent width) of a video of this size for this model (see histenc.units)."""
    return check_size(width, height, spec.vae_stride[1], spec.patch[1])


def context_tokens(
    mode: str, spec: ModelSpec, width: int, height: int, section_frames: int, history_frames: int
) -> int:
    """Context tokens of a mode written as text, with the modes' own formulas.

    ``none``, ``raw`` (every history frame at full resolution), ``window:N``,
    ``framepack:<schedule>``, ``encoder:<HxWxT>``, ``tokens:N``.
    """
    from ..context import SectionGrid

    lat_h, lat_w = latent_size(spec, width, height)
    grid = SectionGrid(section_frames, lat_h, lat_w, spec.patch)
    kind, _, arg = mode.partition(":")
    if kind == "none":
        return 0
    if kind == "raw":
        return -(-history_frames // spec.patch[0]) * grid.cells[1] * grid.cells[2]
    if kind == "window":
        from ..window import SlidingWindow

        return SlidingWindow(int(arg or 3)).tokens_for(grid, history_frames)
    if kind == "framepack":
        from ..framepack.schedule import parse_schedule

        return parse_schedule(arg).context_length(grid, history_frames)
    if kind == "encoder":
        from ..encoder.model import EncoderConfig

        cfg = EncoderConfig(width=spec.width, channels=spec.latent_channels, rate=arg or "4x4x2", patch=spec.patch)
        return cfg.tokens_for(history_frames, lat_h, lat_w) if history_frames else 0
    if kind == "tokens":
        return int(arg)
    raise ValueError(
        f"context mode {mode!r} is unknown; use none, raw, window:N, framepack:<schedule>, encoder:<HxWxT> or tokens:N."
    )


def context_weight_bytes(mode: str, spec: ModelSpec) -> int:
    """Bytes of the weights a context mode written as text brings (``framepack:`` projections in the DiT's compute
    dtype, as the FramePack Context node stores them; ``encoder:`` branches in fp32), counted by building the
    source on the meta device: no memory."""
    import torch

    kind, _, arg = mode.partition(":")
    with torch.device("meta"):
        if kind == "framepack":
            from ..framepack.packing import FramePackContext

            pack = FramePackContext(arg, spec.width, spec.latent_channels, spec.patch)
            return sum(p.numel() for p in pack.parameters()) * spec.compute_bytes  # the node keeps the DiT's dtype
        if kind == "encoder":
            from ..encoder.model import EncoderConfig, HistoryEncoder

            cfg = EncoderConfig(width=spec.width, channels=spec.latent_channels, rate=arg or "4x4x2", patch=spec.patch)
            return HistoryEncoder(cfg).weight_bytes()
    return 0


KV_ON = ("model device", "cpu")  # where the clip KV cache keeps K/V between uses (its node's keep_kv_on)


def kv_cache_bytes(spec: ModelSpec, grid, history_frames: int, max_clips: int = 5, blocks: str = "latter half") -> int:
    """Stored K and V of the clip KV cache while a section samples: 2 x cached blocks x clips x tokens x width x
    compute bytes. A clip is one earlier section (``grid``'s own frames, its record pass keeps their tokens); a
    section attends to at most ``max_clips`` of them (histenc.kvcache; ``blocks`` as its node takes them)."""
    from ..kvcache import parse_blocks

    if isinstance(max_clips, bool) or not isinstance(max_clips, int) or max_clips < 0:
        raise ValueError(f"KV cache clips is {max_clips!r}; give a whole number >= 0 (the cache node keeps 5).")
    clips = min(max_clips, history_frames // max(1, grid.frames))
    cached = len(parse_blocks(blocks, spec.layers)) if clips else 0
    return 2 * cached * clips * grid.tokens * spec.width * spec.compute_bytes


@dataclass(frozen=True)
class SourceTerms:
    """What a list of context sources adds to a plan: tokens per step, and bytes they keep beside the DiT."""

    tokens: int = 0
    weights: int = 0  # the sources' own weights, on the DiT's device
    kv_device: int = 0  # clip KV cache K/V on the model device ("model device", the default)
    kv_host: int = 0  # clip KV cache K/V kept in system RAM ("cpu")


def source_terms(sources, spec: ModelSpec, grid, history_frames: int) -> SourceTerms:
    """The planner's inputs from connected context sources: their token formulas, their ``weight_bytes`` and,
    for a clip KV cache, its settings as it describes them (max_clips, blocks, keep_kv_on)."""
    tokens = weights = kv_device = kv_host = 0
    for source in sources:
        tokens += source.tokens_for(grid, history_frames)
        weights += source.weight_bytes()
        settings = source.describe()
        if settings.get("type") == "ClipKVCache":
            kv = kv_cache_bytes(spec, grid, history_frames, int(settings["max_clips"]), str(settings["blocks"]))
            if settings.get("keep_kv_on", KV_ON[0]) == KV_ON[0]:
                kv_device += kv
            else:
                kv_host += kv
    return SourceTerms(tokens, weights, kv_device, kv_host)


def loader_peak(spec: ModelSpec, file_bytes: int | None = None) -> int:
    """Host RAM while the stock loader builds the model: the file's tensors and the model's, whole, at once,
    plus the host process (``file_bytes`` defaults to the model's own: a file loaded in its stored dtype)."""
    return (spec.weights if file_bytes is None else int(file_bytes)) + spec.weights + LOADER_PROCESS


@dataclass(frozen=True)
class Plan:
    model: str
    width: int
    height: int
    section_frames: int
    history_frames: int
    section_tokens: int  # every frame the DiT samples: the new ones and the given ones beside them
    context_tokens: int
    batch: int
    blocks: int
    blocks_to_swap: int
    block_bytes: int
    weights_total: int
    weights_resident: int
    swap_slots: int
    cast_workspace: int
    persistent: int
    block_peak: int
    attention_workspace: int
    peak: int
    ram_pinned: int
    ram_load: int  # the whole model's weights (what pinned RAM holds with every block swapped)
    given_tokens: int = 0  # of section_tokens: the continuation (and tail) frames, dropped after sampling
    kv_cache: int = 0  # clip KV cache K/V on the model device
    source_weights: int = 0  # context sources' own weights on the model device
    ram_kv: int = 0  # clip KV cache K/V kept in system RAM
    ram_loader_peak: int = 0  # host RAM while the stock loader builds the model

    @property
    def tokens(self) -> int:
        return self.section_tokens + self.context_tokens

    @property
    def activations(self) -> int:
        return self.persistent + self.block_peak + self.attention_workspace

    @property
    def context_state(self) -> int:
        return self.kv_cache + self.source_weights

    def as_dict(self) -> dict:
        return {**asdict(self), "tokens": self.tokens, "activations": self.activations}

    def text(self) -> str:
        g = lambda b: f"{b / GB:.2f} GB"  # noqa: E731
        section = f"{self.section_tokens} section"
        if self.given_tokens:
            section += f" ({self.section_tokens - self.given_tokens} new + {self.given_tokens} given)"
        lines = [
            f"{self.model} at {self.width}x{self.height}, batch {self.batch}: {self.section_frames} latent frames "
            "per section, "
            f"{self.history_frames} of history",
            f"  tokens: {section} + {self.context_tokens} context = {self.tokens}",
            f"  blocks to swap: {self.blocks_to_swap} of {self.blocks} ({g(self.block_bytes)} each)",
            f"  weights resident: {g(self.weights_resident)} of {g(self.weights_total)}; swap slots "
            f"{g(self.swap_slots)}; "
            f"cast workspace {g(self.cast_workspace)}",
            f"  activations: {g(self.activations)} (block peak {g(self.block_peak)}, persistent "
            f"{g(self.persistent)}, "
            f"attention {g(self.attention_workspace)})",
        ]
        if self.context_state:
            lines.append(
                f"  context state: {g(self.context_state)} (clip KV cache {g(self.kv_cache)}, context sources' "
                f"weights {g(self.source_weights)})"
            )
        ram = f"  system RAM: {g(self.ram_pinned)} pinned for swapped weights"
        if self.ram_kv:
            ram += f"; {g(self.ram_kv)} clip KV cache kept on the CPU"
        return "\n".join(
            lines
            + [
                f"  predicted peak VRAM (torch allocated): {g(self.peak)}",
                ram,
                f"  host RAM while loading: {g(self.ram_loader_peak)} peak (the file's tensors and the built model "
                "at once, plus the host process)",
            ]
        )


def activation_terms(spec: ModelSpec, tokens: int, ctx: int, batch: int) -> tuple[int, int, int]:
    """(persistent, block peak, attention workspace) bytes for ``tokens`` = section + ``ctx`` context.

    HunyuanVideo attends over image and text tokens jointly, so its text tokens join L in every block; its
    single-stream block is the peak: x, linear1's 3 d + ffn output, normed q and k, and RoPE's fp32 q and k
    (4 units) give 10 + ffn / d units (14), above the double block's attention (12) and MLP (10).
    """
    a, d = spec.compute_bytes, spec.width
    if spec.hunyuan:
        tokens += spec.text_tokens
        block_units = 10.0 + spec.ffn / d
    else:
        block_units = max(8.0, 2.0 + 2.0 * spec.ffn / d)
    unit = batch * tokens * d * a
    head_dim = d // spec.heads
    persistent = tokens * head_dim * 8  # RoPE table: [L, head_dim / 2, 2, 2] fp32
    persistent += batch * spec.text_tokens * (spec.text_width + d) * a  # text context before and after embedding
    persistent += ctx * d * a  # the context tokens, cached per section
    if spec.per_frame_timesteps and ctx:
        persistent += 2 * 6 * unit  # per-token modulation: the forward's e0 and the block's sum
    attention = batch * spec.heads * tokens * 4  # log-sum-exp, fp32
    return persistent, int(block_units * unit), attention


def given_frames(history_frames: int, continuation: int = 0, tail: int = 0) -> int:
    """Frames a section is sampled with beside its own: the last ``continuation`` frames of the history (none
    before the first section) and ``tail`` frames of the section after it (endpoint and inverted orders)."""
    if continuation < 0 or tail < 0:
        raise ValueError(
            f"continuation frames {continuation} and tail frames {tail} must be 0 or more; give the sampler's "
            "continuation_frames."
        )
    return min(continuation, history_frames) + tail


def plan(
    spec: ModelSpec,
    width: int,
    height: int,
    section_frames: int,
    history_frames: int,
    context: int,
    blocks_to_swap: int = 0,
    batch: int = 1,
    *,
    continuation: int = 0,
    tail: int = 0,
    kv_cache: int = 0,
    kv_host: int = 0,
    source_weights: int = 0,
    file_bytes: int | None = None,
) -> Plan:
    """Peak VRAM of one step with ``blocks_to_swap`` blocks streamed from host memory.

    ``continuation`` / ``tail``: given frames sampled beside the section's own (see ``given_frames``);
    ``kv_cache`` / ``kv_host``: clip KV cache bytes on the model device / in system RAM and ``source_weights``
    the context sources' weights (``source_terms``); ``file_bytes``: the checkpoint's size, for the loader line.
    """
    if not 0 <= blocks_to_swap <= spec.layers:
        raise ValueError(
            f"blocks to swap is {blocks_to_swap} but {spec.name} has {spec.layers} blocks; pick 0..{spec.layers}."
        )
    if section_frames < 1 or history_frames < 0 or context < 0 or batch < 1:
        raise ValueError(
            f"section frames {section_frames}, history frames {history_frames}, context tokens {context} "
            f"and batch {batch} must be positive (history and context may be 0)."
        )
    if min(kv_cache, kv_host, source_weights) < 0:
        raise ValueError(
            f"KV cache bytes {kv_cache} / {kv_host} and context-source weight bytes {source_weights} must be 0 or "
            "more; take them from source_terms."
        )
    lat_h, lat_w = latent_size(spec, width, height)
    pt, ph, pw = spec.patch
    cells = -(-lat_h // ph) * -(-lat_w // pw)
    frames = section_frames + given_frames(history_frames, continuation, tail)
    section = -(-frames // pt) * cells
    given = section - -(-section_frames // pt) * cells
    tokens = section + context
    swapped = spec.swap_bytes(blocks_to_swap)
    slots = 2 * spec.block if blocks_to_swap else 0
    cast = spec.cast_elements * spec.compute_bytes if spec.weight_bytes != spec.compute_bytes else 0
    persistent, block_peak, attention = activation_terms(spec, tokens, context, batch)
    resident = spec.weights - swapped
    peak = resident + slots + cast + persistent + block_peak + attention + kv_cache + source_weights
    return Plan(
        spec.name,
        width,
        height,
        section_frames,
        history_frames,
        section,
        context,
        batch,
        spec.layers,
        blocks_to_swap,
        spec.block,
        spec.weights,
        resident,
        slots,
        cast,
        persistent,
        block_peak,
        attention,
        peak,
        swapped,
        spec.weights,
        given,
        kv_cache,
        source_weights,
        kv_host,
        loader_peak(spec, file_bytes),
    )


def choose(
    spec: ModelSpec,
    budget_gb: float,
    width: int,
    height: int,
    section_frames: int,
    history_frames: int,
    context: int,
    batch: int = 1,
    headroom_gb: float = 0.5,
    **terms,
) -> Plan:
    """The plan with the fewest swapped blocks whose peak fits ``budget_gb`` minus ``headroom_gb``.

    The headroom is memory torch's peak does not see: the CUDA context and allocator slack. ``terms`` are
    ``plan``'s keyword terms (continuation, tail, kv_cache, kv_host, source_weights, file_bytes).
    """
    if budget_gb <= 0:
        raise ValueError(f"VRAM budget {budget_gb} GB must be positive; give the card's memory in GB, e.g. 8.")
    limit = (budget_gb - headroom_gb) * GB
    for n in range(spec.layers + 1):
        p = plan(spec, width, height, section_frames, history_frames, context, n, batch, **terms)
        if p.peak <= limit:
            return p
    smallest = math.ceil((p.peak / GB + headroom_gb) * 10) / 10
    raise ValueError(
        f"VRAM budget {budget_gb:g} GB is below what any swap setting reaches for {spec.name} at {width}x{height} "
        f"with {p.tokens} tokens per step: the smallest budget that works is {smallest:.1f} GB (all {spec.layers} "
        "blocks swapped); raise the budget or lower the resolution, section length, batch or context tokens."
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m histenc.vram", description="Predict peak VRAM and pick blocks to swap."
    )
    ap.add_argument("--model", default="wan2.1-1.3b", help=f"one of {', '.join(PRESETS)}")
    ap.add_argument("--width", type=int, default=832)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--section-seconds", type=float, default=1.0)
    ap.add_argument(
        "--section-frames", type=int, default=None, help="latent frames per section (FramePack: 9); overrides seconds"
    )
    ap.add_argument("--history-seconds", type=float, default=60.0)
    ap.add_argument("--fps", type=float, default=None, help="default: the model's own (16 Wan 2.1, 24 Wan 2.2)")
    ap.add_argument(
        "--context",
        default="encoder:4x4x2",
        help="none, raw, window:N, framepack:<schedule>, encoder:<HxWxT> or tokens:N",
    )
    ap.add_argument("--batch", type=int, default=1, help="2 when cond and uncond run together")
    ap.add_argument("--budget", type=float, default=None, help="VRAM in GB; picks blocks to swap")
    ap.add_argument("--swap", type=int, default=0, help="blocks to swap when no budget is given")
    ap.add_argument("--headroom", type=float, default=0.5, help="GB outside torch's peak (CUDA context, slack)")
    ap.add_argument(
        "--continuation", type=int, default=1, help="the sampler's continuation_frames (sampled with the section)"
    )
    ap.add_argument("--tail", type=int, default=0, help="frames of the next section shown too (endpoint orders)")
    ap.add_argument("--kv-clips", type=int, default=0, help="clip KV cache: max_clips (0: no cache)")
    ap.add_argument("--kv-blocks", default="latter half", help="clip KV cache: blocks that read it")
    ap.add_argument("--kv-on", default=KV_ON[0], choices=KV_ON, help="clip KV cache: where K/V are kept")
    ap.add_argument("--file-gb", type=float, default=None, help="checkpoint size for the loader's RAM peak")
    args = ap.parse_args(argv)
    try:
        spec = preset(args.model)
        fps = args.fps or spec.fps
        section = args.section_frames or span_latent_frames(args.section_seconds, fps, spec.vae_stride[0])
        history = latent_frames(args.history_seconds, fps, spec.vae_stride[0])
        ctx = context_tokens(args.context, spec, args.width, args.height, section, history)
        terms = dict(
            continuation=args.continuation,
            tail=args.tail,
            source_weights=context_weight_bytes(args.context, spec),
            file_bytes=None if args.file_gb is None else int(args.file_gb * GB),
        )
        if args.kv_clips:  # the cached keys are attended to like context tokens (its source's tokens_for)
            from ..context import SectionGrid

            grid = SectionGrid(section, *latent_size(spec, args.width, args.height), spec.patch)
            kv = kv_cache_bytes(spec, grid, history, args.kv_clips, args.kv_blocks)
            terms["kv_cache" if args.kv_on == KV_ON[0] else "kv_host"] = kv
            ctx += min(args.kv_clips, history // section) * grid.tokens
        if args.budget is not None:
            p = choose(
                spec, args.budget, args.width, args.height, section, history, ctx, args.batch, args.headroom, **terms
            )
        else:
            p = plan(spec, args.width, args.height, section, history, ctx, args.swap, args.batch, **terms)
    except ValueError as e:
        print(f"error: {e}")
        return 2
    print(p.text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
