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


POSITIONS = torch.tensor([[-2.0, 0.0, 0.0], [-4.0, 2.0, 0.0]])
EXTENT = torch.tensor([[2, 2, 2], [4, 2, 4]])


class Fixed(ContextSource):
    """Two tokens with fixed boxes."""

    def __init__(self, width=128):
        self.tokens = torch.randn(1, 2, width, generator=torch.Generator().manual_seed(4))

    def context(self, history, grid, dit):
        return ContextTokens(self.tokens, POSITIONS, EXTENT)

    def tokens_for(self, grid, history_frames):
        return 2


ORIGIN = 4.0  # the earliest context token (t = -4) becomes t = 0: the section and its ids move 4 frames on


def moved(image_ids, origin=ORIGIN):
    """Image ids moved on in time by the origin."""
    out = image_ids.clone()
    out[..., 0] += origin
    return out


def test_context_tokens_and_phases_reach_the_blocks(pack, load_wan):
    from comfyui_histenc.histenc_nodes._common import attach_context

    model = load_wan(NAME)
    dm = model.get_model_object("diffusion_model")
    seen = {}

    def spy(args, extra):
        seen["img"], seen["pe"] = args["img"], args["pe"]
        return extra["original_block"](args)

    def ids(module, args, out):
        seen["ids"] = args[0]

    m = attach_context(model, [Fixed()], torch.zeros(1, 16, 1, 8, 8))
    m.set_model_patch_replace(spy, "dit", "double_block", 0)
    handle = dm.pe_embedder.register_forward_hook(ids)  # sees the ids the phases are made of, in the host's order
    x = torch.randn(1, 16, 2, 8, 8)
    try:
        call(m, x, m.model_options["transformer_options"])
    finally:
        handle.remove()
    n_img = 2 * 4 * 4
    assert seen["img"].shape[1] == n_img + 2
    assert seen["pe"].shape[2] == n_img + 2 + 5  # image, context, text
    # the image ids are the only non-zero rows: the phases follow them, at the end on hosts that build
    # cat(txt_ids, img_ids) (0.33), before the text on older ones (0.3.75); they moved on by the origin
    end = int(torch.nonzero(seen["ids"][0].abs().sum(-1)).max()) + 1
    assert end in (n_img, 5 + n_img)
    image = seen["ids"][:, end - n_img : end]
    assert torch.equal(image, moved(dm.img_ids(x))) and image[..., 0].min() == ORIGIN
    expected = box_rope(dm.pe_embedder, POSITIONS + torch.tensor([ORIGIN, 0, 0]), EXTENT, (2, 4, 4)).movedim(2, 1)
    assert torch.allclose(seen["pe"][:, :, end : end + 2], expected)
    stock = dm.pe_embedder(seen["ids"])
    assert torch.equal(torch.cat([seen["pe"][:, :, :end], seen["pe"][:, :, end + 2 :]], dim=2), stock)


@pytest.mark.parametrize("text_first", [True, False])
@pytest.mark.parametrize("reference", [False, True])
def test_phases_follow_the_image_ids_in_either_order(pack, load_wan, text_first, reference):
    """Older hosts pass cat(img_ids, txt_ids) to pe_embedder, newer ones cat(txt_ids, img_ids); a reference
    latent's ids (t = -1) sit just before the section's. The context's phases go right after the section's,
    and every image id (the reference latent's too) moves on by the origin; text ids stay at zero."""
    from histenc.dit import hunyuan
    from histenc.dit.payload import ContextPayload

    dm = load_wan(NAME).get_model_object("diffusion_model")
    x = torch.randn(1, 16, 2, 8, 8)
    hooks = hunyuan.context_hooks(dm, ContextPayload([Fixed()], torch.zeros(1, 16, 1, 8, 8)), x)
    image = dm.img_ids(x)
    if reference:
        ref = dm.img_ids(torch.zeros(1, 16, 1, 8, 8))
        ref[..., 0] = -1
        image = torch.cat([ref, image], dim=1)
    text = torch.zeros(1, 5, 3)
    ids = torch.cat([text, image] if text_first else [image, text], dim=1)
    stock = dm.pe_embedder(torch.cat([text, moved(image)] if text_first else [moved(image), text], dim=1))
    with hooks.installed():
        pe = dm.pe_embedder(ids)
    end = image.shape[1] + (5 if text_first else 0)
    expected = box_rope(dm.pe_embedder, POSITIONS + torch.tensor([ORIGIN, 0, 0]), EXTENT, (2, 4, 4)).movedim(2, 1)
    assert pe.shape[2] == ids.shape[1] + 2
    assert torch.equal(pe[:, :, end : end + 2], expected)
    assert torch.equal(torch.cat([pe[:, :, :end], pe[:, :, end + 2 :]], dim=2), stock)


def test_a_sliding_window_is_the_stock_forward_on_the_history_and_the_section(pack, load_wan):
    """The origin rule: the window's first frame is t = 0, as the stock model numbers a clip it is given whole."""
    from comfyui_histenc.histenc_nodes._common import attach_context

    model = load_wan(NAME)
    g = torch.Generator().manual_seed(9)
    history, x = torch.randn(1, 16, 5, 6, 10, generator=g), torch.randn(1, 16, 3, 6, 10, generator=g)
    m = attach_context(model, [SlidingWindow(2)], history)
    ours = call(m, x, m.model_options["transformer_options"])
    stock = call(model, torch.cat([history[:, :, -2:], x], dim=2))[:, :, 2:]
    assert (ours - stock).abs().max() <= 1e-5 * stock.abs().max()


def test_a_box_past_the_grid_repeats_the_edge_cells(pack, load_wan):
    """FramePack's replicate padding: cells past the section's last row / column count as that row / column."""
    from histenc.dit import hunyuan
    from histenc.dit.payload import ContextPayload

    class Edge(Fixed):
        def context(self, history, grid, dit):
            return ContextTokens(self.tokens, torch.tensor([[-4.0, 2, 2], [-2.0, 0, 0]]), torch.tensor([[4, 4, 4]] * 2))

    dm = load_wan(NAME).get_model_object("diffusion_model")
    x = torch.randn(1, 16, 2, 6, 6)  # 3x3 cells: the first box covers rows and columns 2, 3, 4, 5 -> 2, 2, 2, 2
    hooks = hunyuan.context_hooks(dm, ContextPayload([Edge()], torch.zeros(1, 16, 1, 6, 6)), x)
    one_cell = box_rope(dm.pe_embedder, torch.tensor([[0.0, 2, 2]]), torch.tensor([[4, 1, 1]])).movedim(2, 1)
    assert torch.allclose(hooks.phases[:, :, :1], one_cell, atol=1e-6)
    clipped = box_rope(dm.pe_embedder, torch.tensor([[2.0, 0, 0]]), torch.tensor([[4, 3, 3]])).movedim(2, 1)
    assert not torch.allclose(hooks.phases[:, :, 1:], clipped, atol=1e-4)  # 0, 1, 2, 2 is not 0, 1, 2


def test_one_image_token_falls_back_on_the_block_order(pack, load_wan):
    """A one-token section at (0, 0, 0) looks like every text id; the double blocks' order then decides."""
    from histenc.dit import hunyuan
    from histenc.dit.payload import ContextPayload

    dm = load_wan(NAME).get_model_object("diffusion_model")
    x = torch.randn(1, 16, 1, 2, 2)
    hooks = hunyuan.context_hooks(dm, ContextPayload([Fixed()], torch.zeros(1, 16, 1, 2, 2)), x)
    ids = torch.zeros(1, 6, 3)
    image_first = getattr(dm.double_blocks[0], "flipped_img_txt", False)
    assert hooks.after_section(ids) == (1 if image_first else 6)


def test_deep_copied_options_route_to_the_live_dit_and_reapplying_replaces(pack, load_wan):
    import copy

    from comfyui_histenc.histenc_nodes._common import attach_context
    from histenc.dit import hunyuan
    from histenc.dit.payload import JOINT_KEY

    history = torch.randn(1, 16, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    first = attach_context(load_wan(NAME), [SlidingWindow(2)], history)
    again = attach_context(first, [SlidingWindow(2)], history)
    assert again.model_options["transformer_options"]["wrappers"]["diffusion_model"][JOINT_KEY] == [hunyuan.joint]
    second = load_wan(NAME)
    with torch.no_grad():
        second.get_model_object("diffusion_model").final_layer.linear.weight.mul_(2.0)
    expected = attach_context(second, [SlidingWindow(2)], history)
    second.model_options = copy.deepcopy(first.model_options)
    x = torch.randn(1, 16, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    out = call(second, x, second.model_options["transformer_options"])
    assert torch.equal(out, call(expected, x, expected.model_options["transformer_options"]))
    assert (out - call(first, x, first.model_options["transformer_options"])).abs().max() > 1e-4
    assert torch.equal(
        call(again, x, again.model_options["transformer_options"]),
        call(first, x, first.model_options["transformer_options"]),
    )


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
