"""VRAM planner and block swap nodes: how many blocks ComfyUI keeps off the GPU, and optional block prefetch.

ComfyUI's lowvram mode already keeps offloaded layers in pinned host memory, applies LoRA to them
as they arrive and casts them per layer on its offload streams. The block swap node builds on it:
after ComfyUI has loaded the model for sampling it asks ComfyUI to offload until exactly
``blocks_to_swap`` blocks' worth of weights are off the GPU (ComfyUI's own ``partially_unload``),
so the planner's count (which sees the context tokens ComfyUI's estimate does not) decides the
budget. With ``prefetch`` on, histenc's BlockSwap also streams each block's offloaded layers as one
batch on a side CUDA stream while the previous block computes. A MODEL on ComfyUI's dynamic VRAM holds
no such budget (the host streams every layer itself), so the node passes it through with a note.
See docs/offload.md.
"""

from __future__ import annotations

import logging

import functools

import comfy.patcher_extension
from comfy_api.latest import io

from ..histenc.context import SectionGrid
from ..histenc.dit.info import dit_blocks
from ..histenc.memory.offload import BlockSwap, CudaTransfer
from ..histenc.memory.vram import choose, latent_frames, latent_size, source_terms

from ._common import BLOCK_SWAP_KEY as KEY, Context, PlanType, check_combo, dynamic_vram, keep_swapped, model_spec

log = logging.getLogger(__name__)

MAX_CHOICE = 80  # Wan-14B has 40 blocks, HunyuanVideo 60 (20 double + 40 single); room for deeper DiTs
SWAP_CHOICES = ["auto"] + [str(i) for i in range(MAX_CHOICE + 1)]


def block_forward_key(path: str) -> str:
    """The object-patch key of a block's forward; ``path`` from ``dit_blocks`` ("blocks.3", "single_blocks.0")."""
    return f"diffusion_model.{path}.forward"


def original_forward(model, block, path: str):
    """The block's forward before any block swap of ours (another extension's patch is kept)."""
    current = model.object_patches.get(block_forward_key(path))
    if isinstance(current, functools.partial) and isinstance(getattr(current.func, "__self__", None), BlockSwap):
        return current.args[1]
    return current if current is not None else type(block).forward.__get__(block)


def dynamic_note(blocks_to_swap: int) -> str:
    """Why a dynamic-VRAM MODEL passes through: its host already does the swap, per layer and without a budget."""
    return (
        "this ComfyUI places the model's weights with dynamic VRAM: it streams each layer to the GPU as it runs, "
        "applies LoRA on the way and keeps resident only what free VRAM allows at each step, so block swap "
        f"({blocks_to_swap} blocks) leaves the model unchanged; start ComfyUI with --disable-dynamic-vram to have "
        "the swap hold its budget."
    )


def attach_block_swap(model, blocks_to_swap: int, prefetch: bool = False, transfer=None):
    """A clone of ``model`` that keeps ``blocks_to_swap`` blocks' worth of weights off the GPU.

    ``transfer`` replaces the CUDA transfer (tests use histenc.offload.RecordingTransfer on CPU).
    The BlockSwap engine, when prefetching, is the clone's attachment ``histenc_block_swap``.
    A dynamic-VRAM MODEL is refused: ComfyUI's ``partially_unload`` holds no budget there, and its
    casting applies LoRA only to weights it streams itself, so a prefetched block would run without it.
    """
    spec = model_spec(model)
    if not 0 <= blocks_to_swap <= spec.layers:
        raise ValueError(
            f"blocks_to_swap is {blocks_to_swap} but this model has {spec.layers} blocks; "
            f"pick 0..{spec.layers} or 'auto'."
        )
    if dynamic_vram(model):
        raise ValueError(
            f"this MODEL runs on ComfyUI's dynamic VRAM, which streams every layer itself and holds no budget of "
            f"resident weights, so a block swap of {blocks_to_swap} blocks cannot be attached to it; start ComfyUI "
            "with --disable-dynamic-vram to use block swap."
        )
    m = model.clone()
    swap_bytes = spec.swap_bytes(blocks_to_swap)

    def prepare_sampling(executor, patcher, *args, **kwargs):
        out = executor(patcher, *args, **kwargs)
        keep_swapped(patcher, swap_bytes)
        return out

    m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.PREPARE_SAMPLING, KEY, prepare_sampling)
    m.set_attachments(KEY + "_count", blocks_to_swap)  # for the long-video sampler's printed plan
    if not prefetch:
        return m
    dm = m.get_model_object("diffusion_model")
    blocks = dit_blocks(dm)  # Wan: blocks; HunyuanVideo: double_blocks then single_blocks
    engine = BlockSwap([b for _, b in blocks], transfer if transfer is not None else LazyCuda(model.load_device))
    for i, (path, block) in enumerate(blocks):
        m.add_object_patch(block_forward_key(path), engine.wrap(i, original_forward(m, block, path)))

    def outer_sample(executor, *args, **kwargs):
        try:
            return executor(*args, **kwargs)
        finally:
            engine.release()  # no device buffers or prefetches outlive the run

    m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, KEY, outer_sample)
    m.set_attachments(KEY, engine)
    return m


class LazyCuda:
    """A CudaTransfer made on first use, so building the graph never touches CUDA."""

    def __init__(self, device):
        self.device, self._t = device, None

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        if self._t is None:
            self._t = CudaTransfer(self.device)
        return getattr(self._t, name)

    def release(self):
        if self._t is not None:
            self._t.release()


class VRAMPlanner(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="HistEncVRAMPlanner",
            display_name="VRAM Planner",
            category="histenc/memory",
            description="Predicts peak VRAM of one sampling step (weights, swap slots, activations of section + "
            "context tokens) and picks the fewest blocks to swap that fit a budget.",
            inputs=[
                io.Model.Input(
                    "model",
                    tooltip="The Wan or HunyuanVideo model to plan for (sizes and weight dtype are read from it).",
                ),
                io.Float.Input(
                    "vram_budget_gb",
                    default=8.0,
                    min=0.5,
                    max=256.0,
                    step=0.5,
                    tooltip="Memory of the card in GB (6, 8, 12...).",
                ),
                io.Int.Input("width", default=832, min=16, max=4096, step=16, tooltip="Video width in pixels."),
                io.Int.Input("height", default=480, min=16, max=4096, step=16, tooltip="Video height in pixels."),
                io.Int.Input(
                    "section_frames",
                    default=9,
                    min=1,
                    max=64,
                    tooltip="Latent frames generated per section, as in the long-video sampler.",
                ),
                io.Float.Input(
                    "history_seconds",
                    default=60.0,
                    min=0.0,
                    max=3600.0,
                    step=1.0,
                    tooltip="The longest history a section will see (the video length).",
                ),
                io.Float.Input(
                    "fps",
                    default=16.0,
                    min=1.0,
                    max=120.0,
                    step=1.0,
                    tooltip="Frames per second (Wan 2.1: 16, Wan 2.2: 24).",
                ),
                io.Int.Input(
                    "context_tokens",
                    default=0,
                    min=0,
                    max=10_000_000,
                    tooltip="Context tokens per step when no context is connected (added to a connected one's).",
                ),
                io.Int.Input(
                    "batch",
                    default=2,
                    min=1,
                    max=8,
                    tooltip="Latents per model call: 2 when cond and uncond run together (cfg > 1); "
                    "ComfyUI batches them when it believes memory allows, so 2 is the safe plan.",
                ),
                io.Float.Input(
                    "headroom_gb",
                    default=0.5,
                    min=0.0,
                    max=16.0,
                    step=0.1,
                    tooltip="Memory outside torch's peak: CUDA context, allocator slack, the desktop.",
                ),
                Context.Input("context", optional=True, tooltip="The context mode(s); their token formulas are used."),
                io.Int.Input(
                    "continuation_frames",
                    default=1,
                    min=0,
                    max=16,
                    optional=True,
                    tooltip="The Long Video Sampler's continuation_frames: given latent frames each section samples "
                    "beside its own.",
                ),
            ],
            outputs=[
                PlanType.Output(display_name="plan"),
                io.Int.Output(display_name="blocks_to_swap"),
                io.String.Output(display_name="report"),
            ],
        )

    @classmethod
    def execute(
        cls,
        model,
        vram_budget_gb,
        width,
        height,
        section_frames,
        history_seconds,
        fps,
        context_tokens,
        batch,
        headroom_gb,
        context=None,
        continuation_frames=1,
    ) -> io.NodeOutput:
        spec = model_spec(model)
        history = latent_frames(history_seconds, fps, spec.vae_stride[0])
        lat_h, lat_w = latent_size(spec, width, height)
        grid = SectionGrid(section_frames, lat_h, lat_w, spec.patch)
        terms = source_terms(context or [], spec, grid, history)
        p = choose(
            spec,
            vram_budget_gb,
            width,
            height,
            section_frames,
            history,
            context_tokens + terms.tokens,
            batch,
            headroom_gb,
            continuation=min(continuation_frames, history),
            kv_cache=terms.kv_device,
            kv_host=terms.kv_host,
            source_weights=terms.weights,
        )
        report = p.text()
        log.info(f"VRAM plan\n{report}")
        return io.NodeOutput(p, p.blocks_to_swap, report)


class BlockSwapNode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="HistEncBlockSwap",
            display_name="Block Swap",
            category="histenc/memory",
            description="Keeps N transformer blocks' weights in system RAM and streams them in as they run "
            "(through ComfyUI's own offloading; optional block prefetch). 'auto' takes N from a VRAM plan.",
            inputs=[
                io.Model.Input(
                    "model", tooltip="A Wan or HunyuanVideo model from the stock loaders (LoRAs applied or not)."
                ),
                io.Combo.Input(
                    "blocks_to_swap",
                    options=SWAP_CHOICES,
                    default="auto",
                    tooltip="How many blocks' worth of weights stay off the GPU; 'auto' uses the connected VRAM plan.",
                ),
                io.Boolean.Input(
                    "prefetch",
                    default=False,
                    tooltip="Stream each block's offloaded weights on a side CUDA stream while the "
                    "previous block computes (off: ComfyUI casts them layer by layer).",
                ),
                PlanType.Input("plan", optional=True, tooltip="A plan from the VRAM Planner, for 'auto'."),
            ],
            outputs=[io.Model.Output(display_name="model"), io.String.Output(display_name="report")],
        )

    @classmethod
    def validate_inputs(cls, blocks_to_swap=None):
        """The host does not check a V3 combo's value; a linked one (None here) is checked when the node runs."""
        return True if blocks_to_swap is None else check_combo("blocks_to_swap", blocks_to_swap, SWAP_CHOICES) or True

    @classmethod
    def execute(cls, model, blocks_to_swap, prefetch, plan=None) -> io.NodeOutput:
        problem = check_combo("blocks_to_swap", blocks_to_swap, SWAP_CHOICES)
        if problem:
            raise ValueError(problem)
        spec = model_spec(model)
        if blocks_to_swap == "auto":
            if plan is None:
                raise ValueError(
                    "blocks_to_swap is 'auto' but no plan is connected; connect a VRAM Planner "
                    "or pick a number of blocks."
                )
            if plan.blocks != spec.layers:
                raise ValueError(
                    f"the connected plan is for a model with {plan.blocks} blocks but this model has "
                    f"{spec.layers}; plan with this model."
                )
            n = plan.blocks_to_swap
        else:
            n = int(blocks_to_swap)
        device = model.load_device
        if device.type == "cpu":
            note = (
                f"the model runs on the CPU, where there is no VRAM to save: block swap ({n} blocks) is off "
                "and the model passes through unchanged."
            )
            log.info(f"{note}")
            return io.NodeOutput(model, note)
        if dynamic_vram(model):
            note = dynamic_note(n)
            log.info(note)
            return io.NodeOutput(model, note)
        if prefetch and device.type != "cuda":
            raise ValueError(
                f"prefetch streams weights on a CUDA side stream but the model runs on {device}; "
                "turn prefetch off to let ComfyUI offload with this budget."
            )
        out = attach_block_swap(model, n, prefetch)
        report = (
            f"{n} of {spec.layers} blocks swapped: {spec.swap_bytes(n) / 2**30:.2f} GB kept in system RAM, "
            f"{(spec.weights - spec.swap_bytes(n)) / 2**30:.2f} GB of weights on the GPU, "
            f"{'block prefetch on a side stream' if prefetch else 'ComfyUI per-layer casting'}."
        )
        if plan is not None:
            report += f"\n{plan.text()}"
        log.info(f"{report}")
        return io.NodeOutput(out, report)


NODES = [VRAMPlanner, BlockSwapNode]
