"""The injection joint on the native HunyuanVideo model (tiny fixture through the stock loader)."""

import pytest
import torch

from histenc.context import ContextSource, ContextTokens
from histenc.dit.rope import box_rope
from histenc.window import SlidingWindow

NAME = "histenc_tiny_hunyuan_video.safetensors"


def call(model, x, opts=None):
    g = torch.Generator().manual_seed(3)
    ctx = torch.randn(1, 5, 4096, generator=g)
    y = torch.randn(1, 4096, generator=g)
    model.patch_model()
    try:
        with torch.no_grad():
            dm = model.get_model_object("diffusion_model")
            return dm(x, torch.tensor([0.7]), ctx, y=y, guidance=torch.tensor([6.0]), transformer_options=opts or {})
    finally:
        model.unpatch_model()


def test_no_payload_is_bit_identical_and_context_changes_output(pack, load_wan):
    from comfyui_histenc.histenc_nodes._common import attach_context

    model = load_wan(NAME)
    x = torch.randn(1, 16, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    stock = call(model, x)
    empty = attach_context(model, [SlidingWindow(2)], None)
    assert torch.equal(call(empty, x, empty.model_options["transformer_options"]), stock)
    assert torch.equal(call(empty, x, {}), stock)
    m = attach_context(model, [SlidingWindow(2)], torch.randn(1, 16, 4, 8, 8))
    out = call(m, x, m.model_options["transformer_options"])
    assert out.shape == stock.shape and torch.isfinite(out).all()
    assert (out - stock).abs().max() > 1e-6


def test_context_tokens_and_phases_reach_the_blocks(pack, load_wan):
    from comfyui_histenc.histenc_nodes._common import attach_context

    model = load_wan(NAME)
    positions = torch.tensor([[-2.0, 0.0, 0.0], [-4.0, 2.0, 0.0]])
    extent = torch.tensor([[2, 2, 2], [4, 2, 4]])
    tokens = torch.randn(1, 2, 128)

    class Fixed(ContextSource):
        def context(self, history, grid, dit):
            return ContextTokens(tokens, positions, extent)

        def tokens_for(self, grid, history_frames):
            return 2

    seen = {}

    def spy(args, extra):
        seen["img"], seen["pe"] = args["img"], args["pe"]
        return extra["original_block"](args)

    m = attach_context(model, [Fixed()], torch.zeros(1, 16, 1, 8, 8))
    m.set_model_patch_replace(spy, "dit", "double_block", 0)
    call(m, torch.randn(1, 16, 2, 8, 8), m.model_options["transformer_options"])
    n_img = 2 * 4 * 4
    assert seen["img"].shape[1] == n_img + 2
    dm = model.get_model_object("diffusion_model")
    expected = box_rope(dm.pe_embedder, positions, extent).movedim(2, 1)
    assert seen["pe"].shape[2] == n_img + 2 + 5  # image, context, text
    assert torch.allclose(seen["pe"][:, :, n_img : n_img + 2], expected)


def test_hunyuan_width_mismatch_names_both(pack, load_wan):
    from comfyui_histenc.histenc_nodes._common import attach_context

    class Wide(ContextSource):
        def context(self, history, grid, dit):
            return ContextTokens(torch.zeros(1, 1, 3072), torch.zeros(1, 3))

        def tokens_for(self, grid, history_frames):
            return 1

    m = attach_context(load_wan(NAME), [Wide()], torch.zeros(1, 16, 1, 8, 8))
    with pytest.raises(ValueError, match="3072 wide but this model's DiT is 128 wide"):
        call(m, torch.randn(1, 16, 1, 8, 8), m.model_options["transformer_options"])


def test_encoder_and_sampler_run_on_hunyuan(pack, load_wan, test_nodes, tmp_path):
    import folder_paths
    from comfyui_histenc.histenc_nodes.history_encoder import HistoryEncoderContext, InitHistoryEncoder
    from comfyui_histenc.histenc_nodes.long_video import LongVideoSampler
    from comfyui_histenc.histenc_nodes.storyboard import EncodedStoryboard
    from histenc.longvideo.storyboard import Storyboard

    folder_paths.set_output_directory(str(tmp_path))
    model = load_wan(NAME)
    enc = InitHistoryEncoder.execute(model, "2x2x2", "full", 0).args[0]
    assert enc.config.width == 128
    context = HistoryEncoderContext.execute(enc, 1).args[0]
    board = EncodedStoryboard(Storyboard.parse("0:00 a red kite\n0:01 a blue boat"), test_nodes.FakeClip())
    negative = [[test_nodes.embed_text("low"), {"pooled_output": test_nodes.embed_text("low").mean(1)}]]
    out = LongVideoSampler.execute(
        model, board, negative, 2.0, 8.0, 2, 32, 32, 1, 1, 1.0, "euler", "simple", 1, "", context=context
    )
    latents, summary = out.args[0]["samples"], out.args[1]
    assert latents.shape == (1, 16, 5, 4, 4) and torch.isfinite(latents).all()
    # 2 s at 8 fps: 16 frames, 5 latent frames in sections of 2, 2, 1. The last section sees 4 history frames of
    # 4x4 latent pixels (2x2 cells): the 2x2x2 encoder gives 2 x 1 x 1 = 2 tokens, the 1-frame window 2 x 2 = 4.
    assert (
        summary
        == "3 of 3 sections done (5 of 5 latent frames), 0:02 of 0:02 of video, context up to 6 tokens per section."
    )


def test_encoder_made_for_wan_is_refused_naming_the_family(pack, load_wan, tmp_path, monkeypatch):
    import folder_paths
    from comfyui_histenc.histenc_nodes.history_encoder import (
        FOLDER,
        InitHistoryEncoder,
        LoadHistoryEncoder,
        SaveHistoryEncoder,
    )

    monkeypatch.setitem(folder_paths.folder_names_and_paths, FOLDER, ([str(tmp_path)], {".safetensors"}))
    wan = load_wan()
    SaveHistoryEncoder.execute(InitHistoryEncoder.execute(wan, "4x4x2", "full", 0).args[0], wan, "for_wan")
    with pytest.raises(ValueError, match="family 'wan2.1' but this needs family 'hunyuan_video'"):
        LoadHistoryEncoder.execute(load_wan(NAME), "for_wan.safetensors")
