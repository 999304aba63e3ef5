"""FramePack nodes in-process on the tiny native Wan: schedule, projection init, codebooks, the forward."""

import pytest
import torch

from histenc.context import SectionGrid
from histenc.framepack.codebook import DiscreteHistory, HistoryCodebook
from histenc.dit.wan import WanPatchifier
from histenc.framepack.packing import FramePackContext
from histenc.framepack.schedule import PAPER_SCHEDULES, parse_schedule

SCHEDULE = "td_f16k4f2k2f1k1_g9"


@pytest.fixture
def fp(pack):
    from comfyui_histenc.histenc_nodes import framepack

    return framepack


@pytest.fixture
def folders(fp, tmp_path, monkeypatch):
    """The pack's two model folders redirected to a temporary directory."""
    import folder_paths

    for name in (fp.PROJECTIONS_FOLDER, fp.CODEBOOKS_FOLDER):
        monkeypatch.setitem(folder_paths.folder_names_and_paths, name, ([str(tmp_path / name)], {".safetensors"}))
        (tmp_path / name).mkdir()
    return tmp_path


def make_context(fp, model, schedule=SCHEDULE, **kwargs):
    args = dict(ordering="time", lambda_time=1.0, fps=16.0)
    args.update(kwargs)
    return fp.FramePackContextNode.execute(model, parse_schedule(schedule), **args)[0]


def run(model, x, t, ctx):
    """Call the DiT with the patcher's object patches and transformer options applied (as sampling does)."""
    model.patch_model()
    try:
        dm = model.get_model_object("diffusion_model")
        opts = model.model_options.get("transformer_options", {})
        with torch.no_grad():
            return dm(x, t, ctx, transformer_options=opts)
    finally:
        model.unpatch_model()


def test_schedule_validation_refuses_a_bad_string_with_the_parser_sentence(fp):
    assert fp.FramePackScheduleNode.validate_inputs(SCHEDULE) is True
    for name in PAPER_SCHEDULES:
        assert fp.FramePackScheduleNode.validate_inputs(name) is True
    message = fp.FramePackScheduleNode.validate_inputs("td_f16k4f2q2_g9")
    assert isinstance(message, str)
    assert "at position 10 expected 'k' starting a kernel" in message and "found 'q'" in message
    assert fp.FramePackScheduleNode.validate_inputs(["1", 0]) is True  # linked: checked when it runs


@pytest.mark.parametrize(
    "name", [SCHEDULE, "td_f512k16f64k8f8k2f1k1_g9", "ta_f16k4f2k2f1k1_g9", "f1k1_x_g9_f1k1f4k2f16k4_td"]
)
def test_context_length_output_matches_the_schedule(fp, name):
    out = fp.FramePackScheduleNode.execute(name, 832, 480, 10.0, 16.0, 8)
    schedule, length, text = out[0], out[1], out[2]
    assert str(schedule) == name
    frames = 1 + -(-(160 - 1) // 4)  # 10 s at 16 fps = 160 frames -> 41 latent frames
    assert length == schedule.context_length(SectionGrid(schedule.generate_frames, 60, 104), frames)
    assert f"{length} context tokens" in text and "41 latent frames of 104x60" in text
    assert out.ui.as_dict()["text"] == (text,)


def test_context_length_by_hand_and_size_errors(fp):
    # 64x64 px -> 8x8 latent -> 4x4 cells: 16 tokens per f1k1 frame; 1 s at 16 fps = 5 latent frames, 2 are kept.
    assert fp.FramePackScheduleNode.execute("td_f2k1_g1", 64, 64, 1.0, 16.0, 8)[1] == 32
    assert fp.FramePackScheduleNode.execute("td_f2k1_g1", 64, 64, 0.0, 16.0, 8)[1] == 0
    # one k2 token covers 4x4 latent pixels: 2x2 tokens for two frames, plus 16 for the newest frame
    assert fp.FramePackScheduleNode.execute("td_f2k2f1k1_g1", 64, 64, 60.0, 16.0, 8)[1] == 4 + 16
    with pytest.raises(ValueError, match=r"width 72 is not a multiple of 32 \(VAE x16 times DiT patch x2\)"):
        fp.FramePackScheduleNode.execute(SCHEDULE, 72, 64, 1.0, 16.0, 16)


def test_projections_start_as_the_dit_patch_embedding(fp, load_wan):
    model = load_wan()
    [source] = make_context(fp, model)
    assert isinstance(source, FramePackContext) and set(source.projections) == {"k4h8w8", "k2h4w4", "k1h2w2"}
    dm = model.get_model_object("diffusion_model")
    g = torch.Generator().manual_seed(3)
    constant = torch.randn(1, 16, 1, 1, 1, generator=g).expand(1, 16, 24, 8, 8).contiguous()
    dit = WanPatchifier(dm, torch.device("cpu"), torch.float32)
    ctx = source.context(constant, SectionGrid(3, 8, 8), dit)
    assert ctx.count == 4 * 1 + 1 * 4 + 1 * 16  # 16 frames / k4, 2 frames / k2, 1 frame / k1; the tail is deleted
    with torch.no_grad():
        own = dm.patch_embedding(constant[:, :, :1].float()).flatten(2)[0, :, 0]
    assert torch.allclose(ctx.tokens[0], own.expand_as(ctx.tokens[0]), atol=1e-4)
    assert own.abs().max() > 1e-2  # a real token, not a zero that would match anything


def test_framepack_context_reaches_the_native_forward(fp, load_wan):
    from comfyui_histenc.histenc_nodes._common import attach_context

    model = load_wan()
    g = torch.Generator().manual_seed(0)
    x, t, text = torch.randn(1, 16, 3, 8, 8, generator=g), torch.tensor([500.0]), torch.randn(1, 6, 4096, generator=g)
    history = torch.randn(1, 16, 30, 8, 8, generator=g)
    stock = run(model, x, t, text)
    for ordering in ("time", "hybrid"):
        context = make_context(fp, model, ordering=ordering, lambda_time=0.5)
        out = run(attach_context(model, context, history), x, t, text)
        assert out.shape == stock.shape and torch.isfinite(out).all()
        assert (out - stock).abs().max() > 1e-6
    # the context really depends on the history, not only on its presence
    other = run(attach_context(model, context, history.flip(2)), x, t, text)
    assert (other - out).abs().max() > 1e-6


def test_codebook_fit_save_load_round_trip_and_discrete_context(fp, load_wan, folders):
    model = load_wan()
    latent = {"samples": torch.randn(2, 16, 3, 8, 8, generator=torch.Generator().manual_seed(1))}
    out = fp.FitHistoryCodebook.execute(model, latent, 8, 5, "tiny_book")
    fitted = out[0]
    path = folders / fp.CODEBOOKS_FOLDER / "tiny_book.safetensors"
    assert path.is_file() and str(path) in out.ui.as_dict()["text"][0]
    assert fitted.size == 8 and fitted.channels == 16
    # fitted in the space the DiT sees the history in: process_latent_in's output, not the raw latent
    space = model.model.process_latent_in(latent["samples"].float())
    assert torch.allclose(fitted.entries, HistoryCodebook.fit(space, k=8, seed=5).entries)

    options = fp.LoadHistoryCodebook.define_schema().inputs[0].options
    assert "tiny_book.safetensors" in options
    loaded = fp.LoadHistoryCodebook.execute("tiny_book.safetensors")[0]
    assert torch.equal(loaded.entries, fitted.entries)

    [source] = make_context(fp, model, "td_f4k2f1k1_g9+D", codebook=loaded)
    assert isinstance(source, DiscreteHistory) and isinstance(source.source, FramePackContext)
    # the pack sees the history with every latent pixel snapped to its codebook entry, not the history itself
    dit = WanPatchifier(model.get_model_object("diffusion_model"), torch.device("cpu"), torch.float32)
    history, grid = space[:1], SectionGrid(3, 8, 8)
    tokens = source.context(history, grid, dit).tokens
    assert torch.equal(tokens, source.source.context(loaded.apply(history), grid, dit).tokens)
    assert (tokens - source.source.context(history, grid, dit).tokens).abs().max() > 1e-4
    with pytest.raises(ValueError, match=r"discretises the history \(\+D\) but no codebook is connected"):
        make_context(fp, model, "td_f4k2f1k1_g9+D")
    with pytest.raises(ValueError, match="codebook has 4 channels but the model's latents have 16"):
        make_context(fp, model, codebook=HistoryCodebook(torch.zeros(3, 4)))
    with pytest.raises(ValueError, match="latent has shape \\(1, 4, 2, 8, 8\\) but this model's latents have 16"):
        fp.FitHistoryCodebook.execute(model, {"samples": torch.zeros(1, 4, 2, 8, 8)}, 8, 0, "bad")
    with pytest.raises(ValueError, match="codebook filename 'a/b' contains a slash, backslash or colon; use a plain"):
        fp.FitHistoryCodebook.execute(model, latent, 8, 0, "a/b")


def test_trained_projections_save_and_load_through_the_nodes(fp, load_wan, folders):
    model = load_wan()
    context = make_context(fp, model)
    [trained] = context
    with torch.no_grad():
        for conv in trained.projections.values():
            conv.weight.add_(torch.randn_like(conv.weight) * 0.01)
    out = fp.SaveFramePackProjections.execute(context, "trained")
    assert (folders / fp.PROJECTIONS_FOLDER / "trained.safetensors").is_file()
    assert f"'{SCHEDULE}'" in out.ui.as_dict()["text"][0]
    assert "trained.safetensors" in fp.FramePackContextNode.define_schema().inputs[5].options

    # a schedule using a subset of the kernels takes them from the file; a new kernel is refused
    [loaded] = make_context(fp, model, "td_f4k2f1k1_g9", projections="trained.safetensors")
    for key in ("k2h4w4", "k1h2w2"):
        assert torch.equal(loaded.projections[key].weight, trained.projections[key].weight)
    [fresh] = make_context(fp, model, "td_f4k2f1k1_g9")
    assert not torch.equal(fresh.projections["k2h4w4"].weight, trained.projections["k2h4w4"].weight)
    with pytest.raises(ValueError, match="has no projection for kernel k8h16w16"):
        make_context(fp, model, "td_f8k8f1k1_g9", projections="trained.safetensors")
    with pytest.raises(ValueError, match="context holds 0 FramePack contexts but saving needs exactly one"):
        fp.SaveFramePackProjections.execute([], "x")


def test_add_to_chains_context_sources(fp, load_wan):
    from comfyui_histenc.histenc_nodes.context import SlidingWindowContext

    model = load_wan()
    window = SlidingWindowContext.execute(2)[0]
    chained = make_context(fp, model, add_to=window)
    assert len(chained) == 2 and chained[0] is window[0] and isinstance(chained[1], FramePackContext)
    assert window == [window[0]]  # the input list is not modified


def test_the_f1_preset_through_the_schedule_and_context_nodes(fp, load_wan):
    # 832x480 -> 104x60 latent pixels, 52x30 cells: start slot and 1x 1560 each, 2x 15 * 26, 4x 4 * 8 * 13
    out = fp.FramePackScheduleNode.execute("framepack_f1", 832, 480, 30.0, 30.0, 8)
    schedule, length, text = out[0], out[1], out[2]
    assert str(schedule) == "framepack_f1" and length == 1560 + 1560 + 390 + 416
    assert fp.FramePackScheduleNode.execute("framepack_f1", 832, 480, 0.1, 30.0, 8)[1] == length
    assert text.startswith(f"framepack_f1: {length} context tokens") and "FramePack F1: the start image fills" in text
    assert fp.FramePackScheduleNode.validate_inputs("framepack_f1_g").startswith(
        "schedule 'framepack_f1_g' starts like"
    )
    [source] = make_context(fp, load_wan(), "framepack_f1")
    assert isinstance(source, FramePackContext) and source.schedule.fixed_slots
    assert source.describe()["schedule"] == "framepack_f1"


def test_projections_are_stored_in_the_dits_dtype_and_lose_nothing_it_keeps(fp, comfy, fixture_models):
    """On a DiT computing in bf16 the node keeps the projections in bf16 (half of fp32). They start from the DiT's
    patch embedding, which a bf16 file holds exactly (this fp32 fixture is rounded once); the tokens differ from
    an fp32 pack's by bf16 rounding only, which the DiT applies to every token it is given anyway."""
    import comfy.sd

    path = fixture_models / "diffusion_models" / "histenc_tiny_wan21_t2v.safetensors"
    from comfyui_histenc.histenc_nodes._common import compute_dtype

    model = comfy.sd.load_diffusion_model(str(path), model_options={"dtype": torch.bfloat16})
    [source] = make_context(fp, model)
    assert {p.dtype for p in source.parameters()} == {compute_dtype(model)}  # fp32 here: the CPU casts bf16 up
    model.model.manual_cast_dtype = None  # computing in the stored bf16, as a GPU does
    [source] = make_context(fp, model)
    assert {p.dtype for p in source.parameters()} == {torch.bfloat16}
    dm = model.get_model_object("diffusion_model")
    dit = WanPatchifier(dm, torch.device("cpu"), torch.bfloat16)
    full = FramePackContext.from_dit(dit, parse_schedule(SCHEDULE), ordering="time", lambda_time=1.0)
    assert {p.dtype for p in full.parameters()} == {torch.float32}
    for kept, wide in zip(source.parameters(), full.parameters()):  # rounding only: none where the file is bf16
        assert torch.equal(kept.float(), wide.bfloat16().float())
    history = torch.randn(1, 16, 30, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = source.context(history, SectionGrid(3, 8, 8), dit).tokens.float()
        reference = full.context(history, SectionGrid(3, 8, 8), dit).tokens
    scale = reference.abs().max()
    assert (ours - reference).abs().max() <= 2**-6 * scale  # a few bf16 steps at the largest token value
    assert (ours - reference.bfloat16().float()).abs().max() <= 2**-6 * scale
