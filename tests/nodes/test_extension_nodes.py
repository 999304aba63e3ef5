"""Video extension nodes on the tiny native Wan: harmless at init, read by the sampler, both training stages."""

import pytest
import torch

from histenc.extension import ExtensionProjection
from tests.helpers import run_long_video

T2V, I2V = "histenc_tiny_wan21_t2v.safetensors", "histenc_tiny_wan21_i2v.safetensors"
BOARD = "0:00 a red kite\n0:01 a blue boat"


@pytest.fixture
def stubs(test_nodes):
    return test_nodes


def source_with(pack, weight_scale: float):
    from comfyui_histenc.histenc_nodes.extension import VideoExtensionSource

    projection = ExtensionProjection(16, 128)
    if weight_scale:
        with torch.no_grad():
            projection.proj.weight.normal_(0, weight_scale, generator=torch.Generator().manual_seed(0))
    return VideoExtensionSource(projection, "test.safetensors")


def test_zero_projection_gives_the_plain_sampler_result_and_a_trained_one_reads_the_given_frames(pack, load_wan, stubs):
    model = load_wan(T2V)
    plain = run_long_video(stubs, model, [], BOARD, 2.0)
    assert torch.equal(run_long_video(stubs, model, [source_with(pack, 0.0)], BOARD, 2.0), plain)
    read = run_long_video(stubs, model, [source_with(pack, 0.05)], BOARD, 2.0)
    assert torch.equal(read[:, :, 0], plain[:, :, 0])  # the first section has nothing given
    assert (read[:, :, 1:] - plain[:, :, 1:]).abs().max() > 1e-4


def test_condition_carries_the_continuation_frames_in_model_space(pack, load_wan, stubs, monkeypatch):
    seen = []
    source = source_with(pack, 0.0)
    original = source.condition_section
    monkeypatch.setattr(source, "condition_section", lambda m, c, g: seen.append((c, g)) or original(m, c, g))
    model = load_wan(T2V)
    latents = run_long_video(stubs, model, [source], BOARD, 2.0)
    first, second = seen[0], seen[1]
    assert first[1].sum() == 0 and first[0].abs().sum() == 0  # nothing given: the dropped task
    given = second[1][0, 0, :, 0, 0]
    assert given.tolist() == [1.0, 0.0]  # 1 continuation frame, then the new one
    expected = model.model.process_latent_in(latents[:, :, :1])
    assert torch.allclose(second[0][:, :, :1], expected, atol=1e-5)


def test_refuses_image_to_video_models_and_other_widths(pack, load_wan, stubs):
    with pytest.raises(ValueError, match="image-to-video"):
        run_long_video(stubs, load_wan(I2V), [source_with(pack, 0.0)], BOARD, 2.0)
    from comfyui_histenc.histenc_nodes.extension import VideoExtensionSource

    other = VideoExtensionSource(ExtensionProjection(16, 64), "small.safetensors")
    with pytest.raises(ValueError, match="made for width 64.*this model has width 128"):
        run_long_video(stubs, load_wan(T2V), [other], BOARD, 2.0)


def test_hunyuan_video_is_refused_in_one_sentence(pack, load_wan, stubs):
    """The extension is made from a Wan T2V model; HunyuanVideo (which has a LoRA layout now) is still refused."""
    with pytest.raises(ValueError, match="made from a Wan text-to-video model, but this MODEL is hunyuan_video") as e:
        run_long_video(stubs, load_wan("histenc_tiny_hunyuan_video.safetensors"), [source_with(pack, 0.0)], BOARD, 2.0)
    assert str(e.value).count(". ") == 0


def test_two_training_stages_write_loadable_files(pack, load_wan, stubs, comfy):
    import comfy.sd
    import comfy.utils
    import folder_paths
    from comfyui_histenc.histenc_nodes.extension import FOLDER, FinetuneVideoExtension, VideoExtensionContext

    model = load_wan(T2V)
    g = torch.Generator().manual_seed(0)
    latent = {"samples": torch.randn(2, 16, 9, 4, 4, generator=g)}
    positive = [[stubs.embed_text("a red kite"), {}]]
    common = dict(
        steps=3,
        learning_rate=1e-3,
        lora_rank=4,
        lora_targets="auto",
        lora_blocks="auto",
        clip_frames=4,
        max_given=1,
        section_frames=2,
        given_frames=1,
        max_clips=2,
        seed=0,
        checkpoint_every=10,
        gradient_checkpointing=False,
        latent=latent,
        positive=positive,
    )
    name = "test_extension_stages"
    out = FinetuneVideoExtension.execute(model, "extension", "new (zero-initialised)", output_name=name, **common)
    ext_path, lora_file = out.args[2], out.args[3]
    # a finished run removes its resumable checkpoint (keep_checkpoint off) and says so with its size
    summary = out.ui.as_dict()["text"][0]
    assert "checkpoint" in summary and "removed" in summary and "B" in summary, summary
    assert ext_path.endswith(f"{FOLDER}/{name}.safetensors") and lora_file.endswith(f"{name}.safetensors")
    sd = comfy.utils.load_torch_file(lora_file)
    assert any(".cross_attn." in k for k in sd)  # auto: every linear layer in the extension stage
    _, _ = comfy.sd.load_lora_for_models(model, None, sd, 1.0, 0)
    assert f"{name}.safetensors" in folder_paths.get_filename_list(FOLDER)

    context = VideoExtensionContext.execute(f"{name}.safetensors").args[0]
    staged = out.args[0]
    out2 = FinetuneVideoExtension.execute(staged, "causal", f"{name}.safetensors", output_name=name, **common)
    causal = comfy.utils.load_torch_file(out2.args[3])
    assert out2.args[3].endswith(f"{name}_causal.safetensors")
    assert {k.split(".")[2] for k in causal} == {"1"}  # latter half of 2 blocks
    assert {".".join(k.split(".")[3:5]) for k in causal} == {"self_attn.k", "self_attn.v"}
    latents = run_long_video(stubs, out2.args[0], context, BOARD, 2.0)
    assert torch.isfinite(latents).all()


def test_bad_training_input_names_it(pack, load_wan, stubs):
    from comfyui_histenc.histenc_nodes.extension import FinetuneVideoExtension

    args = dict(
        steps=1,
        learning_rate=1e-3,
        lora_rank=4,
        lora_targets="auto",
        lora_blocks="auto",
        clip_frames=8,
        max_given=2,
        section_frames=2,
        given_frames=1,
        max_clips=2,
        seed=0,
        output_name="x",
        checkpoint_every=10,
        gradient_checkpointing=False,
    )
    model = load_wan(T2V)
    latent = {"samples": torch.randn(1, 16, 3, 4, 4)}
    positive = [[stubs.embed_text("a kite"), {}]]
    with pytest.raises(ValueError, match="longest has 3 latent frames"):
        FinetuneVideoExtension.execute(
            model, "extension", "new (zero-initialised)", latent=latent, positive=positive, **args
        )
    with pytest.raises(ValueError, match="image-to-video"):
        FinetuneVideoExtension.execute(
            load_wan(I2V), "extension", "new (zero-initialised)", latent=latent, positive=positive, **args
        )
    with pytest.raises(ValueError, match="no training data"):
        FinetuneVideoExtension.execute(model, "extension", "new (zero-initialised)", **args)
    with pytest.raises(ValueError, match="is not in models/video_extensions"):
        FinetuneVideoExtension.execute(model, "causal", "missing.safetensors", latent=latent, positive=positive, **args)
    with pytest.raises(ValueError, match=r"dataset /etc is outside the folders this server may read and write"):
        FinetuneVideoExtension.execute(model, "extension", "new (zero-initialised)", dataset="/etc", **args)
