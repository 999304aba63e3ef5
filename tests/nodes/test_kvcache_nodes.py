"""The clip KV cache on the real tiny Wan DiT: equals block-causal attention, stock when empty, bounded memory."""

import pytest
import torch
import torch.nn.functional as F

from histenc.kvcache import AttentionView
from tests.helpers import interrupt_third_section, run_long_video

T2V, I2V, TI2V = (
    "histenc_tiny_wan21_t2v.safetensors",
    "histenc_tiny_wan21_i2v.safetensors",
    "histenc_tiny_wan22_ti2v.safetensors",
)


def dit_call(model, x, t, text, **kwargs):
    """The DiT of ``model`` called as sampling calls it: its patches applied, its transformer_options (wrappers)."""
    import comfy.model_management

    comfy.model_management.load_models_gpu([model])
    options = model.model_options.get("transformer_options", {})
    with torch.no_grad():
        return model.get_model_object("diffusion_model")(x, t, text, transformer_options=options, **kwargs)


def kv_views(model) -> list:
    """The attention views the clip KV cache's wrapper on ``model`` applies (one at most)."""
    from comfyui_histenc.histenc_nodes.kvcache import KEY

    wrappers = model.model_options.get("transformer_options", {}).get("wrappers", {})
    return [w.args[0] for w in wrappers.get("diffusion_model", {}).get(KEY, [])]


def block_causal_attention(monkeypatch, total: int, clip_tokens: int):
    """Make stock Wan self-attention over ``total`` tokens block-causal in clips of ``clip_tokens``."""
    import comfy.ldm.wan.model as wan_model

    stock = wan_model.optimized_attention
    clip_of = torch.arange(total) // clip_tokens
    allowed = clip_of[:, None] >= clip_of[None, :]

    def attention(q, k, v, heads, mask=None, transformer_options={}, **kw):
        if q.shape[1] != total or k.shape[1] != total:  # cross-attention to the text
            return stock(q, k, v, heads, mask=mask, transformer_options=transformer_options, **kw)
        b = q.shape[0]

        def split(t):
            return t.view(b, total, heads, -1).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(q), split(k), split(v), attn_mask=allowed)
        return out.transpose(1, 2).reshape(b, total, -1)

    monkeypatch.setattr(wan_model, "optimized_attention", attention)


def test_cached_clips_equal_block_causal_attention_over_the_whole_video(pack, load_wan, monkeypatch):
    from comfyui_histenc.histenc_nodes.kvcache import ClipKVCacheSource

    model = load_wan(T2V)
    g = torch.Generator().manual_seed(3)
    frames, clips = 2, 3
    video = torch.randn(1, 16, frames * clips, 4, 4, generator=g)  # clips 0, 1 clean; clip 2 is being denoised
    text = torch.randn(1, 6, 4096, generator=g)
    cond = [[text, {}]]
    source = ClipKVCacheSource(max_clips=clips, blocks="all", tolerance=0.0)

    for i in range(clips - 1):
        # nothing cached before the first clip: the stock model; after it, a clone that attends to the cache
        assert (source.before_section(model, i, i * frames, 0, "p", cond) is model) == (i == 0)
        source.after_section(model, video[:, :, i * frames : (i + 1) * frames], i, "p", cond)
    section = source.before_section(model, clips - 1, (clips - 1) * frames, 0, "p", cond)
    assert [c.index for c in source.sections[clips - 1][2]] == [0, 1]
    cached = dit_call(section, video[:, :, -frames:], torch.tensor([500.0]), text)

    t = torch.tensor([[0.0] * frames * (clips - 1) + [500.0] * frames])
    full = dit_call(model, video, t, text)
    tokens = frames * 2 * 2  # 4x4 latent pixels -> 2x2 cells per frame
    block_causal_attention(monkeypatch, tokens * clips, tokens)
    reference = dit_call(model, video, t, text)

    err = (cached - reference[:, :, -frames:]).abs().max().item()
    scale = reference.abs().max().item()
    assert err <= 1e-4 * scale, (err, scale)
    # the construction can tell causal from bidirectional attention across sections
    assert (full - reference)[:, :, -frames:].abs().max().item() > 100 * err


def test_empty_view_is_bit_identical_to_stock(pack, load_wan):
    from comfyui_histenc.histenc_nodes.kvcache import ClipKVCacheSource, with_view

    model = load_wan(T2V)
    g = torch.Generator().manual_seed(0)
    x, text = torch.randn(1, 16, 3, 8, 8, generator=g), torch.randn(1, 6, 4096, generator=g)
    stock = dit_call(model, x, torch.tensor([500.0]), text)
    patched = with_view(model, AttentionView([0, 1], [], time_start=7))
    assert len(kv_views(patched)) == 1 and not patched.object_patches
    assert torch.equal(dit_call(patched, x, torch.tensor([500.0]), text), stock)
    # an empty cache does not even clone the model
    source = ClipKVCacheSource()
    assert source.before_section(model, 0, 0, 0, "p", [[text, {}]]) is model


def test_latter_half_patches_only_later_blocks_and_history_changes_output(pack, load_wan):
    from comfyui_histenc.histenc_nodes.kvcache import ClipKVCacheSource

    model = load_wan(T2V)
    g = torch.Generator().manual_seed(1)
    text = torch.randn(1, 6, 4096, generator=g)
    source = ClipKVCacheSource(max_clips=2)
    source.before_section(model, 0, 0, 0, "p", [[text, {}]])
    source.after_section(model, torch.randn(1, 16, 2, 4, 4, generator=g), 0, "p", [[text, {}]])
    assert set(source.cache.clips[0].kv) == {1}  # 2 blocks: the latter half is block 1
    section = source.before_section(model, 1, 2, 1, "p", [[text, {}]])
    assert [v.blocks for v in kv_views(section)] == [frozenset({1})] and not section.object_patches
    x = torch.randn(1, 16, 3, 4, 4, generator=g)
    stock = dit_call(model, x, torch.tensor([500.0]), text)
    assert (dit_call(section, x, torch.tensor([500.0]), text) - stock).abs().max() > 1e-4


def test_a_section_model_attends_with_the_dit_it_runs_on(pack, load_wan):
    """A MODEL whose DiT object changes (a MultiGPU deep clone, a reloaded model) patches its own blocks."""
    import copy

    from comfyui_histenc.histenc_nodes.kvcache import ClipKVCacheSource, with_view

    model = load_wan(T2V)
    g = torch.Generator().manual_seed(2)
    text = torch.randn(1, 6, 4096, generator=g)
    source = ClipKVCacheSource(max_clips=2, blocks="all")
    source.before_section(model, 0, 0, 0, "p", [[text, {}]])
    source.after_section(model, torch.randn(1, 16, 2, 4, 4, generator=g), 0, "p", [[text, {}]])
    section = source.before_section(model, 1, 2, 1, "p", [[text, {}]])
    (view,) = kv_views(section)
    x, t = torch.randn(1, 16, 2, 4, 4, generator=g), torch.tensor([500.0])
    first = dit_call(section, x, t, text)

    old = section.model.diffusion_model
    new = copy.deepcopy(old)
    with torch.no_grad():
        new.blocks[1].self_attn.v.weight.mul_(-1.0)  # the other DiT computes differently
    section.model.diffusion_model = new
    try:
        moved = dit_call(section, x, t, text)
        fresh = with_view(model, view)  # the view bound to the new DiT from the start
        reference = dit_call(fresh, x, t, text)
    finally:
        section.model.diffusion_model = old
    assert torch.equal(moved, reference) and (moved - first).abs().max() > 1e-4
    assert not any("forward" in m.__dict__ for dm in (old, new) for m in dm.modules())  # nothing left patched


@pytest.fixture
def stubs(test_nodes):
    return test_nodes


def run_sampler(stubs, model, source, text, seconds, size=32, cfg=1.0):
    """The long-video sampler with one latent frame per section at 4 fps, 1 step, continuation 1."""
    return run_long_video(stubs, model, [source], text, seconds, size, cfg)


def test_sampler_keeps_kv_memory_bounded_and_recomputes_evicted_clips(pack, load_wan, stubs):
    from comfyui_histenc.histenc_nodes.kvcache import ClipKVCacheSource

    model = load_wan(T2V)
    source = ClipKVCacheSource(max_clips=2, blocks="all")
    # 6 s at 4 fps: 24 frames -> 7 latent frames, one section each; the first prompt returns at the end
    prompts = "0:00 a red kite\n0:02 a blue boat\n0:04 a red kite"
    latents = run_sampler(stubs, model, source, prompts, 6.0)
    cache = source.cache
    assert latents.shape[2] == len(cache.clips) == 7
    assert [c.start for c in cache.clips] == list(range(7))
    per_clip = max(sum(t.numel() * t.element_size() for kv in c.kv.values() for t in kv) for c in cache.held())
    assert len(cache.held()) <= 3 and cache.stats.held_bytes_peak <= 3 * per_clip  # K selected + the one recorded
    assert cache.stats.evicted > 0 and cache.stats.recomputed > 0  # the returning prompt re-selects evicted clips
    assert torch.isfinite(latents).all()
    # a second run of the same node output starts from an empty cache, not the previous video
    again = run_sampler(stubs, model, source, prompts, 6.0)
    assert torch.equal(again, latents) and len(cache.clips) == 7


def test_resumed_job_rebuilds_the_cache_and_matches_an_uninterrupted_run(pack, load_wan, stubs, monkeypatch, tmp_path):
    import comfy.model_management as mm
    import folder_paths
    from comfyui_histenc.histenc_nodes.kvcache import ClipKVCacheSource

    monkeypatch.setattr(folder_paths, "get_output_directory", lambda: str(tmp_path))
    model = load_wan(T2V)
    prompts = "0:00 a red kite\n0:01 a blue boat"
    full = run_long_video(stubs, model, [ClipKVCacheSource(max_clips=2, blocks="all")], prompts, 2.0)
    with monkeypatch.context() as m:
        interrupt_third_section(m)
        with pytest.raises(mm.InterruptProcessingException):
            run_long_video(stubs, model, [ClipKVCacheSource(max_clips=2, blocks="all")], prompts, 2.0, job="kv_resume")
    source = ClipKVCacheSource(max_clips=2, blocks="all")  # a re-queued prompt starts from an empty cache
    resumed = run_long_video(stubs, model, [source], prompts, 2.0, job="kv_resume")
    assert [c.start for c in source.cache.clips] == [0, 1, 2]  # the two sections from disk were recorded again
    assert torch.equal(resumed, full)


@pytest.mark.parametrize("name", [I2V, TI2V])
def test_sampler_runs_on_every_wan_variant(pack, load_wan, stubs, name):
    from comfyui_histenc.histenc_nodes.kvcache import ClipKVCacheSource

    model = load_wan(name)
    source = ClipKVCacheSource(max_clips=2)
    # cfg > 1: cond and uncond share one batch, both attend to the cached clips
    latents = run_sampler(
        stubs, model, source, "0:00 a red kite\n0:01 a blue boat", 2.0, size=32 if name != TI2V else 64, cfg=3.0
    )
    assert torch.isfinite(latents).all() and len(source.cache.clips) == latents.shape[2]


def test_cache_composes_with_a_context_mode_through_the_joint(pack, load_wan, stubs, monkeypatch):
    """A sliding window's tokens (appended by the joint's block hooks) pass through the cached attention."""
    from comfyui_histenc.histenc_nodes.kvcache import ClipKVCacheSource
    from histenc.dit import wan_kv
    from histenc.window import SlidingWindow

    model = load_wan(T2V)
    lengths = []
    real = wan_kv.self_attention

    def spy(view, embedder, module, block, original, x, freqs, transformer_options={}):
        if view.active(block):
            lengths.append((x.shape[1], freqs.shape[1]))
        return real(view, embedder, module, block, original, x, freqs, transformer_options)

    monkeypatch.setattr(wan_kv, "self_attention", spy)
    prompts = "0:00 a red kite\n0:01 a blue boat"
    alone = run_long_video(stubs, model, [ClipKVCacheSource(max_clips=2, blocks="all")], prompts, 2.0)
    longest_alone = max(n for n, _ in lengths)
    lengths.clear()
    source = ClipKVCacheSource(max_clips=2, blocks="all")
    both = run_long_video(stubs, model, [SlidingWindow(1), source], prompts, 2.0)
    assert torch.isfinite(both).all() and len(source.cache.clips) == both.shape[2] == 3
    assert all(n == f for n, f in lengths)  # tokens and their rotary rows agree inside attention
    assert max(n for n, _ in lengths) == longest_alone + 2 * 2  # plus the window's frame: 2x2 cells of 32 px
    assert (both - alone).abs().max() > 1e-6


def test_bad_settings_name_the_input(pack):
    from comfyui_histenc.histenc_nodes.kvcache import ClipKVCacheSource

    with pytest.raises(ValueError, match="blocks 'middle'"):
        ClipKVCacheSource(blocks="middle")
    with pytest.raises(ValueError, match="similarity 'llm'"):
        ClipKVCacheSource(similarity="llm")
    with pytest.raises(ValueError, match="max_clips must be"):
        ClipKVCacheSource(max_clips=0)


def test_hunyuan_model_is_refused_in_one_sentence(pack, load_wan):
    """HunyuanVideo's joint text-image attention has no per-block self-attention K/V for the cache to hold."""
    from comfyui_histenc.histenc_nodes.kvcache import ClipKVCacheSource

    model = load_wan("histenc_tiny_hunyuan_video.safetensors")
    source = ClipKVCacheSource()
    cond = [[torch.zeros(1, 5, 4096), {}]]
    with pytest.raises(ValueError, match="works with Wan models.*hunyuan_video.*use a FramePack Context") as e:
        source.before_section(model, 0, 0, 0, "a prompt", cond)
    assert str(e.value).count(".") == 1
