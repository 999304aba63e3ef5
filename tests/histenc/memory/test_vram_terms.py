"""The planner's terms that real sizes showed it missed, each against the size of tensors the pack really makes.

Real-width tensors are built on the meta device (their sizes without their memory), small ones for real.
"""

import json
import struct

import pytest
import torch

from histenc.context import SectionGrid
from histenc.encoder.model import EncoderConfig, HistoryEncoder
from histenc.framepack.packing import FramePackContext
from histenc.kvcache import Clip, ClipKVCache, parse_blocks
from histenc.longvideo.section import section_latent
from histenc.memory.vram import (
    GB,
    LOADER_PROCESS,
    context_weight_bytes,
    kv_cache_bytes,
    latent_size,
    plan,
    preset,
    source_terms,
)
from histenc.units import latent_frames, span_latent_frames

K8 = "td_f8k8f4k4f2k2f1k1_g9"  # a k8 schedule: projections for k8, k4, k2 and k1


def grid_of(spec, width, height, seconds=1.0):
    frames = span_latent_frames(seconds, spec.fps, spec.vae_stride[0])
    return SectionGrid(frames, *latent_size(spec, width, height), spec.patch)


def safetensors_data_bytes(path) -> int:
    """Bytes of tensor data in a safetensors file, from its header (an independent count of what was saved)."""
    with open(path, "rb") as f:
        head = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
    return sum(v["data_offsets"][1] - v["data_offsets"][0] for k, v in head.items() if k != "__metadata__")


# ------------------------------------------------------------------------------------------ the clip KV cache
def meta_record(spec, tokens: int, blocks: tuple[int, ...]):
    """What a record pass returns for one clip at this size: RoPE'd K and V [1, tokens, heads, head_dim] per
    cached block, in the compute dtype, on the meta device."""
    dtype = {2: torch.bfloat16, 4: torch.float32}[spec.compute_bytes]
    shape = (1, tokens, spec.heads, spec.width // spec.heads)

    def compute(clip, attend):
        return {
            b: (torch.empty(shape, dtype=dtype, device="meta"), torch.empty(shape, dtype=dtype, device="meta"))
            for b in blocks
        }

    return compute


@pytest.mark.parametrize("model,width,height,gib", [("wan2.1-1.3b", 832, 480, 2.68), ("wan2.2-5b", 1280, 704, 4.53)])
def test_kv_cache_term_is_what_the_cache_holds_while_a_section_samples(model, width, height, gib):
    spec = preset(model)
    grid = grid_of(spec, width, height)
    blocks = parse_blocks("latter half", spec.layers)
    cache = ClipKVCache(max_clips=5, blocks="latter half")
    compute = meta_record(spec, grid.tokens, blocks)
    for i in range(7):  # seven finished sections; the eighth attends to five of them
        clip = Clip(i, i * grid.frames, torch.empty(1, 1, grid.frames, 1, 1), torch.randn(8))
        cache.add(clip, compute(clip, []))
    cache.prepare(cache.select(torch.randn(8), before=7 * grid.frames), compute)
    measured = cache.held_bytes()
    assert len(cache.held()) == 5
    assert kv_cache_bytes(spec, grid, 7 * grid.frames, max_clips=5) == measured
    assert measured / GB == pytest.approx(gib, abs=0.01)  # 2 x 15 blocks x 5 clips x tokens x width x 2 bytes
    # fewer finished sections than clips: only those are cached; none before the second section
    assert kv_cache_bytes(spec, grid, 2 * grid.frames) == 2 * measured // 5
    assert kv_cache_bytes(spec, grid, 0) == 0


def test_kv_cache_term_matches_a_real_record_pass_and_its_node_settings(pack, load_wan):
    """The tiny Wan through the Clip KV Cache source's own hooks: K/V it holds equal the planner's count."""
    from comfyui_histenc.histenc_nodes._common import model_spec
    from comfyui_histenc.histenc_nodes.kvcache import ClipKVCacheSource

    model = load_wan("histenc_tiny_wan21_t2v.safetensors")
    spec = model_spec(model)
    grid = SectionGrid(3, 8, 8, spec.patch)
    cond = [[torch.randn(1, 6, 4096, generator=torch.Generator().manual_seed(0)), {}]]
    source = ClipKVCacheSource(max_clips=2, blocks="all")
    for i in range(3):
        source.before_section(model, i, i * grid.frames, 0, "p", cond)
        source.after_section(model, torch.randn(1, 16, grid.frames, 8, 8), i, "p", cond)
    source.before_section(model, 3, 3 * grid.frames, 0, "p", cond)  # evicts down to the two it attends to
    measured = source.cache.held_bytes()
    assert measured == 2 * 2 * 2 * grid.tokens * spec.width * spec.compute_bytes  # K+V, blocks, clips
    terms = source_terms([source], spec, grid, 3 * grid.frames)
    assert (terms.kv_device, terms.kv_host, terms.tokens, terms.weights) == (measured, 0, 2 * grid.tokens, 0)
    on_cpu = source_terms([ClipKVCacheSource(2, "all", storage="cpu")], spec, grid, 3 * grid.frames)
    assert (on_cpu.kv_device, on_cpu.kv_host) == (0, measured)
    p = plan(spec, 64, 64, 3, 9, terms.tokens, kv_cache=terms.kv_device)
    assert p.kv_cache == measured and p.peak == plan(spec, 64, 64, 3, 9, terms.tokens).peak + measured
    assert "clip KV cache" in p.text()


# ------------------------------------------------------------------------------------------ source weights
@pytest.mark.parametrize("model,gib", [("wan2.1-1.3b", 0.105), ("wan2.2-5b", 0.645)])
def test_framepack_weights_are_its_projections_in_the_dits_dtype(model, gib):
    """fp32 they were 0.21 GiB (1.3B) and 1.29 GiB (5B); the FramePack Context node stores them as the DiT computes."""
    spec = preset(model)
    assert spec.compute_bytes == 2  # bf16
    with torch.device("meta"):
        pack = FramePackContext(K8, spec.width, spec.latent_channels, spec.patch).to(torch.bfloat16)
    measured = sum(p.numel() * p.element_size() for p in pack.parameters())
    assert pack.weight_bytes() == context_weight_bytes(f"framepack:{K8}", spec) == measured
    assert measured / GB == pytest.approx(gib, abs=0.005)
    # kernels beyond k8 pool down to it and share its projection: the same weights
    assert context_weight_bytes("framepack:td_f512k16f64k8f8k2f1k1_g9", spec) <= measured


def test_source_weights_equal_what_the_sources_save_and_move_to_the_dit(tmp_path):
    pack = FramePackContext(K8, 64, 16)
    pack.pack(SectionGrid(2, 16, 16), before=torch.randn(1, 16, 12, 16, 16), device="cpu")  # moved and used
    pack.save(tmp_path / "pack.safetensors")
    assert pack.weight_bytes() == safetensors_data_bytes(tmp_path / "pack.safetensors")
    encoder = HistoryEncoder(EncoderConfig(width=64, channels=16, hidden=(8, 8, 8, 8), heads=2))
    state = {k: v.contiguous() for k, v in encoder.state_dict().items()}
    from safetensors.torch import save_file

    save_file(state, str(tmp_path / "encoder.safetensors"))
    assert encoder.weight_bytes() == safetensors_data_bytes(tmp_path / "encoder.safetensors")
    spec = preset("wan2.1-1.3b")
    terms = source_terms([pack, encoder], spec, SectionGrid(2, 16, 16), 12)
    assert terms.weights == pack.weight_bytes() + encoder.weight_bytes() and terms.kv_device == 0
    a = plan(spec, 832, 480, 4, 12, 100)
    b = plan(spec, 832, 480, 4, 12, 100, source_weights=terms.weights)
    assert b.peak - a.peak == terms.weights and b.source_weights == terms.weights


def test_encoder_mode_weights_match_a_real_encoder():
    spec = preset("wan2.1-1.3b")
    with torch.device("meta"):
        enc = HistoryEncoder(EncoderConfig(width=1536, channels=16, rate="4x4x2"))
    assert context_weight_bytes("encoder:4x4x2", spec) == enc.weight_bytes() > 0
    assert context_weight_bytes("window:3", spec) == context_weight_bytes("tokens:9", spec) == 0


# ------------------------------------------------------------------------------------------ continuation frames
@pytest.mark.parametrize("history,future,continuation", [(8, None, 1), (8, 4, 2), (None, None, 1), (2, None, 3)])
def test_section_tokens_count_every_frame_the_dit_samples(history, future, continuation):
    spec = preset("wan2.1-1.3b")
    lat_h, lat_w = latent_size(spec, 832, 480)
    new = 4
    hist = None if history is None else torch.zeros(1, 1, history, 1, 1)
    fut = None if future is None else torch.zeros(1, 1, future, 1, 1)
    layout = section_latent(3, new, hist, fut, None, continuation, (1, lat_h, lat_w))
    sampled = SectionGrid(layout.length, lat_h, lat_w, spec.patch).tokens  # the latent the sampler denoises
    p = plan(spec, 832, 480, new, history or 0, 0, continuation=continuation, tail=layout.tail)
    assert p.section_tokens == sampled and p.given_tokens == sampled - SectionGrid(new, lat_h, lat_w).tokens
    assert layout.length == new + layout.drop + layout.tail
    if p.given_tokens:
        assert f"({p.section_tokens - p.given_tokens} new + {p.given_tokens} given)" in p.text()


def test_no_continuation_keeps_the_plan_as_it_was():
    spec = preset("wan2.1-1.3b")
    hist = latent_frames(60, 16)
    assert plan(spec, 832, 480, 4, hist, 2756) == plan(spec, 832, 480, 4, hist, 2756, continuation=0, tail=0)
    assert plan(spec, 832, 480, 4, hist, 2756).section_tokens == 6240
    with pytest.raises(ValueError, match="continuation frames -1 and tail frames 0 must be 0 or more"):
        plan(spec, 832, 480, 4, hist, 0, continuation=-1)


# ------------------------------------------------------------------------------------------ the loader's RAM peak
def test_loader_peak_is_the_file_and_the_model_at_once(comfy, pack, fixture_models):
    """The tiny Wan through the stock loader's own two steps: the file's tensors, then the model built from them."""
    import comfy.sd
    import comfy.utils
    from comfyui_histenc.histenc_nodes._common import model_spec

    path = fixture_models / "diffusion_models" / "histenc_tiny_wan21_t2v.safetensors"
    sd = comfy.utils.load_torch_file(str(path))
    file_bytes = sum(t.numel() * t.element_size() for t in sd.values())
    model = comfy.sd.load_diffusion_model_state_dict(sd)  # sd is still held here: both copies at once
    model_bytes = sum(p.numel() * p.element_size() for p in model.get_model_object("diffusion_model").parameters())
    spec = model_spec(model)
    assert spec.weights == model_bytes
    p = plan(spec, 64, 64, 2, 0, 0, file_bytes=file_bytes)
    assert p.ram_loader_peak == file_bytes + model_bytes + LOADER_PROCESS
    assert "host RAM while loading" in p.text()


@pytest.mark.parametrize("model,gib", [("wan2.1-1.3b", 6.1), ("wan2.2-5b", 19.4)])
def test_loader_peak_matches_the_measured_load_of_the_real_files(model, gib):
    p = plan(preset(model), 832, 480, 4, 0, 0)
    assert p.ram_loader_peak / GB == pytest.approx(gib, abs=0.05)
