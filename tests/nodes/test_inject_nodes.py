"""The injection joint on the real native Wan models: stock equality, context effect, patches, errors."""

import copy

import pytest
import torch

from histenc.context import ContextSource, ContextTokens
from histenc.dit.payload import JOINT_KEY, PAYLOAD_KEY
from histenc.window import SlidingWindow

T2V, TI2V = "histenc_tiny_wan21_t2v.safetensors", "histenc_tiny_wan22_ti2v.safetensors"

VARIANTS = {
    "histenc_tiny_wan21_t2v.safetensors": 16,
    "histenc_tiny_wan21_i2v.safetensors": 16,
    "histenc_tiny_wan22_ti2v.safetensors": 48,
}


class Fixed(ContextSource):
    """A context source returning fixed tokens (for width and count checks)."""

    def __init__(self, tokens, positions, extent=None):
        self.out = ContextTokens(tokens, positions, extent)

    def context(self, history, grid, dit):
        return self.out

    def tokens_for(self, grid, history_frames):
        return self.out.count


def inputs(model, channels, frames=3, seed=0, per_frame_t=False):
    g = torch.Generator().manual_seed(seed)
    dm = model.get_model_object("diffusion_model")
    in_dim = dm.patch_embedding.weight.shape[1]
    x = torch.randn(1, in_dim, frames, 8, 8, generator=g)
    t = torch.full((1, frames), 500.0) if per_frame_t else torch.tensor([500.0])
    ctx = torch.randn(1, 6, 4096, generator=g)
    kwargs = {}
    if in_dim == 36:
        kwargs["clip_fea"] = torch.randn(1, 257, 1280, generator=g)
    return x, t, ctx, kwargs


def run(model, x, t, ctx, kwargs, transformer_options=None):
    """Call the DiT with the patcher's object patches applied (as sampling does)."""
    model.patch_model()
    try:
        dm = model.get_model_object("diffusion_model")
        with torch.no_grad():
            return dm(x, t, ctx, transformer_options=transformer_options or {}, **kwargs)
    finally:
        model.unpatch_model()


@pytest.mark.parametrize("name", list(VARIANTS))
def test_no_payload_is_bit_identical_to_stock(pack, load_wan, name):
    from comfyui_histenc.histenc_nodes._common import attach_context

    model = load_wan(name)
    x, t, ctx, kw = inputs(model, VARIANTS[name], per_frame_t="22" in name)
    stock = run(model, x, t, ctx, kw)
    patched = attach_context(model, [SlidingWindow(2)], None)
    opts = dict(patched.model_options["transformer_options"])
    assert run(patched, x, t, ctx, kw, {}).sub(stock).abs().max().item() == 0
    # a payload with no history gives zero context tokens: the rewritten forward must still match stock
    assert run(patched, x, t, ctx, kw, opts).sub(stock).abs().max().item() == 0


@pytest.mark.parametrize("name", list(VARIANTS))
def test_window_context_changes_output_and_keeps_shape(pack, load_wan, name):
    from comfyui_histenc.histenc_nodes._common import attach_context

    model = load_wan(name)
    c = VARIANTS[name]
    x, t, ctx, kw = inputs(model, c, per_frame_t="22" in name)
    stock = run(model, x, t, ctx, kw)
    history = torch.randn(1, c, 5, 8, 8, generator=torch.Generator().manual_seed(1))
    patched = attach_context(model, [SlidingWindow(2)], history)
    opts = patched.model_options["transformer_options"]
    out = run(patched, x, t, ctx, kw, opts)
    assert out.shape == stock.shape
    assert torch.isfinite(out).all()
    assert out.sub(stock).abs().max().item() > 1e-6
    # a different history gives a different output: the tokens really reach attention
    other = attach_context(model, [SlidingWindow(2)], history.flip(2))
    assert run(other, x, t, ctx, kw, other.model_options["transformer_options"]).sub(out).abs().max() > 1e-6


def test_context_tokens_get_clean_timestep_on_wan22(pack, load_wan):
    from comfyui_histenc.histenc_nodes._common import attach_context

    model = load_wan("histenc_tiny_wan22_ti2v.safetensors")
    x, t, ctx, kw = inputs(model, 48, per_frame_t=True)
    history = torch.randn(1, 48, 4, 8, 8)
    outs = {}
    for clean in (True, False):
        m = attach_context(model, [SlidingWindow(1)], history, clean_context=clean)
        outs[clean] = run(m, x, t, ctx, kw, m.model_options["transformer_options"])
    assert model.model.__class__.__name__ == "WAN22"
    assert m.model_options["transformer_options"][PAYLOAD_KEY].clean_context is False
    assert (outs[True] - outs[False]).abs().max() > 1e-6


def test_dit_block_patches_still_run_with_context(pack, load_wan):
    from comfyui_histenc.histenc_nodes._common import attach_context

    model = load_wan()
    x, t, ctx, kw = inputs(model, 16)
    seen = []

    def replace(args, extra):
        seen.append(args["img"].shape[1])
        return extra["original_block"](args)

    patched = attach_context(model, [SlidingWindow(2)], torch.randn(1, 16, 4, 8, 8))
    patched.set_model_patch_replace(replace, "dit", "double_block", 1)
    run(patched, x, t, ctx, kw, patched.model_options["transformer_options"])
    assert seen == [3 * 16 + 2 * 16]  # section tokens + two window frames of 4x4 cells


def test_wrong_width_names_both_numbers(pack, load_wan):
    from comfyui_histenc.histenc_nodes._common import attach_context

    model = load_wan()
    x, t, ctx, kw = inputs(model, 16)
    bad = Fixed(torch.zeros(1, 4, 64), torch.zeros(4, 3))
    patched = attach_context(model, [bad], torch.zeros(1, 16, 2, 8, 8))
    with pytest.raises(ValueError, match=r"64 wide.*128 wide"):
        run(patched, x, t, ctx, kw, patched.model_options["transformer_options"])


def options(model, **extra):
    """The MODEL's transformer_options (the joint's wrapper and payload) plus ``extra``, as sampling passes them."""
    return {**model.model_options["transformer_options"], **extra}


def host_version() -> tuple[int, ...]:
    import comfyui_version

    return tuple(int(p) for p in comfyui_version.__version__.split(".")[:3])


def relative_error(out, reference) -> float:
    return (out - reference).abs().max().item() / reference.abs().max().item()


@pytest.mark.parametrize(
    "name, rope_options",
    [(T2V, None), (T2V, {"scale_t": 2.0, "shift_t": 1.0, "shift_y": 3.0, "scale_x": 0.5}), (TI2V, None)],
)
def test_window_equals_the_stock_forward_on_the_concatenated_latent(pack, load_wan, name, rope_options):
    """History frames at t = -n..-1 beside the section = stock on [history, section] at t = 0..n+T-1 (RoPE is
    relative). Wan 2.2 runs on per-frame timesteps: there the stock run gets the history frames at timestep 0
    through the host's own noise-mask rule (WAN22.process_timestep), and our context tokens are clean."""
    from comfyui_histenc.histenc_nodes._common import attach_context

    model = load_wan(name)
    c, n, frames = VARIANTS[name], 2, 3
    g = torch.Generator().manual_seed(7)
    history = torch.randn(1, c, 4, 8, 8, generator=g)
    x = torch.randn(1, c, frames, 8, 8, generator=g)
    text = torch.randn(1, 6, 4096, generator=g)
    whole = torch.cat([history[:, :, -n:], x], dim=2)
    t = torch.tensor([500.0])
    t_section = t_whole = t
    if name == TI2V:
        mask = torch.ones(1, 1, n + frames, 8, 8)
        mask[:, :, :n] = 0  # the history frames are given: clean
        t_whole = model.model.process_timestep(t, x=whole, denoise_mask=mask)
        t_section = model.model.process_timestep(t, x=x, denoise_mask=mask[:, :, n:])
        assert t_whole.tolist() == [[0.0] * n + [500.0] * frames]
    extra = {} if rope_options is None else {"rope_options": rope_options}
    stock = run(model, whole, t_whole, text, {}, extra)[:, :, n:]
    m = attach_context(model, [SlidingWindow(n)], history)
    out = run(m, x, t_section, text, {}, options(m, **extra))
    err = relative_error(out, stock)
    print(f"\n{name} rope_options={rope_options}: max |ours - stock| / max |stock| = {err:.3g}")
    assert err <= 1e-5
    assert (run(model, x, t_section, text, {}, extra) - stock).abs().max() > 1e-3  # the context matters here


def test_hosts_block_patches_attention_patches_and_context_latents_run_with_the_context(pack, load_wan):
    from comfyui_histenc.histenc_nodes._common import attach_context

    if host_version() < (0, 33):
        pytest.skip("ComfyUI 0.3.75's Wan forward has no double_block patches, block_index or context_latents")

    model = load_wan(T2V)
    x, t, text, kw = inputs(model, 16)
    frames, cells = x.shape[2], 4 * 4
    # an in-context reference as WAN21 / WAN22.extra_conds hand it on: a list of model-space latents (CONDList),
    # which _apply_model passes to the DiT as the keyword context_latents
    reference = torch.randn(1, 16, 2, 8, 8, generator=torch.Generator().manual_seed(5))
    kw = {"context_latents": [reference]}
    m = attach_context(model, [SlidingWindow(2)], torch.randn(1, 16, 4, 8, 8))
    seen = {"double_block": [], "attn1": []}

    def double_block(args):
        seen["double_block"].append((args["block_index"], args["img"].shape[1]))
        return {"img": args["img"]}

    def attn1(args):
        opts = args["transformer_options"]
        seen["attn1"].append((opts["block_index"], opts["total_blocks"], args["q"].shape[1]))
        return args["x"]

    m.set_model_patch(double_block, "double_block")
    m.set_model_attn1_patch(attn1)
    out = run(m, x, t, text, kw, options(m))
    total = frames * cells + 2 * cells + 2 * cells  # section, the reference's own tokens, two window frames
    assert seen["double_block"] == [(0, total), (1, total)]
    assert seen["attn1"] == [(0, 2, total), (1, 2, total)]
    assert out.shape == x.shape and torch.isfinite(out).all()  # the stock main_len slicing still holds
    without = run(m, x, t, text, {}, options(m))
    assert (out - without).abs().max() > 1e-4  # the reference latent really reached the blocks


def test_reapplying_replaces_instead_of_nesting(pack, load_wan):
    from comfyui_histenc.histenc_nodes._common import attach_context
    from histenc.dit import wan

    model = load_wan()
    history = torch.randn(1, 16, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    once = attach_context(model, [SlidingWindow(1)], history)
    twice = attach_context(once, [SlidingWindow(2)], history)
    assert twice.model_options["transformer_options"]["wrappers"]["diffusion_model"][JOINT_KEY] == [wan.joint]
    assert "diffusion_model.forward_orig" not in twice.object_patches
    assert once.model_options["transformer_options"][PAYLOAD_KEY].sources[0].frames == 1  # the input is unchanged
    x, t, text, kw = inputs(model, 16)
    direct = attach_context(model, [SlidingWindow(2)], history)
    assert torch.equal(run(twice, x, t, text, kw, options(twice)), run(direct, x, t, text, kw, options(direct)))


def test_deep_copied_clone_routes_to_the_live_dit(pack, load_wan):
    """MultiGPU deep clones copy model_options onto another DiT: the joint must run that one, not the first."""
    from comfyui_histenc.histenc_nodes._common import attach_context

    history = torch.randn(1, 16, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    first = attach_context(load_wan(), [SlidingWindow(2)], history)
    second = load_wan()  # the second device's own DiT, with weights of its own
    with torch.no_grad():
        second.get_model_object("diffusion_model").head.head.weight.mul_(2.0)
    second.model_options = copy.deepcopy(first.model_options)
    x, t, text, kw = inputs(second, 16)
    expected = attach_context(second, [SlidingWindow(2)], history)
    out = run(second, x, t, text, kw, options(second))
    assert torch.equal(out, run(expected, x, t, text, kw, options(expected)))
    assert (out - run(first, x, t, text, kw, options(first))).abs().max() > 1e-3
    if hasattr(first, "deepclone_multigpu"):  # newer hosts: the MultiGPU path itself (a fresh DiT from the loader)
        clone = first.deepclone_multigpu()
        assert clone.get_model_object("diffusion_model") is not first.get_model_object("diffusion_model")
        with torch.no_grad():
            clone.get_model_object("diffusion_model").head.head.weight.mul_(2.0)
        assert torch.equal(run(clone, x, t, text, kw, options(clone)), out)


def test_unsupported_model_is_refused_in_one_sentence(pack, load_wan):
    from comfyui_histenc.histenc_nodes._common import family

    class Fake:
        def get_model_object(self, name):
            return torch.nn.Linear(1, 1)

    with pytest.raises(ValueError, match="Linear, which has no context adapter"):
        family(Fake())
