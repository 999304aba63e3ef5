"""The generated tiny checkpoints: deterministic, finite, and detected by ComfyUI's stock loaders."""

import logging

import pytest
import torch


def test_fixtures_are_deterministic_and_finite(comfy):
    from scripts.fixtures import wan21_vae_state_dict, wan_dit_state_dict

    for make in (lambda: wan_dit_state_dict("i2v", 36, 16), wan21_vae_state_dict):
        a, b = make(), make()
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) and torch.isfinite(a[k]).all() for k in a)


@pytest.mark.parametrize(
    "name,model_class,channels",
    [
        ("histenc_tiny_wan21_t2v.safetensors", "WAN21", 16),
        ("histenc_tiny_wan21_i2v.safetensors", "WAN21", 36),
        ("histenc_tiny_wan22_ti2v.safetensors", "WAN22", 48),
    ],
)
def test_stock_loader_detects_every_dit_fixture_without_leftover_keys(
    comfy, fixture_models, caplog, name, model_class, channels
):
    import comfy.sd

    caplog.set_level(logging.INFO)
    model = comfy.sd.load_diffusion_model(str(fixture_models / "diffusion_models" / name))
    dm = model.get_model_object("diffusion_model")
    assert type(model.model).__name__ == model_class
    assert (dm.dim, dm.num_heads, dm.num_layers, dm.patch_embedding.weight.shape[1]) == (128, 1, 2, channels)
    assert not [r for r in caplog.records if "missing" in r.getMessage() or "left over" in r.getMessage()]


def test_stock_vae_loader_round_trips_an_image(comfy, load_vae):
    vae = load_vae()
    assert vae.latent_channels == 16 and vae.spacial_compression_encode() == 8
    latent = vae.encode(torch.rand(1, 32, 32, 3))
    assert latent.shape == (1, 16, 1, 4, 4) and torch.isfinite(latent).all()
    assert vae.decode(latent).shape[-3:] == (32, 32, 3)
