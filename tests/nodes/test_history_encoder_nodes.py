"""History-encoder nodes on the real native Wan models."""

import copy

import pytest
import torch

from histenc.context import SectionGrid
from tests.helpers import run_long_video


def test_untrained_encoder_tokens_live_in_the_dit_feature_space(pack, load_wan):
    from comfyui_histenc.histenc_nodes.history_encoder import InitHistoryEncoder, model_dit

    model = load_wan()
    enc = InitHistoryEncoder.execute(model, "2x2x1", "full", 0).args[0]
    dit = model_dit(model)
    history = torch.full((1, 16, 2, 8, 8), 0.3)
    ctx = enc.context(history, SectionGrid(2, 8, 8), dit)
    # a constant history: area-downsampling keeps it constant, so each token is the DiT's own token
    own = dit.patchify(history)[:, :1]
    assert torch.allclose(ctx.tokens, own.expand_as(ctx.tokens), atol=1e-5)
    assert int(ctx.positions[:, 0].max()) < 0  # the whole history sits before the section


def test_save_load_round_trip_and_wrong_width_refusal(pack, load_wan, comfy, tmp_path, monkeypatch):
    import folder_paths
    from comfyui_histenc.histenc_nodes.history_encoder import (
        FOLDER,
        InitHistoryEncoder,
        LoadHistoryEncoder,
        SaveHistoryEncoder,
    )

    monkeypatch.setitem(folder_paths.folder_names_and_paths, FOLDER, ([str(tmp_path)], {".safetensors"}))
    model = load_wan()
    enc = InitHistoryEncoder.execute(model, "4x4x2", "full", 3).args[0]
    path = SaveHistoryEncoder.execute(enc, model, "tiny").args[0]
    back = LoadHistoryEncoder.execute(model, "tiny.safetensors").args[0]
    for (k, a), (k2, b) in zip(enc.state_dict().items(), back.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    with pytest.raises(ValueError, match="made for channels 16 but this needs channels 48"):
        LoadHistoryEncoder.execute(load_wan("histenc_tiny_wan22_ti2v.safetensors"), "tiny.safetensors")
    with pytest.raises(ValueError, match="^filename '../x' contains a slash, backslash or colon; use a plain name"):
        SaveHistoryEncoder.execute(enc, model, "../x")
    assert path.endswith("tiny.safetensors")


def test_encoder_context_reaches_the_dit(pack, load_wan):
    from comfyui_histenc.histenc_nodes.history_encoder import HistoryEncoderContext, InitHistoryEncoder
    from comfyui_histenc.histenc_nodes._common import attach_context

    model = load_wan()
    enc = InitHistoryEncoder.execute(model, "2x2x2", "full", 0).args[0]
    sources = HistoryEncoderContext.execute(enc, 1).args[0]
    history = torch.randn(1, 16, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    m = attach_context(model, sources, history)
    dm = m.get_model_object("diffusion_model")
    x = torch.randn(1, 16, 2, 8, 8)
    ctx = torch.randn(1, 4, 4096)
    m.patch_model()
    try:
        with torch.no_grad():
            out = dm(x, torch.tensor([400.0]), ctx, transformer_options=m.model_options["transformer_options"])
    finally:
        m.unpatch_model()
    model.patch_model()
    try:
        with torch.no_grad():
            stock = dm(x, torch.tensor([400.0]), ctx)
    finally:
        model.unpatch_model()
    assert torch.isfinite(out).all() and (out - stock).abs().max() > 1e-6
    payload = m.model_options["transformer_options"]["histenc_context"]
    assert payload._cache[1].count == 2 * 2 * 2 + 16  # encoder tokens (4 frames / 2, 4x4 cells / 2x2) + 1 window frame


def test_a_connected_vae_gives_the_pixel_branch_exact_incrementally_and_saved(
    pack, load_wan, load_vae, tmp_path, monkeypatch
):
    import folder_paths
    from comfyui_histenc.histenc_nodes.history_encoder import (
        FOLDER,
        InitHistoryEncoder,
        LoadHistoryEncoder,
        SaveHistoryEncoder,
        model_dit,
    )

    monkeypatch.setitem(folder_paths.folder_names_and_paths, FOLDER, ([str(tmp_path)], {".safetensors"}))
    model, vae = load_wan(), load_vae()
    enc = InitHistoryEncoder.execute(model, "2x2x2", "full", 0, vae=vae).args[0]
    assert enc.config.lr_input == "pixels"
    dit = model_dit(model)
    history = torch.randn(1, 16, 5, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = enc(history)
        for frames in range(1, 6):  # 1-frame sections: provisional groups, then finished ones
            ctx = enc.context(history[:, :, :frames], SectionGrid(1, 8, 8), dit)
            torch.testing.assert_close(ctx.tokens, enc(history[:, :, :frames]), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ctx.tokens, full, rtol=1e-5, atol=1e-5)
        latent = InitHistoryEncoder.execute(model, "2x2x2", "full", 0).args[0]
        assert latent.config.lr_input == "latent" and (latent(history) - full).abs().max() > 1e-3
    assert copy.deepcopy(enc).codec is enc.codec  # training copies the encoder, never the VAE
    SaveHistoryEncoder.execute(enc, model, "pixels")
    with pytest.raises(ValueError, match="^history encoder 'pixels.safetensors' has the pixel low-resolution branch"):
        LoadHistoryEncoder.execute(model, "pixels.safetensors")
    back = LoadHistoryEncoder.execute(model, "pixels.safetensors", vae=vae).args[0]
    with torch.no_grad():
        torch.testing.assert_close(back(history), full, rtol=1e-5, atol=1e-5)


def test_vae_and_metadata_mistakes_are_one_sentence(pack, load_wan, load_vae, tmp_path, monkeypatch):
    import folder_paths
    from comfyui_histenc.histenc_nodes.history_encoder import FOLDER, InitHistoryEncoder, LoadHistoryEncoder

    from histenc.encoder.io import save_encoder
    from histenc.weights import load_weights, save_weights

    monkeypatch.setitem(folder_paths.folder_names_and_paths, FOLDER, ([str(tmp_path)], {".safetensors"}))
    model, vae = load_wan(), load_vae()
    with pytest.raises(ValueError, match="^vae is connected but variant 'without_lr' has no low-resolution branch"):
        InitHistoryEncoder.execute(model, "2x2x2", "without_lr", 0, vae=vae)
    with pytest.raises(ValueError, match="^vae makes 16-channel latents but the model uses 48; connect the VAE"):
        InitHistoryEncoder.execute(load_wan("histenc_tiny_wan22_ti2v.safetensors"), "2x2x2", "full", 0, vae=vae)
    enc = InitHistoryEncoder.execute(model, "2x2x2", "full", 0).args[0]
    for name, field, value, sentence in [
        ("hidden", "hidden", [], r"encoder hidden is \[\]; use channel counts"),
        ("heads", "heads", 0, "encoder heads is 0; use a head count that divides 512"),
    ]:
        tensors, meta = load_weights(save_encoder(tmp_path / f"{name}.safetensors", enc, family="wan2.1"))
        save_weights(tmp_path / f"{name}.safetensors", tensors, {**meta, field: value})
        with pytest.raises(ValueError, match=f"^weights file {name}.safetensors is not a usable history encoder: "):
            LoadHistoryEncoder.execute(model, f"{name}.safetensors")
        with pytest.raises(ValueError, match=sentence):
            LoadHistoryEncoder.execute(model, f"{name}.safetensors")


@pytest.mark.parametrize("with_vae", [False, True], ids=["latent", "pixels"])
def test_one_frame_sections_get_encoder_context_from_the_second_section_on(
    pack, load_wan, load_vae, test_nodes, with_vae
):
    """4x4x2 groups two latent frames; the sampler's 1-frame sections give it one frame of history first."""
    from comfyui_histenc.histenc_nodes.history_encoder import HistoryEncoderContext, InitHistoryEncoder

    model = load_wan()
    enc = InitHistoryEncoder.execute(model, "4x4x2", "full", 0, vae=load_vae() if with_vae else None).args[0]
    with torch.no_grad():  # a learned branch with weights, so the context is more than the LR tokens
        enc.hr_out.weight.normal_(0, 0.05, generator=torch.Generator().manual_seed(1))
    seen = []
    original = enc.context
    enc.context = lambda history, grid, dit: seen.append(history.shape[2]) or original(history, grid, dit)
    board = "0:00 a red kite"
    plain = run_long_video(test_nodes, model, [], board, 3.0)
    with_context = run_long_video(test_nodes, model, HistoryEncoderContext.execute(enc, 0).args[0], board, 3.0)
    assert seen[:3] == [1, 2, 3]  # sections 1, 2, 3 saw 1, 2 and 3 frames: shorter than, equal to, past a group
    assert (
        torch.equal(with_context[:, :, 0], plain[:, :, 0])
        and (with_context[:, :, 1:] - plain[:, :, 1:]).abs().max() > 1e-4
    )
