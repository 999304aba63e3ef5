"""One section of the Long Video Sampler with two experts: each gets the joint and its own payload over the same
history, and the clip KV cache records finished sections with the low-noise expert."""

import torch

from tests.nodes.test_job_settings_nodes import sample
from tests.nodes.test_model_fingerprint_nodes import OTHER_T2V, T2V


def test_every_section_gives_both_experts_the_context(pack, load_wan, test_nodes, monkeypatch):
    """Each expert gets the joint with its own payload over the same history: tokens made with its own weights."""
    import comfy.sample

    from histenc.dit.payload import PAYLOAD_KEY
    from histenc.window import SlidingWindow

    high, low = load_wan(T2V), load_wan(OTHER_T2V)
    real, calls = comfy.sample.sample, []

    def spy(model, *args, **kwargs):
        out = real(model, *args, **kwargs)
        payload = model.model_options["transformer_options"].get(PAYLOAD_KEY)
        calls.append((model.model, payload, kwargs["start_step"], payload.tokens_used if payload else None))
        return out

    monkeypatch.setattr(comfy.sample, "sample", spy)
    latents, summary = sample(
        test_nodes, high, job="", steps=2, model_low_noise=low, switch_step=1, context=[SlidingWindow(1)]
    )
    assert len(calls) == 2 * 3  # 2 s at 4 fps: 3 one-frame sections, two stages each
    for (first_model, first, start_a, _), (second_model, second, start_b, tokens) in zip(calls[::2], calls[1::2]):
        assert (first_model, second_model, start_a, start_b) == (high.model, low.model, 0, 1)
        assert first is not second and first.sources == second.sources
        assert (first.history is None) == (second.history is None)
    assert calls[-1][3] == 4  # the low-noise expert's own window tokens (2x2 cells of one frame)
    assert "context up to 4 tokens per section" in summary and torch.isfinite(latents).all()


def test_the_clip_kv_cache_records_with_the_low_noise_expert(pack, load_wan, test_nodes):
    from comfyui_histenc.histenc_nodes.kvcache import ClipKVCacheSource

    high, low = load_wan(T2V), load_wan(OTHER_T2V)
    source = ClipKVCacheSource(max_clips=2, blocks="all")
    recorded = []
    real = source.record
    source.record = lambda model, *a, **k: recorded.append(model.model) or real(model, *a, **k)
    latents, _ = sample(test_nodes, high, job="", steps=2, model_low_noise=low, switch_step=1, context=[source])
    assert recorded and set(recorded) == {low.model} and torch.isfinite(latents).all()
