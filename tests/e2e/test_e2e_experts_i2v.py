"""Wan 2.2 14B's two experts and Wan I2V's CLIP vision in the Long Video Sampler, through the real server.

Two tiny T2V checkpoints of one shape stand in for the high- and low-noise experts: a one-section job gives
bit for bit what ComfyUI's template gives with two chained KSamplerAdvanced on the same server. The tiny Wan
2.1 I2V fixture has the real image embedding (1280 wide); a test node gives CLIPVisionEncode's output at
clip_vision_h's shape, or at clip_vision_l's 1024 to see the sentence.
"""

from __future__ import annotations

import torch
from safetensors.torch import load_file

from scripts.host import output_files
from tests.e2e.test_e2e_long_video_jobs import failure, prompt, summary
from tests.nodes.test_model_fingerprint_nodes import OTHER_T2V, T2V

I2V = "histenc_tiny_wan21_i2v.safetensors"
STEPS, SWITCH, SEED = 4, 2, 5


def two_experts(job: str = "", low: str = OTHER_T2V, **inputs) -> dict:
    """``prompt`` with ``low`` as model_low_noise (both experts through ModelSamplingSD3 shift 8, as the template)."""
    api = prompt(job, shift=8.0, steps=STEPS, switch_step=SWITCH, model_low_noise=["11", 0], **inputs)
    api["10"] = {"class_type": "UNETLoader", "inputs": {"unet_name": low, "weight_dtype": "default"}}
    api["11"] = {"class_type": "ModelSamplingSD3", "inputs": {"model": ["10", 0], "shift": 8.0}}
    return api


def template(api: dict) -> dict:
    """ComfyUI's Wan 2.2 14B template on the same models and prompt: two KSamplerAdvanced, SaveLatent."""
    latent = {"width": 32, "height": 32, "length": 1, "batch_size": 1}
    common = dict(steps=STEPS, cfg=1.0, sampler_name="euler", scheduler="simple", positive=["20", 0])
    common["negative"] = ["4", 0]
    return {
        **{k: api[k] for k in ("1", "4", "7", "10", "11")},
        "20": {"class_type": "HistEncTestConditioning", "inputs": {"text": "a red kite"}},
        "21": {"class_type": "EmptyHunyuanLatentVideo", "inputs": latent},
        "22": {
            "class_type": "KSamplerAdvanced",
            "inputs": dict(common, model=["7", 0], add_noise="enable", noise_seed=SEED, start_at_step=0)
            | dict(end_at_step=SWITCH, return_with_leftover_noise="enable", latent_image=["21", 0]),
        },
        "23": {
            "class_type": "KSamplerAdvanced",
            "inputs": dict(common, model=["11", 0], add_noise="disable", noise_seed=0, start_at_step=SWITCH)
            | dict(end_at_step=10000, return_with_leftover_noise="disable", latent_image=["22", 0]),
        },
        "24": {"class_type": "SaveLatent", "inputs": {"samples": ["23", 0], "filename_prefix": "histenc_e2e_experts"}},
    }


def test_two_experts_give_what_the_template_s_two_ksampler_advanced_give(host):
    job = "e2e_two_experts"
    api = two_experts(job, seconds=0.25, keep_job_state=True)  # one section of one latent frame
    entry = host.run(api, timeout=300)
    assert f"Experts switched at step {SWITCH} of {STEPS}." in summary(entry)
    section = load_file(str(host.base / "output" / "histenc_jobs" / job / "section_0000.safetensors"))["latents"]
    [saved] = [p for p in output_files(host.run(template(api), timeout=300), host.base) if p.suffix == ".latent"]
    assert torch.equal(section, load_file(str(saved))["latent_tensor"])


def test_a_longer_two_expert_job_with_context_runs(host):
    api = two_experts(seconds=2.0)
    api["30"] = {"class_type": "HistEncSlidingWindow", "inputs": {"frames": 1}}
    api["5"]["inputs"]["context"] = ["30", 0]
    text = summary(host.run(api, timeout=300))
    # 2 s at 4 fps: 3 one-frame sections; a window of 1 frame at 2x2 cells is 4 tokens, on both experts
    assert text.startswith("3 of 3 sections done (3 of 3 latent frames), 0:02 of 0:02 of video, context up to 4 tok")
    assert text.endswith(f"Experts switched at step {SWITCH} of {STEPS}.")


def test_an_expert_pair_that_does_not_match_is_one_sentence(host):
    assert failure(host, two_experts(low=I2V)) == (
        "model_low_noise does not match model: its input channels is 36 but model's is 16 (WAN21 and WAN21); "
        "connect the two experts of one model, e.g. wan2.2_t2v_high_noise_14B and wan2.2_t2v_low_noise_14B."
    )


def i2v(width: int = 1280, **inputs) -> dict:
    """``prompt`` on the tiny Wan 2.1 I2V model with a start image and its CLIP-vision stand-in."""
    api = prompt(unet=I2V, vae=["40", 0], start_image=["41", 0], clip_vision_output=["42", 0], **inputs)
    api["40"] = {"class_type": "VAELoader", "inputs": {"vae_name": "histenc_tiny_wan21_vae.safetensors"}}
    api["41"] = {"class_type": "EmptyImage", "inputs": {"width": 32, "height": 32, "batch_size": 1, "color": 0x3366CC}}
    api["42"] = {"class_type": "HistEncTestClipVisionHEncode", "inputs": {"image": ["41", 0], "width": width}}
    return api


def test_wan_i2v_takes_the_clip_vision_output_into_every_section(host):
    text = summary(host.run(i2v(), timeout=300))
    assert text.startswith("2 of 2 sections done (2 of 2 latent frames), 0:01 of 0:01 of video")


def test_a_clip_vision_of_another_size_is_one_sentence(host):
    assert failure(host, i2v(width=1024)) == (
        "clip_vision_output is 1024 wide but this Wan I2V model's image embedding takes 1280 (CLIP ViT-H); load "
        "clip_vision_h.safetensors with CLIPVisionLoader and encode the start image with it."
    )
    assert failure(
        host, {**i2v(), "1": {"class_type": "UNETLoader", "inputs": {"unet_name": T2V, "weight_dtype": "default"}}}
    ).startswith(
        "clip_vision_output is connected but this Wan model (WAN21, 16 input channels) has no CLIP-vision image"
    )
