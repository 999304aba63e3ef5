"""Block swap and VRAM planner nodes on the real tiny Wan models (CPU, recording transfer)."""

import re

import pytest
import torch

from histenc.memory.offload import RecordingTransfer
from histenc.memory.vram import ModelSpec, plan as make_plan
from histenc.window import SlidingWindow

T2V = "histenc_tiny_wan21_t2v.safetensors"


def inputs(model, frames=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    dm = model.get_model_object("diffusion_model")
    x = torch.randn(1, dm.patch_embedding.weight.shape[1], frames, 8, 8, generator=g)
    return x, torch.tensor([500.0]), torch.randn(1, 6, 4096, generator=g)


def run(model, x, t, ctx, park=False):
    """One DiT call with the patcher's patches applied; optionally park every block first, as
    ComfyUI's lowvram mode leaves them on a GPU machine."""
    from comfyui_histenc.histenc_nodes.offload import KEY

    model.patch_model()
    engine = model.get_attachment(KEY)
    try:
        if park:
            engine.park()
        with torch.no_grad():
            return model.get_model_object("diffusion_model")(
                x, t, ctx, transformer_options=model.model_options["transformer_options"]
            )
    finally:
        if engine is not None:
            engine.unpark()
        model.unpatch_model()


@pytest.mark.parametrize("name", [T2V, "histenc_tiny_wan21_i2v.safetensors", "histenc_tiny_wan22_ti2v.safetensors"])
def test_planner_spec_matches_the_loaded_weights(pack, load_wan, name):
    from comfyui_histenc.histenc_nodes.offload import model_spec

    model = load_wan(name)
    measured = model_spec(model)
    derived = ModelSpec(
        "shapes",
        measured.width,
        measured.ffn,
        measured.layers,
        measured.heads,
        weight_bytes=measured.weight_bytes,
        latent_channels=measured.latent_channels,
        in_channels=measured.in_channels,
        i2v=measured.i2v,
    )
    assert (measured.width, measured.ffn, measured.layers) == (128, 256, 2)
    assert derived.block == measured.block
    assert derived.other == measured.other
    import comfy.model_management

    assert measured.weights == comfy.model_management.module_size(model.get_model_object("diffusion_model"))


def test_swapped_blocks_give_identical_output_with_lora_applied(pack, load_wan):
    from comfyui_histenc.histenc_nodes.offload import KEY, attach_block_swap

    model = load_wan(T2V)
    x, t, ctx = inputs(model)
    stock = run(model, x, t, ctx)
    lora = model.clone()
    key = "diffusion_model.blocks.1.ffn.0.weight"
    lora.add_patches({key: (torch.full((256, 128), 0.05),)}, strength_patch=1.0)
    patched = run(lora, x, t, ctx)
    assert patched.sub(stock).abs().max() > 1e-4  # the LoRA-style patch changes the output

    transfer = RecordingTransfer()
    swapped = attach_block_swap(lora, 0, prefetch=True, transfer=transfer)
    out = run(swapped, x, t, ctx, park=True)
    assert torch.equal(out, patched)  # the swap streamed the weights as ComfyUI patched them
    assert [e for e in transfer.log if e[0] == "fetch"] == [("fetch", 0), ("fetch", 1), ("fetch", 0)]
    engine = swapped.get_attachment(KEY)
    assert engine.stats.fetched_bytes == model_bytes_of_blocks(model)
    # afterwards the shared model is whole again: the stock clone still gives the stock output
    assert torch.equal(run(model, x, t, ctx), stock)


def model_bytes_of_blocks(model):
    dm = model.get_model_object("diffusion_model")
    return sum(p.numel() * p.element_size() for p in dm.blocks.parameters())


def test_block_swap_composes_with_the_context_joint(pack, load_wan):
    from comfyui_histenc.histenc_nodes._common import attach_context
    from comfyui_histenc.histenc_nodes.offload import attach_block_swap

    model = load_wan(T2V)
    x, t, ctx = inputs(model)
    history = torch.randn(1, 16, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    with_ctx = attach_context(model, [SlidingWindow(2)], history)
    expected = run(with_ctx, x, t, ctx)
    both = attach_block_swap(with_ctx, 1, prefetch=True, transfer=RecordingTransfer())
    assert torch.equal(run(both, x, t, ctx, park=True), expected)
    again = attach_block_swap(both, 2, prefetch=True, transfer=RecordingTransfer())
    fn = again.object_patches["diffusion_model.blocks.0.forward"]
    assert fn.args[1].__func__ is type(model.get_model_object("diffusion_model").blocks[0]).forward  # not nested


def test_keep_swapped_asks_comfy_to_offload_exactly_the_excess(pack):
    from comfyui_histenc.histenc_nodes.offload import keep_swapped

    class Patcher:
        load_device = torch.device("cuda")
        offload_device = torch.device("cpu")
        freed = []

        def __init__(self, loaded):
            self.loaded = loaded

        def loaded_size(self):
            return self.loaded

        def model_size(self):
            return 1000

        def partially_unload(self, device, memory_to_free):
            self.freed.append((device.type, memory_to_free))
            return memory_to_free

    assert keep_swapped(Patcher(1000), 300) == 300  # fully loaded: offload 3 blocks of 100
    assert keep_swapped(Patcher(800), 300) == 100  # ComfyUI already offloaded 200
    assert keep_swapped(Patcher(600), 300) == 0  # short card: ComfyUI offloaded more than asked
    assert Patcher.freed == [("cpu", 300), ("cpu", 100)]


def test_block_swap_node_passes_through_on_cpu_and_refuses_bad_counts(pack, load_wan):
    from comfyui_histenc.histenc_nodes.offload import BlockSwapNode

    model = load_wan(T2V)
    out = BlockSwapNode.execute(model, "1", False)
    assert out.result[0] is model
    assert "runs on the CPU" in out.result[1]
    with pytest.raises(ValueError, match="blocks_to_swap is 3 but this model has 2 blocks; pick 0..2 or 'auto'"):
        from comfyui_histenc.histenc_nodes.offload import attach_block_swap

        attach_block_swap(model, 3)
    with pytest.raises(ValueError, match="'auto' but no plan is connected"):
        BlockSwapNode.execute(model, "auto", False)
    other = make_plan(ModelSpec("x", 128, 256, 30, 1), 64, 64, 1, 0, 0)
    with pytest.raises(ValueError, match="plan is for a model with 30 blocks but this model has 2"):
        BlockSwapNode.execute(model, "auto", False, plan=other)


@pytest.mark.parametrize("value", ["abc", 3, "-1", "81"])
def test_block_swap_refuses_a_value_outside_its_options_in_one_sentence(pack, load_wan, value):
    """The host does not check a V3 combo's value: an API prompt or a stale workflow gets the node's sentence."""
    from comfyui_histenc.histenc_nodes.offload import BlockSwapNode

    sentence = rf"^blocks_to_swap {value!r} is not one of its options \('auto', '0', '1', .*, \.\.\.\); pick one"
    assert re.match(sentence, BlockSwapNode.validate_inputs(blocks_to_swap=value))
    with pytest.raises(ValueError, match=sentence):
        BlockSwapNode.execute(load_wan(T2V), value, False)
    assert BlockSwapNode.validate_inputs(blocks_to_swap="80") is True
    assert BlockSwapNode.validate_inputs() is True  # linked from another node: checked when it runs


def test_planner_node_counts_the_connected_context_and_refuses_unreachable_budgets(pack, load_wan):
    from comfyui_histenc.histenc_nodes.offload import VRAMPlanner

    model = load_wan(T2V)
    args = dict(width=64, height=64, section_frames=2, history_seconds=2.0, fps=16.0, batch=1, headroom_gb=0.0)
    plain = VRAMPlanner.execute(model, vram_budget_gb=1.0, context_tokens=0, **args).result[0]
    windowed = VRAMPlanner.execute(
        model, vram_budget_gb=1.0, context_tokens=10, context=[SlidingWindow(3)], **args
    ).result
    assert plain.section_tokens == (2 + 1) * 4 * 4  # the section's 2 frames and 1 continuation frame, 4x4 cells
    alone = VRAMPlanner.execute(model, vram_budget_gb=1.0, context_tokens=0, continuation_frames=0, **args)
    assert alone.result[0].section_tokens == 2 * 4 * 4
    assert windowed[0].context_tokens == 3 * 16 + 10  # three 4x4-cell frames from the window, plus 10
    assert windowed[1] == 0 and "predicted peak VRAM" in windowed[2]
    with pytest.raises(ValueError, match="smallest budget that works is"):
        VRAMPlanner.execute(model, vram_budget_gb=0.5, context_tokens=0, **{**args, "headroom_gb": 0.5})


def test_block_swap_steps_aside_for_a_dynamic_vram_model(pack, load_wan):
    """Dynamic VRAM holds no budget and keeps LoRA to the weights it streams, so the node passes the model on."""
    from comfyui_histenc.histenc_nodes._common import DYNAMIC_PATCHER, dynamic_vram
    from comfyui_histenc.histenc_nodes.offload import BlockSwapNode, attach_block_swap

    if DYNAMIC_PATCHER is None:
        pytest.skip("this ComfyUI has no dynamic VRAM patcher")
    from comfy.model_patcher import ModelPatcher

    model = load_wan(T2V)
    # the host's own class, on a CUDA load device as ComfyUI makes it (it builds one only for a GPU)
    dynamic = object.__new__(DYNAMIC_PATCHER)
    ModelPatcher.__init__(dynamic, model.model, torch.device("cuda"), torch.device("cpu"), model.model_size())
    assert dynamic_vram(dynamic) and not dynamic_vram(model)
    out = BlockSwapNode.execute(dynamic, "1", True)
    assert out.result[0] is dynamic
    assert "dynamic VRAM" in out.result[1] and "--disable-dynamic-vram" in out.result[1]
    assert out.result[1].count(".") == 1  # one sentence
    with pytest.raises(ValueError, match="dynamic VRAM.*block swap of 1 blocks cannot be attached"):
        attach_block_swap(dynamic, 1)


HUNYUAN = "histenc_tiny_hunyuan_video.safetensors"


def run_hunyuan(model, park=False):
    """One HunyuanVideo DiT call (double and single blocks) with the patcher's patches applied."""
    from comfyui_histenc.histenc_nodes.offload import KEY

    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 16, 3, 8, 8, generator=g)
    ctx, y = torch.randn(1, 5, 4096, generator=g), torch.randn(1, 768, generator=g)
    model.patch_model()
    engine = model.get_attachment(KEY)
    try:
        if park:
            engine.park()
        with torch.no_grad():
            dm = model.get_model_object("diffusion_model")
            opts = model.model_options["transformer_options"]
            return dm(x, torch.tensor([0.7]), ctx, y=y, guidance=torch.tensor([6.0]), transformer_options=opts)
    finally:
        if engine is not None:
            engine.unpark()
        model.unpatch_model()


def test_hunyuan_block_swap_streams_double_then_single_blocks_bit_identically(pack, load_wan):
    from comfyui_histenc.histenc_nodes.offload import KEY, attach_block_swap
    from histenc.dit.info import dit_blocks

    model = load_wan(HUNYUAN)
    dm = model.get_model_object("diffusion_model")
    paths = [p for p, _ in dit_blocks(dm)]
    nd, ns = len(dm.double_blocks), len(dm.single_blocks)
    assert paths == [f"double_blocks.{i}" for i in range(nd)] + [f"single_blocks.{i}" for i in range(ns)]
    lora = model.clone()
    key = "diffusion_model.single_blocks.0.linear2.weight"
    lora.add_patches({key: (torch.full(tuple(dm.single_blocks[0].linear2.weight.shape), 0.05),)}, 1.0)
    patched = run_hunyuan(lora)
    assert patched.sub(run_hunyuan(model)).abs().max() > 1e-4

    transfer = RecordingTransfer()
    swapped = attach_block_swap(lora, 1, prefetch=True, transfer=transfer)
    assert all(f"diffusion_model.{p}.forward" in swapped.object_patches for p in paths)
    out = run_hunyuan(swapped, park=True)
    assert torch.equal(out, patched)  # every block ran with its (patched) weights: NaN-parked ones would show
    n = nd + ns
    assert [tag for e, tag in transfer.log if e == "fetch"] == list(range(n)) + [0]  # next step's block 0 prefetched
    blocks = [b for _, b in dit_blocks(dm)]
    assert swapped.get_attachment(KEY).stats.fetched_bytes == sum(
        p.numel() * p.element_size() for b in blocks for p in b.parameters()
    )


def test_hunyuan_planner_spec_matches_the_loaded_weights(pack, load_wan):
    from comfyui_histenc.histenc_nodes.offload import VRAMPlanner, model_spec
    import comfy.model_management

    model = load_wan(HUNYUAN)
    measured = model_spec(model)
    dm = model.get_model_object("diffusion_model")
    derived = ModelSpec(
        "shapes",
        measured.width,
        measured.ffn,
        measured.layers,
        measured.heads,
        weight_bytes=measured.weight_bytes,
        in_channels=measured.in_channels,
        family="hunyuan_video",
        single_layers=measured.single_layers,
        text_tokens=measured.text_tokens,
        vec_width=measured.vec_width,
        guidance=measured.guidance,
    )
    assert (measured.family, measured.layers, measured.single_layers) == (
        "hunyuan_video",
        len(dm.double_blocks) + len(dm.single_blocks),
        len(dm.single_blocks),
    )
    assert (derived.block, derived.single_block, derived.other) == (
        measured.block,
        measured.single_block,
        measured.other,
    )
    assert measured.weights == comfy.model_management.module_size(dm)
    p = VRAMPlanner.execute(model, 1.0, 64, 64, 2, 2.0, 30.0, 0, 1, 0.0, continuation_frames=0).result[0]
    assert p.section_tokens == 2 * 4 * 4 and p.blocks == measured.layers
