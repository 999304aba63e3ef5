"""Wan I2V with a CLIP_VISION_OUTPUT in the Long Video Sampler: every section's conditioning carries it as
WanImageToVideo puts it; a CLIP-vision of the wrong size, or one for a Wan model without an image embedding,
is one sentence."""

import pytest
import torch

from tests.nodes.test_job_settings_nodes import sample
from tests.nodes.test_model_fingerprint_nodes import T2V

I2V = "histenc_tiny_wan21_i2v.safetensors"


def clip_vision(width: int = 1280, tokens: int = 257, seed: int = 0):
    """CLIPVisionEncode's output at clip_vision_h's shape (penultimate hidden states 257 x 1280)."""
    from comfy.clip_vision import Output

    out = Output()
    out["penultimate_hidden_states"] = torch.randn(1, tokens, width, generator=torch.Generator().manual_seed(seed))
    out["last_hidden_state"] = out["penultimate_hidden_states"]
    return out


def spy_conditioning(monkeypatch):
    """The positive and negative conditioning of every comfy.sample.sample call."""
    import comfy.sample

    real, calls = comfy.sample.sample, []

    def spy(model, noise, steps, cfg, sampler_name, scheduler, positive, negative, *args, **kwargs):
        calls.append((positive, negative))
        return real(model, noise, steps, cfg, sampler_name, scheduler, positive, negative, *args, **kwargs)

    monkeypatch.setattr(comfy.sample, "sample", spy)
    return calls


def test_every_section_carries_the_clip_vision_output_as_wan_image_to_video_puts_it(
    pack, load_wan, load_vae, test_nodes, monkeypatch
):
    from comfy_extras.nodes_wan import WanImageToVideo

    calls = spy_conditioning(monkeypatch)
    output = clip_vision()
    model, vae = load_wan(I2V), load_vae()
    image = torch.rand(1, 32, 32, 3, generator=torch.Generator().manual_seed(0))
    with_clip, _ = sample(test_nodes, model, "", vae=vae, start_image=image, clip_vision_output=output)
    assert len(calls) == 3
    for positive, negative in calls:
        assert positive[0][1]["clip_vision_output"] is output and negative[0][1]["clip_vision_output"] is output
    # the same keys the stock node sets
    stock_positive, _, _ = WanImageToVideo.execute(
        [[torch.zeros(1, 1, 4096), {}]], [[torch.zeros(1, 1, 4096), {}]], vae, 32, 32, 1, 1, None, output
    ).args
    assert stock_positive[0][1]["clip_vision_output"] is output
    without, _ = sample(test_nodes, model, "", vae=vae, start_image=image)
    assert (with_clip - without).abs().max() > 1e-5  # the image embedding reaches the DiT


def test_a_clip_vision_output_of_another_width_is_one_sentence(pack, load_wan, test_nodes):
    with pytest.raises(ValueError) as refused:
        sample(test_nodes, load_wan(I2V), "", clip_vision_output=clip_vision(1024))
    assert str(refused.value) == (
        "clip_vision_output is 1024 wide but this Wan I2V model's image embedding takes 1280 (CLIP ViT-H); load "
        "clip_vision_h.safetensors with CLIPVisionLoader and encode the start image with it."
    )


def test_a_wan_model_without_an_image_embedding_takes_no_clip_vision(pack, load_wan, test_nodes):
    with pytest.raises(ValueError) as refused:
        sample(test_nodes, load_wan(T2V), "", clip_vision_output=clip_vision())
    assert str(refused.value) == (
        "clip_vision_output is connected but this Wan model (WAN21, 16 input channels) has no CLIP-vision image "
        "embedding: Wan 2.2 and text-to-video models take none; disconnect clip_vision_output, or load a Wan 2.1 "
        "I2V model such as wan2.1_i2v_480p_14B_fp16.safetensors."
    )


def test_a_clip_vision_output_without_hidden_states_is_one_sentence(pack, load_wan, test_nodes):
    from comfy.clip_vision import Output

    with pytest.raises(ValueError, match=r"^clip_vision_output holds no penultimate hidden states \(NoneType\)"):
        sample(test_nodes, load_wan(I2V), "", clip_vision_output=Output())


def test_the_clip_vision_output_is_part_of_a_resumed_job(pack, load_wan, test_nodes, tmp_path):
    import folder_paths

    old = folder_paths.get_output_directory()
    folder_paths.set_output_directory(str(tmp_path))
    try:
        model = load_wan(I2V)
        sample(test_nodes, model, keep_job_state=True, clip_vision_output=clip_vision(seed=0))
        with pytest.raises(ValueError, match=r"^job 'job' was started with clip vision = \"[0-9a-f]{16}\" but is q"):
            sample(test_nodes, model, clip_vision_output=clip_vision(seed=1))
    finally:
        folder_paths.set_output_directory(old)
