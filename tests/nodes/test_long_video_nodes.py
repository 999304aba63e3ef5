"""The long-video sampler node in-process: resume, interruption, native continuation, bad input."""

import pytest
import torch

from histenc.storyboard import Storyboard
from histenc.window import SlidingWindow

T2V, I2V, TI2V = ("histenc_tiny_wan21_t2v.safetensors", "histenc_tiny_wan21_i2v.safetensors",
                  "histenc_tiny_wan22_ti2v.safetensors")


@pytest.fixture
def outdir(comfy, tmp_path):
    import folder_paths

    old = folder_paths.get_output_directory()
    folder_paths.set_output_directory(str(tmp_path))
    yield tmp_path
    folder_paths.set_output_directory(old)


@pytest.fixture(autouse=True)
def _stubs(test_nodes):
    global FakeClip, embed_text
    FakeClip, embed_text = test_nodes.FakeClip, test_nodes.embed_text


def board(text="0:00 a red kite\n0:02 a blue boat"):
    from comfyui_histenc.nodes.storyboard import EncodedStoryboard

    return EncodedStoryboard(Storyboard.parse(text), FakeClip())


def negative():
    return [[embed_text("low quality"), {}]]


def sample(model, seconds=3.0, job="", context=None, continuation=1, size=32, **kw):
    from comfyui_histenc.nodes.long_video import LongVideoSampler

    out = LongVideoSampler.execute(model, kw.pop("storyboard", board()), negative(), seconds, 8.0, 2, size, size, 5, 2,
                                   1.0, "euler", "simple", continuation, job, context=context, **kw)
    return out.args[0]["samples"], out.args[1]


def test_video_length_and_summary(pack, load_wan, outdir):
    latents, summary = sample(load_wan(T2V), context=[SlidingWindow(1)])
    assert latents.shape == (1, 16, 7, 4, 4)  # 24 frames -> 1 + ceil(23 / 4) = 7 latent frames
    assert "4 of 4 sections done" in summary and torch.isfinite(latents).all()


def test_interrupted_job_resumes_bit_identical(pack, load_wan, outdir, monkeypatch):
    import comfy.model_management as mm
    import comfy.sample

    model = load_wan(T2V)
    full, _ = sample(model, context=[SlidingWindow(1)])

    real = comfy.sample.sample
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise mm.InterruptProcessingException()
        return real(*args, **kwargs)

    monkeypatch.setattr(comfy.sample, "sample", flaky)
    with pytest.raises(mm.InterruptProcessingException):
        sample(model, job="resume_me", context=[SlidingWindow(1)])
    monkeypatch.setattr(comfy.sample, "sample", real)
    saved = sorted(p.name for p in (outdir / "histenc_jobs" / "resume_me").glob("*.safetensors"))
    assert len(saved) == 2  # the two sections finished before the interruption are safe on disk
    resumed, summary = sample(model, job="resume_me", context=[SlidingWindow(1)])
    assert "resumed 2" in summary
    assert torch.equal(resumed, full)


def test_changed_setting_refuses_to_resume(pack, load_wan, outdir):
    model = load_wan(T2V)
    sample(model, seconds=2.0, job="fixed")
    with pytest.raises(ValueError, match="continuation_frames"):
        sample(model, seconds=2.0, job="fixed", continuation=2)


def test_continuation_reaches_the_model_on_every_wan_variant(pack, load_wan, outdir):
    for name, channels in ((T2V, 16), (I2V, 16), (TI2V, 48)):
        model = load_wan(name)
        size = 64 if channels == 48 else 32  # Wan 2.2: x16 VAE
        with_cont, _ = sample(model, seconds=2.0, size=size, continuation=1)
        without, _ = sample(model, seconds=2.0, size=size, continuation=0)
        assert with_cont.shape[1] == channels
        assert torch.equal(with_cont[:, :, :2], without[:, :, :2])  # first section has nothing to continue from
        assert (with_cont[:, :, 2:] - without[:, :, 2:]).abs().max() > 1e-6, name


@pytest.mark.parametrize("width,message", [(36, "width 36 is not a multiple of 16"), (0, "width 0 is too small")])
def test_resolution_not_divisible_is_one_sentence(pack, load_wan, outdir, width, message):
    from comfyui_histenc.nodes.long_video import LongVideoSampler

    with pytest.raises(ValueError, match=message):
        LongVideoSampler.execute(load_wan(T2V), board(), negative(), 2.0, 8.0, 2, width, 32, 0, 1, 1.0, "euler",
                                 "simple", 1, "")


def test_bad_job_name_and_seconds(pack, load_wan, outdir):
    with pytest.raises(ValueError, match="plain folder name"):
        sample(load_wan(T2V), seconds=2.0, job="../escape")
    with pytest.raises(ValueError, match="total seconds must be a positive number"):
        sample(load_wan(T2V), seconds=0.0)


def test_start_image_of_another_size_is_resized_and_kept(pack, load_wan, load_vae, outdir, capsys):
    vae = load_vae()
    image = torch.rand(1, 48, 40, 3, generator=torch.Generator().manual_seed(0))  # wrong size: 40x48
    latents, _ = sample(load_wan(T2V), seconds=1.0, storyboard=board("0:00 a red kite"), vae=vae, start_image=image)
    assert "resized to 32x32" in capsys.readouterr().out
    import comfy.utils
    resized = comfy.utils.common_upscale(image.movedim(-1, 1), 32, 32, "bilinear", "center").movedim(1, -1)
    assert torch.allclose(latents[:, :, :1], vae.encode(resized).float(), atol=1e-5)


def test_start_image_without_vae_is_one_sentence(pack, load_wan, outdir):
    with pytest.raises(ValueError, match="a start image needs a VAE"):
        sample(load_wan(T2V), seconds=1.0, storyboard=board("0:00 a red kite"), start_image=torch.rand(1, 32, 32, 3))
