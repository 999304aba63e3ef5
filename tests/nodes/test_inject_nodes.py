"""The injection joint on the real native Wan models: stock equality, context effect, patches, errors."""

import functools

import pytest
import torch

from histenc.context import ContextSource, ContextTokens
from histenc.dit.payload import PAYLOAD_KEY
from histenc.window import SlidingWindow

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


def test_reapplying_replaces_instead_of_nesting(pack, load_wan):
    from comfyui_histenc.histenc_nodes._common import attach_context
    from histenc.dit import wan

    model = load_wan()
    once = attach_context(model, [SlidingWindow(1)], None)
    twice = attach_context(once, [SlidingWindow(2)], None)
    fn = twice.object_patches["diffusion_model.forward_orig"]
    assert isinstance(fn, functools.partial) and fn.func is wan.forward_orig
    assert not isinstance(fn.args[1], functools.partial)


def test_unsupported_model_is_refused_in_one_sentence(pack, load_wan):
    from comfyui_histenc.histenc_nodes._common import family

    class Fake:
        def get_model_object(self, name):
            return torch.nn.Linear(1, 1)

    with pytest.raises(ValueError, match="Linear, which has no context adapter"):
        family(Fake())
