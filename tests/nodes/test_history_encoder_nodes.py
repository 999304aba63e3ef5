"""History-encoder nodes on the real native Wan models."""

import pytest
import torch

from histenc.context import SectionGrid


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
