"""Load FramePack HunyuanVideo and Apply FramePack Projections in-process, on the tiny file FramePack's own model
class writes; the start image's CLIP-vision tokens and the F1 layout through the Long Video Sampler."""

import re

import pytest
import torch
from safetensors.torch import save_file

from histenc.framepack.hunyuan_checkpoint import ImageProjection, projections_pack
from histenc.framepack.packing import FramePackContext
from histenc.framepack.schedule import parse_schedule
from scripts.fixture_framepack_hunyuan import NAME, framepack_hunyuan_state_dict

SCHEDULE = "td_f4k4f2k2f1k1_g2"
TEXT_ONLY = "framepack_without_image_projection.safetensors"


@pytest.fixture
def nodes(pack):
    from comfyui_histenc.histenc_nodes import framepack, framepack_hunyuan

    return framepack, framepack_hunyuan


@pytest.fixture(scope="module")
def fp_sd():
    return framepack_hunyuan_state_dict(seed=11)


@pytest.fixture
def models(comfy, nodes, fp_sd, tmp_path, monkeypatch):
    """diffusion_models and framepack_projections redirected to a temporary folder holding the tiny file."""
    import folder_paths

    for name in ("diffusion_models", nodes[0].PROJECTIONS_FOLDER):
        (tmp_path / name).mkdir()
        monkeypatch.setitem(folder_paths.folder_names_and_paths, name, ([str(tmp_path / name)], {".safetensors"}))
    save_file(fp_sd, str(tmp_path / "diffusion_models" / NAME))
    text_only = {k: v for k, v in fp_sd.items() if not k.startswith("image_projection.")}
    save_file(text_only, str(tmp_path / "diffusion_models" / TEXT_ONLY))
    return tmp_path


def load(nodes, name=NAME, save_as=""):
    out = nodes[1].LoadFramePackHunyuan.execute(name, "default", save_as)
    return out.args[0], out.args[1], out.ui


def call(model, x, opts=None):
    g = torch.Generator().manual_seed(3)
    model.patch_model()
    try:
        with torch.no_grad():
            dm = model.get_model_object("diffusion_model")
            return dm(
                x,
                torch.tensor([0.7]),
                torch.randn(1, 5, 4096, generator=g),
                y=torch.randn(1, 768, generator=g),
                guidance=torch.tensor([6.0]),
                transformer_options=opts or {},
            )
    finally:
        model.unpatch_model()


def framepack_context(nodes, model):
    return nodes[0].FramePackContextNode.execute(model, parse_schedule(SCHEDULE), "time", 1.0, 16.0)[0]


def test_loader_gives_native_hunyuan_and_framepacks_projections(nodes, models, fp_sd):
    model, projections, _ = load(nodes)
    dm = model.get_model_object("diffusion_model")
    assert type(dm).__name__ == "HunyuanVideo" and type(model.model).__name__ == "HunyuanVideo"
    assert torch.equal(dm.double_blocks[0].img_attn.qkv.weight[:128], fp_sd["transformer_blocks.0.attn.to_q.weight"])
    assert torch.equal(projections.projections["k4h8w8"].weight, fp_sd["clean_x_embedder.proj_4x.weight"])
    x = torch.randn(1, 16, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    out = call(model, x)
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_applied_projections_replace_the_patch_start_and_reach_the_forward(nodes, models, fp_sd, pack):
    from comfyui_histenc.histenc_nodes._common import attach_context

    model, projections, _ = load(nodes)
    context = framepack_context(nodes, model)
    before = context[0].projections["k2h4w4"].weight.clone()
    applied = nodes[1].ApplyFramePackProjections.execute(context, projections)[0]
    assert torch.equal(applied[0].projections["k2h4w4"].weight, fp_sd["clean_x_embedder.proj_2x.weight"])
    assert torch.equal(context[0].projections["k2h4w4"].weight, before)  # the upstream output is left as it was
    history = torch.randn(1, 16, 6, 8, 8, generator=torch.Generator().manual_seed(1))
    x = torch.randn(1, 16, 2, 8, 8, generator=torch.Generator().manual_seed(2))
    outs = []
    for ctx in (context, applied):
        m = attach_context(model, ctx, history)
        outs.append(call(m, x, m.model_options["transformer_options"]))
    assert all(torch.isfinite(o).all() for o in outs) and (outs[0] - outs[1]).abs().max() > 1e-6


def test_the_model_records_how_the_host_rebuilds_it(nodes, models, fp_sd):
    """Dynamic VRAM (a plain patcher for training) and multi-GPU load the MODEL again from its loader."""
    model, _, _ = load(nodes)
    if not nodes[1].HOST_REBUILDS_MODELS:
        assert not hasattr(model, "cached_patcher_init")  # nothing is added to a host without rebuilds
        return
    init = model.cached_patcher_init
    assert init[0] is nodes[1].load_native and init[1][1:] == (NAME, {})
    expected = model.model.state_dict()
    for host_options in ({}, {"disable_dynamic": True}):  # multi-GPU's call, then dynamic VRAM's plain delegate
        rebuilt = init[0](*init[1], **host_options)[init[2]]
        assert rebuilt is not model and rebuilt.model is not model.model
        assert type(rebuilt.model.diffusion_model).__name__ == "HunyuanVideo" and not rebuilt.is_dynamic()
        got = rebuilt.model.state_dict()
        assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in expected)
        assert rebuilt.cached_patcher_init == init
    from comfy.model_patcher import ModelPatcher, ModelPatcherDynamic

    dynamic = object.__new__(ModelPatcherDynamic)  # the host's class; ComfyUI builds a real one only for a GPU
    ModelPatcher.__init__(dynamic, model.model, model.load_device, model.offload_device, model.model_size())
    dynamic.cached_patcher_init = init
    plain = dynamic.clone(disable_dynamic=True)  # what training and the non-dynamic paths ask for
    assert type(plain) is ModelPatcher and plain.model is not model.model
    key = "diffusion_model.img_in.proj.weight"
    assert torch.equal(plain.model.state_dict()[key], expected[key])


def test_saved_projections_are_picked_by_the_framepack_context_node(nodes, models, fp_sd):
    model, _, shown = load(nodes, save_as="framepack_f1")
    assert (models / "framepack_projections" / "framepack_f1.safetensors").is_file()
    assert "framepack_f1.safetensors" in str(shown.as_dict()) and "image projection in the model's vision_in" in str(
        shown.as_dict()
    )
    ctx = nodes[0].FramePackContextNode.execute(
        model, parse_schedule(SCHEDULE), "time", 1.0, 16.0, projections="framepack_f1.safetensors"
    )[0]
    assert torch.equal(ctx[0].projections["k1h2w2"].weight, fp_sd["clean_x_embedder.proj.weight"])


def test_split_checkpoint_loads_from_its_first_shard(nodes, models, fp_sd):
    keys = sorted(fp_sd)
    for i, part in enumerate((keys[:40], keys[40:]), start=1):
        save_file({k: fp_sd[k] for k in part}, str(models / "diffusion_models" / f"fp-0000{i}-of-00002.safetensors"))
    _, projections, _ = load(nodes, "fp-00001-of-00002.safetensors")
    assert torch.equal(projections.projections["k1h2w2"].bias, fp_sd["clean_x_embedder.proj.bias"])
    (models / "diffusion_models" / "fp-00002-of-00002.safetensors").unlink()
    with pytest.raises(ValueError, match="fp-00002-of-00002.safetensors is missing; put every shard"):
        load(nodes, "fp-00001-of-00002.safetensors")


def test_wan_weights_are_refused_naming_the_family(nodes, models, fixture_models):
    wan = "histenc_tiny_wan21_t2v.safetensors"
    (models / "diffusion_models" / wan).symlink_to(fixture_models / "diffusion_models" / wan)
    with pytest.raises(ValueError, match=f"{wan} holds a Wan 2.1 / 2.2 \\(native\\) model, not FramePack's"):
        load(nodes, wan)


def test_apply_needs_a_framepack_context(nodes):
    pack = projections_pack(
        {
            f"projections.{k}.{p}": torch.zeros(shape)
            for k, size in (("k1h2w2", (1, 2, 2)), ("k2h4w4", (2, 4, 4)), ("k4h8w8", (4, 8, 8)))
            for p, shape in (("weight", (128, 16, *size)), ("bias", (128,)))
        }
    )
    assert isinstance(pack, FramePackContext)
    with pytest.raises(ValueError, match="context holds no FramePack context"):
        nodes[1].ApplyFramePackProjections.execute([], pack)


def test_the_image_projection_is_the_models_vision_in(nodes, models, fp_sd):
    model, _, _ = load(nodes)
    projection = model.get_model_object("diffusion_model").vision_in
    assert isinstance(projection, ImageProjection) and projection.width == 1152
    assert torch.equal(projection.up.weight, fp_sd["image_projection.up.weight"])
    assert torch.equal(projection.down.bias, fp_sd["image_projection.down.bias"])
    assert "diffusion_model.vision_in.down.weight" in model.model.state_dict()
    text_only, _, shown = load(nodes, TEXT_ONLY)
    assert text_only.get_model_object("diffusion_model").vision_in is None
    assert "no image projection, the model runs text-only" in str(shown.as_dict())


def clip_vision(width=1152, tokens=8):
    from comfy.clip_vision import Output

    out = Output()
    out["last_hidden_state"] = torch.randn(1, tokens, width, generator=torch.Generator().manual_seed(4))
    return out


def run_f1(nodes, model, projections, load_vae, test_nodes, **kw):
    """2 s at 8 fps (5 latent frames: the start frame, then windows of 2 and 2) at 32x32 through framepack_f1."""
    from comfyui_histenc.histenc_nodes.long_video import LongVideoSampler
    from comfyui_histenc.histenc_nodes.storyboard import EncodedStoryboard
    from histenc.longvideo.storyboard import Storyboard

    context = nodes[0].FramePackContextNode.execute(model, parse_schedule("framepack_f1_g2"), "time", 1.0, 8.0)[0]
    context = nodes[1].ApplyFramePackProjections.execute(context, projections)[0]
    board = EncodedStoryboard(Storyboard.parse("0:00 a red kite"), test_nodes.FakeClip())
    negative = [[test_nodes.embed_text("low"), {"pooled_output": test_nodes.embed_text("low").mean(1)}]]
    args = dict(context=context, vae=load_vae(), start_image=torch.rand(1, 32, 32, 3))
    args.update(kw)
    out = LongVideoSampler.execute(
        model, board, negative, 2.0, 8.0, 2, 32, 32, 1, 1, 1.0, "euler", "simple", 0, "", **args
    )
    return out.args[0]["samples"], out.args[1]


def test_f1_sections_see_the_start_image_tokens_and_the_guidance(nodes, models, load_vae, test_nodes):
    from comfy_extras.nodes_flux import FluxGuidance

    model, projections, _ = load(nodes)
    dm = model.get_model_object("diffusion_model")
    seen = []

    def image_tokens(module, args, out):
        seen.append((args[0].shape, out.shape))

    guidance = []
    real = dm.guidance_in.forward

    def spy(x):
        guidance.append(x)
        return real(x)

    settings = FluxGuidance.execute([[test_nodes.embed_text("low"), {}]], 10.0).args[0]
    handle = dm.vision_in.register_forward_hook(image_tokens)
    dm.guidance_in.forward = spy
    try:
        latents, summary = run_f1(
            nodes, model, projections, load_vae, test_nodes, clip_vision_output=clip_vision(), prompt_settings=settings
        )
    finally:
        handle.remove()
        del dm.guidance_in.forward
    assert latents.shape == (1, 16, 5, 4, 4) and torch.isfinite(latents).all()
    # two sampled windows, one step each; the start frame is context only: 8 SigLIP tokens -> 8 hidden tokens
    assert seen == [(torch.Size([1, 8, 1152]), torch.Size([1, 8, 128]))] * 2
    from comfy.ldm.flux.layers import timestep_embedding

    assert all(torch.allclose(g, timestep_embedding(torch.tensor([10.0]), 256)) for g in guidance) and guidance
    # 2x2 cells: start slot 4, 1x 4, one k2 box, four k4 boxes
    assert summary.startswith("3 of 3 sections done (5 of 5 latent frames)") and "up to 13 tokens" in summary


def test_bad_image_conditioning_is_one_sentence_each(nodes, models, load_vae, test_nodes):
    model, projections, _ = load(nodes)
    with pytest.raises(ValueError, match="clip_vision_output is 1024 wide but the checkpoint's image projection takes"):
        run_f1(nodes, model, projections, load_vae, test_nodes, clip_vision_output=clip_vision(1024))
    with pytest.raises(ValueError, match="FramePack image-to-video checkpoint but start_image is not connected"):
        run_f1(nodes, model, projections, load_vae, test_nodes, start_image=None, clip_vision_output=clip_vision())
    with pytest.raises(ValueError, match="FramePack image-to-video checkpoint but clip_vision_output is not connected"):
        run_f1(nodes, model, projections, load_vae, test_nodes)
    text_only, text_projections, _ = load(nodes, TEXT_ONLY)
    with pytest.raises(
        ValueError, match="clip_vision_output is connected but this HunyuanVideo model has no FramePack"
    ):
        run_f1(nodes, text_only, text_projections, load_vae, test_nodes, clip_vision_output=clip_vision())
    _, summary = run_f1(nodes, text_only, text_projections, load_vae, test_nodes)  # text-only: no image needed
    assert summary.startswith("3 of 3 sections done")


def test_a_weight_dtype_or_checkpoint_outside_the_options_is_one_sentence(nodes, models):
    """The host does not check a V3 combo's value (once KeyError: 'fp4'); weight_dtype before the run, the file list
    when it runs."""
    loader = nodes[1].LoadFramePackHunyuan
    sentence = r"^weight_dtype 'fp4' is not one of its options \('default', 'fp8_e4m3fn', .*\); pick one of them"
    assert re.match(sentence, loader.validate_inputs(weight_dtype="fp4"))
    assert loader.validate_inputs(weight_dtype="fp8_e5m2") is True and loader.validate_inputs() is True
    with pytest.raises(ValueError, match=sentence):
        loader.execute(NAME, "fp4", "")
    with pytest.raises(ValueError, match=rf"^checkpoint 'gone.safetensors' is not one of its options \(.*{TEXT_ONLY}"):
        loader.execute("gone.safetensors", "default", "")
