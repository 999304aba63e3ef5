"""Wan 2.2 14B's two experts in the Long Video Sampler: the same result as two KSamplerAdvanced by hand, the context
on both, and one sentence for a pair or a switch that does not fit."""

import pytest
import torch

from tests.nodes.test_job_settings_nodes import sample
from tests.nodes.test_model_fingerprint_nodes import OTHER_T2V, T2V

I2V, TI2V = "histenc_tiny_wan21_i2v.safetensors", "histenc_tiny_wan22_ti2v.safetensors"
SEED = 5  # sample()'s seed: section 0 uses it as it is


def by_hand(test_nodes, high, low, steps, switch, sampler=None):
    """One 1-frame section at 32 px sampled in two stages exactly as the Wan 2.2 template's two KSamplerAdvanced
    (or SplitSigmas with two SamplerCustomAdvanced) do it."""
    import comfy.sample
    import comfy.samplers

    positive = [[test_nodes.embed_text("a red kite"), {"pooled_output": test_nodes.embed_text("a red kite").mean(1)}]]
    negative = [[test_nodes.embed_text("low quality"), {}]]
    latent = torch.zeros(1, 16, 1, 4, 4)
    noise = comfy.sample.prepare_noise(latent, SEED)
    quiet = torch.zeros_like(latent)
    if sampler is None:
        first = comfy.sample.sample(
            high, noise, steps, 1.0, "euler", "simple", positive, negative, latent,
            start_step=0, last_step=switch, force_full_denoise=False, seed=SEED,
        )  # fmt: skip
        return comfy.sample.sample(
            low, quiet, steps, 1.0, "euler", "simple", positive, negative, first,
            disable_noise=True, start_step=switch, last_step=10000, force_full_denoise=True, seed=SEED,
        )  # fmt: skip
    sigmas = comfy.samplers.calculate_sigmas(high.get_model_object("model_sampling"), "simple", steps)
    first = comfy.sample.sample_custom(
        high, noise, 1.0, sampler, sigmas[: switch + 1], positive, negative, latent, seed=SEED
    )
    return comfy.sample.sample_custom(low, quiet, 1.0, sampler, sigmas[switch:], positive, negative, first, seed=SEED)


def one_section(test_nodes, high, low, steps, switch, **kw):
    story = "0:00 a red kite"
    return sample(test_nodes, high, "", story, seconds=0.25, steps=steps, model_low_noise=low, switch_step=switch, **kw)


def test_two_experts_give_exactly_what_two_ksampler_advanced_give(pack, load_wan, test_nodes):
    high, low = load_wan(T2V), load_wan(OTHER_T2V)
    latents, summary = one_section(test_nodes, high, low, steps=4, switch=2)
    assert torch.equal(latents, by_hand(test_nodes, high, low, 4, 2))
    assert "Experts switched at step 2 of 4." in summary
    only_high, _ = sample(test_nodes, high, "", "0:00 a red kite", seconds=0.25, steps=4)
    assert (latents - only_high).abs().max() > 1e-4  # the low-noise expert made the last steps


def test_two_experts_with_a_custom_sampler_split_its_sigmas(pack, load_wan, test_nodes):
    import comfy.samplers

    high, low = load_wan(T2V), load_wan(OTHER_T2V)
    sampler = comfy.samplers.sampler_object("euler")
    latents, _ = one_section(test_nodes, high, low, steps=4, switch=1, sampler=sampler)
    assert torch.equal(latents, by_hand(test_nodes, high, low, 4, 1, sampler=sampler))


def test_a_sigma_boundary_picks_the_steps_of_the_high_noise_expert(pack, load_wan, test_nodes):
    import comfy.samplers

    high, low = load_wan(T2V), load_wan(OTHER_T2V)
    sigmas = comfy.samplers.calculate_sigmas(high.get_model_object("model_sampling"), "simple", 10)
    boundary = 0.875
    switch = int((sigmas[:10] >= boundary).sum())
    assert 0 < switch < 10
    latents, summary = one_section(test_nodes, high, low, steps=10, switch=0, switch_sigma=boundary)
    assert f"Experts switched at step {switch} of 10." in summary
    assert torch.equal(latents, by_hand(test_nodes, high, low, 10, switch))


def test_one_model_as_both_experts_gives_what_one_sampler_run_gives_on_given_frames(
    pack, load_wan, test_nodes, monkeypatch
):
    """Sections after the first continue from the frame before (noise mask 0 on it). The low-noise stage sees that
    frame noised to each step's sigma, as one run does; continuing from the first stage's latent there (two stock
    KSamplerAdvanced) shows it the frame under the switch's noise and the section comes out otherwise."""
    from comfyui_histenc.histenc_nodes import _experts

    model = load_wan(T2V)
    one, _ = sample(test_nodes, model, "", steps=4)
    two, _ = sample(test_nodes, model, "", steps=4, model_low_noise=model, switch_step=2)
    assert torch.allclose(one, two, atol=1e-4)

    def stock(first, noise, latent, mask):
        return torch.zeros_like(first), first

    monkeypatch.setattr(_experts, "second_stage", stock)
    chained, _ = sample(test_nodes, model, "", steps=4, model_low_noise=model, switch_step=2)
    assert torch.allclose(one[:, :, :1], chained[:, :, :1], atol=1e-4)  # section 0 is given nothing
    assert (one[:, :, 1:] - chained[:, :, 1:]).abs().max() > 0.1


def test_the_start_image_comes_out_as_it_went_in(pack, load_wan, load_vae, test_nodes):
    """The second stage never saw the noise the first left on the given frames: they are written back."""
    vae = load_vae()
    image = torch.rand(1, 32, 32, 3, generator=torch.Generator().manual_seed(0))
    video, _ = one_section(test_nodes, load_wan(T2V), load_wan(OTHER_T2V), 4, 2, vae=vae, start_image=image)
    assert torch.equal(video[:, :, :1], vae.encode(image).float())


@pytest.mark.parametrize(
    "other, message",
    [
        (I2V, "model_low_noise does not match model: its input channels is 36 but model's is 16 (WAN21 and WAN21)"),
        (TI2V, "model_low_noise does not match model: its latent channels is 48 but model's is 16 (WAN22 and WAN21)"),
    ],
)
def test_an_expert_pair_that_does_not_match_is_one_sentence(pack, load_wan, test_nodes, other, message):
    with pytest.raises(ValueError) as refused:
        one_section(test_nodes, load_wan(T2V), load_wan(other), steps=4, switch=2)
    assert str(refused.value) == (
        f"{message}; connect the two experts of one model, e.g. wan2.2_t2v_high_noise_14B and wan2.2_t2v_low_noise_14B."
    )


def test_a_switch_that_leaves_an_expert_no_step_is_one_sentence(pack, load_wan, test_nodes):
    high, low = load_wan(T2V), load_wan(OTHER_T2V)
    with pytest.raises(ValueError, match=r"^switch_step 4 leaves the low-noise expert no step of the 4; pick 1 to 3 "):
        one_section(test_nodes, high, low, steps=4, switch=4)
    with pytest.raises(
        ValueError, match=r"^switch_sigma 1.5 gives no step to the high-noise expert \(sigmas run from "
    ):
        one_section(test_nodes, high, low, steps=4, switch=0, switch_sigma=1.5)
    with pytest.raises(ValueError, match=r"^switch_sigma 0 gives every step to the high-noise expert"):
        one_section(test_nodes, high, low, steps=4, switch=0, switch_sigma=0.0)


def test_a_lora_for_another_width_on_either_expert_is_refused_before_sampling(pack, load_wan, test_nodes):
    from tests.nodes.test_model_fingerprint_nodes import with_lora

    high, low = load_wan(T2V), with_lora(load_wan(OTHER_T2V), 1.0, width=256)
    with pytest.raises(ValueError, match=r"^a LoRA on model_low_noise patches diffusion_model.blocks.0.self_attn.q"):
        one_section(test_nodes, high, low, steps=4, switch=2)
