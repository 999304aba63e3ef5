"""The long-video sampler node in-process: resume, interruption, native continuation, bad input."""

import re

import pytest
import torch

from histenc.longvideo.storyboard import Storyboard
from histenc.window import SlidingWindow
from tests.helpers import interrupt_third_section

T2V, I2V, TI2V = (
    "histenc_tiny_wan21_t2v.safetensors",
    "histenc_tiny_wan21_i2v.safetensors",
    "histenc_tiny_wan22_ti2v.safetensors",
)


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
    from comfyui_histenc.histenc_nodes.storyboard import EncodedStoryboard

    return EncodedStoryboard(Storyboard.parse(text), FakeClip())


def negative():
    return [[embed_text("low quality"), {}]]


def sample(model, seconds=3.0, job="", context=None, continuation=1, size=32, cfg=1.0, **kw):
    from comfyui_histenc.histenc_nodes.long_video import LongVideoSampler

    out = LongVideoSampler.execute(
        model,
        kw.pop("storyboard", board()),
        negative(),
        seconds,
        8.0,
        2,
        size,
        size,
        5,
        2,
        cfg,
        kw.pop("sampler_name", "euler"),
        kw.pop("scheduler", "simple"),
        continuation,
        job,
        context=context,
        **kw,
    )
    return out.args[0]["samples"], out.args[1]


# 32 px is 4x4 latent pixels, 2x2 patch cells: a one-frame window is 4 tokens
WINDOW_TOKENS = 4


def summary_of(tokens: int, resumed: int = 0, order: str | None = None, job: str | None = None) -> str:
    """The summary of ``sample``'s 3 s job: 24 frames at 8 fps, 7 latent frames in sections of 2, 2, 2, 1; a named
    job's state is removed at the end (its size as a pattern)."""
    text = (
        f"4 of 4 sections done (7 of 7 latent frames), 0:03 of 0:03 of video, context up to {tokens} tokens per section"
    )
    if resumed:
        text += f"; resumed {resumed} finished section(s) from disk"
    text = f"{text}." if order is None else f"{text}. Sampling order: {order}."
    if job is None:
        return re.escape(text)
    return re.escape(text) + rf" Job state removed: [0-9.]+ kB in output/histenc_jobs/{job}\."


def test_video_length_and_summary(pack, load_wan, outdir):
    latents, summary = sample(load_wan(T2V), context=[SlidingWindow(1)])
    assert latents.shape == (1, 16, 7, 4, 4)  # 24 frames -> 1 + ceil(23 / 4) = 7 latent frames
    assert re.fullmatch(summary_of(WINDOW_TOKENS), summary) and torch.isfinite(latents).all()


def test_interrupted_job_resumes_bit_identical(pack, load_wan, outdir, monkeypatch):
    import comfy.model_management as mm

    model = load_wan(T2V)
    full, _ = sample(model, context=[SlidingWindow(1)])

    interrupt_third_section(monkeypatch)
    with pytest.raises(mm.InterruptProcessingException):
        sample(model, job="resume_me", context=[SlidingWindow(1)])
    monkeypatch.undo()
    saved = sorted(p.name for p in (outdir / "histenc_jobs" / "resume_me").glob("*.safetensors"))
    assert len(saved) == 2  # the two sections finished before the interruption are safe on disk
    resumed, summary = sample(model, job="resume_me", context=[SlidingWindow(1)])
    # tokens measured on the two sections sampled now; the finished job's state is removed
    assert re.fullmatch(summary_of(WINDOW_TOKENS, resumed=2, job="resume_me"), summary)
    assert not (outdir / "histenc_jobs" / "resume_me").exists()
    assert torch.equal(resumed, full)


def test_changed_setting_refuses_to_resume(pack, load_wan, outdir):
    model = load_wan(T2V)
    sample(model, seconds=2.0, job="fixed", keep_job_state=True)
    with pytest.raises(ValueError) as refused:
        sample(model, seconds=2.0, job="fixed", continuation=2)
    assert str(refused.value) == (
        "job 'fixed' was started with continuation_frames = 1 but is queued with 2; queue it with the same settings "
        "to resume, or give a new job name to start over."
    )


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
    from comfyui_histenc.histenc_nodes.long_video import LongVideoSampler

    with pytest.raises(ValueError, match=message):
        LongVideoSampler.execute(
            load_wan(T2V), board(), negative(), 2.0, 8.0, 2, width, 32, 0, 1, 1.0, "euler", "simple", 1, ""
        )


def test_bad_job_name_seconds_and_cfg(pack, load_wan, outdir):
    with pytest.raises(ValueError, match=r"^job name '../escape' contains a slash, backslash or colon; use a plain"):
        sample(load_wan(T2V), seconds=2.0, job="../escape")
    with pytest.raises(ValueError, match=r"^job name 'D:evil' contains a slash"):
        sample(load_wan(T2V), seconds=2.0, job="D:evil")
    with pytest.raises(ValueError, match="total seconds must be a positive number"):
        sample(load_wan(T2V), seconds=0.0)
    with pytest.raises(ValueError, match="total seconds must be a positive number, got nan"):
        sample(load_wan(T2V), seconds=float("nan"))
    with pytest.raises(ValueError, match=r"^cfg is nan; give a finite guidance scale such as 5\.0\.$"):
        sample(load_wan(T2V), cfg=float("nan"))


def test_start_image_of_another_size_is_resized_and_kept(pack, load_wan, load_vae, outdir):
    vae = load_vae()
    image = torch.rand(1, 48, 40, 3, generator=torch.Generator().manual_seed(0))  # wrong size: 40x48
    latents, summary = sample(
        load_wan(T2V), seconds=1.0, storyboard=board("0:00 a red kite"), vae=vae, start_image=image
    )
    assert "Note: start image is 40x48; resized to 32x32." in summary
    import comfy.utils

    resized = comfy.utils.common_upscale(image.movedim(-1, 1), 32, 32, "bilinear", "center").movedim(1, -1)
    assert torch.allclose(latents[:, :, :1], vae.encode(resized).float(), atol=1e-5)


def test_start_image_without_vae_is_one_sentence(pack, load_wan, outdir):
    with pytest.raises(ValueError, match="a start image needs a VAE"):
        sample(load_wan(T2V), seconds=1.0, storyboard=board("0:00 a red kite"), start_image=torch.rand(1, 32, 32, 3))


ENDPOINTS, INVERTED = "endpoints first", "inverted (anti-drifting, towards the start image)"


def spy_sampling(monkeypatch):
    """Every comfy.sample.sample call: (section index from its seed, latent_image, noise_mask, positive)."""
    import comfy.sample

    from histenc.longvideo.loop import section_seed

    real, calls = comfy.sample.sample, []
    index = {section_seed(5, i): i for i in range(16)}  # sample() uses seed 5

    def spy(*args, **kwargs):
        calls.append((index[kwargs["seed"]], args[8].clone(), kwargs.get("noise_mask"), args[6]))
        return real(*args, **kwargs)

    monkeypatch.setattr(comfy.sample, "sample", spy)
    return calls


def framepack(model, schedule="td_f2k2f1k1_g2"):
    from comfyui_histenc.histenc_nodes.framepack import FramePackContextNode

    return FramePackContextNode.execute(model, schedule, "time", 1.0, 8.0).args[0]


def test_forward_order_is_the_default_bit_for_bit(pack, load_wan, outdir):
    model = load_wan(T2V)
    omitted, summary = sample(model, context=framepack(model))
    forward, same = sample(model, context=framepack(model), sampling_order="forward")
    # td_f2k2f1k1 at 2x2 cells: the newest frame 4 tokens, the 2 before it one k2 box, older frames deleted
    assert torch.equal(omitted, forward) and summary == same and re.fullmatch(summary_of(4 + 1), summary)


# The window shows history BEFORE a section only: inverted makes every section before the one in front of it,
# so no section has any (0 tokens); the other orders fill gaps after the section before is made.
@pytest.mark.parametrize(
    "order, made, tokens",
    [
        (ENDPOINTS, [0, 3, 1, 2], WINDOW_TOKENS),
        (INVERTED, [3, 2, 1, 0], 0),
        ("one anchor per prompt", [0, 2, 1, 3], WINDOW_TOKENS),
    ],
)
def test_orders_make_every_section_once_in_the_planned_order(pack, load_wan, outdir, monkeypatch, order, made, tokens):
    calls = spy_sampling(monkeypatch)
    # 4 sections of 2, 2, 2, 1 latent frames; the second prompt is in force at the middles of sections 2 and 3
    story = board("0:00 a red kite\n0:01.5 a blue boat")
    latents, summary = sample(load_wan(T2V), context=[SlidingWindow(1)], sampling_order=order, storyboard=story)
    assert [i for i, *_ in calls] == made
    assert latents.shape == (1, 16, 7, 4, 4) and torch.isfinite(latents).all()
    assert re.fullmatch(summary_of(tokens, order=order), summary)


@pytest.mark.parametrize("name", [T2V, I2V])
def test_a_section_leads_natively_into_the_finished_one_after_it(pack, load_wan, load_vae, outdir, monkeypatch, name):
    calls = spy_sampling(monkeypatch)
    image = torch.rand(1, 32, 32, 3, generator=torch.Generator().manual_seed(0))
    vae = load_vae()
    video, _ = sample(load_wan(name), sampling_order=INVERTED, vae=vae, start_image=image)
    starts, frames = [0, 2, 4, 6], [2, 2, 2, 1]
    for index, latent, mask, positive in calls:
        if index == 3:  # made first: nothing around it
            assert latent.shape[2] == 1 and mask is None and "concat_mask" not in positive[0][1]
            continue
        if name == I2V:  # the image-conditioning channels carry the known frames, concat_mask 0 on them
            latent, mask = positive[0][1]["concat_latent_image"], positive[0][1]["concat_mask"]
        # the next section's first latent frame closes this one, and is dropped afterwards
        assert latent.shape[2] == frames[index] + 1 and bool((mask[:, :, -1] == 0).all())
        assert torch.equal(latent[:, :, -1], video[:, :, starts[index + 1]])
        assert bool((mask[:, :, 1:-1] == 1).all())
    assert [i for i, *_ in calls][-1] == 0  # made last, on the start image at frame 0 as in a forward run
    if name == T2V:
        assert torch.allclose(video[:, :, :1], vae.encode(image).float(), atol=1e-5)


def test_a_framepack_context_sees_the_planned_endpoint_after_the_section(pack, load_wan, outdir):
    from histenc.framepack.packing import FramePackContext

    model = load_wan(T2V)
    (source,) = framepack(model)
    seen = {}
    real = FramePackContext.context_both

    def spy(self, before, after, grid, dit, after_times=None, before_times=None):
        ctx = real(self, before, after, grid, dit, after_times=after_times, before_times=before_times)
        seen.setdefault(None if before is None else before.shape[2], []).append(
            sorted({int(t) for t in ctx.positions[:, 0].tolist() if t >= grid.frames})
        )
        return ctx

    source.context_both = spy.__get__(source)
    sample(model, context=[source], sampling_order=ENDPOINTS)
    # keyed by frames before. Section 3 (made second) sees section 0 six frames back and nothing after it.
    # Section 1 (2 frames after 1 continuation frame: 3 on the grid) sees section 3 2 frames past its end:
    # t = 3 + 2 = 5. Section 2 also closes on section 3's first frame (4 on the grid) and sees it adjacent: t = 4.
    assert seen == {2: [[], [5]], 4: [[4]]}


def test_a_resumed_endpoints_job_is_bit_identical_and_the_order_is_kept(pack, load_wan, outdir, monkeypatch):
    import comfy.model_management as mm

    model = load_wan(T2V)
    full, _ = sample(model, context=framepack(model), sampling_order=ENDPOINTS)
    interrupt_third_section(monkeypatch)
    with pytest.raises(mm.InterruptProcessingException):
        sample(model, job="ends", context=framepack(model), sampling_order=ENDPOINTS)
    monkeypatch.undo()
    with pytest.raises(
        ValueError, match='^job \'ends\' was started with sampling_order = "endpoints first" but is queued with "inv'
    ):
        sample(model, job="ends", context=framepack(model), sampling_order=INVERTED)
    with pytest.raises(
        ValueError, match='^job \'ends\' was started with sampling_order = "endpoints first" but is queued with "for'
    ):
        sample(model, job="ends", context=framepack(model))
    resumed, summary = sample(model, job="ends", context=framepack(model), sampling_order=ENDPOINTS)
    # sections 1 and 2 are sampled now: 2 and 4 frames before (4 + one k2 box) and section 3's frame after (4)
    assert re.fullmatch(summary_of(4 + 1 + 4, resumed=2, order=ENDPOINTS, job="ends"), summary)
    assert torch.equal(resumed, full)


def test_an_unknown_sampling_order_is_one_sentence(pack, load_wan, outdir):
    with pytest.raises(ValueError, match="sampling_order 'backwards' is not one of"):
        sample(load_wan(T2V), seconds=2.0, sampling_order="backwards")


def test_a_stale_combo_value_is_one_sentence_never_a_silent_fallback(pack, load_wan, outdir):
    """ComfyUI 0.3.75 does not check a V3 combo: euler_fancy would run as euler. validate_inputs takes sampler_name
    (a sentence before the prompt is queued); every combo is checked again when the node runs."""
    from comfyui_histenc.histenc_nodes.long_video import LongVideoSampler

    assert LongVideoSampler.validate_inputs(sampler_name="euler") is True
    assert LongVideoSampler.validate_inputs() is True  # linked: checked on run
    problem = LongVideoSampler.validate_inputs(sampler_name="euler_fancy")
    assert problem.startswith("sampler_name 'euler_fancy' is not one of its options ('euler', ")
    assert problem.endswith("...); pick one of them in the node.")
    with pytest.raises(ValueError, match=r"^sampler_name 'euler_fancy' is not one of its options"):
        sample(load_wan(T2V), seconds=1.0, sampler_name="euler_fancy")
    with pytest.raises(ValueError, match=r"^scheduler 'fancy' is not one of its options \('simple', "):
        sample(load_wan(T2V), seconds=1.0, scheduler="fancy")


def test_the_f1_preset_makes_the_start_image_its_own_section_and_samples_whole_windows(
    pack, load_wan, load_vae, outdir, monkeypatch
):
    """framepack_f1: latent frame 0 is the start image (context only, never denoised), then 2-frame windows."""
    calls = spy_sampling(monkeypatch)
    model, vae = load_wan(T2V), load_vae()
    image = torch.rand(1, 32, 32, 3, generator=torch.Generator().manual_seed(0))
    video, summary = sample(
        model, context=framepack(model, "framepack_f1_g2"), continuation=0, vae=vae, start_image=image
    )
    # 3 s at 8 fps: 7 latent frames = the start frame, then windows of 2, 2, 2; F1's context is full from the
    # first window on: start slot and 1x at 2x2 cells (4 + 4), one k2 box, four k4 boxes
    assert [i for i, *_ in calls] == [1, 2, 3]
    assert all(latent.shape[2] == 2 and mask is None for _, latent, mask, _ in calls)
    assert torch.allclose(video[:, :, :1], vae.encode(image).float(), atol=1e-5)
    assert (
        summary
        == "4 of 4 sections done (7 of 7 latent frames), 0:03 of 0:03 of video, context up to 13 tokens per section."
    )


def test_the_f1_preset_needs_a_start_image_and_the_forward_order(pack, load_wan, load_vae, outdir):
    model = load_wan(T2V)
    context = framepack(model, "framepack_f1")
    with pytest.raises(ValueError, match="the FramePack Context 'framepack_f1' starts from a start image"):
        sample(model, context=context)
    image = torch.rand(1, 32, 32, 3)
    with pytest.raises(ValueError, match="sampling_order 'endpoints first' makes later sections first, but FramePack"):
        sample(model, context=context, vae=load_vae(), start_image=image, sampling_order=ENDPOINTS)


def test_prompt_settings_give_every_section_the_guidance_of_flux_guidance(pack, load_wan, outdir, monkeypatch):
    from comfy_extras.nodes_flux import FluxGuidance

    calls = spy_sampling(monkeypatch)
    settings = FluxGuidance.execute(negative(), 10.0).args[0]
    sample(load_wan(T2V), seconds=2.0, prompt_settings=settings)
    assert calls and all(positive[0][1]["guidance"] == 10.0 for *_, positive in calls)
    with pytest.raises(ValueError, match="prompt_settings holds no guidance; connect a FluxGuidance node"):
        sample(load_wan(T2V), seconds=2.0, prompt_settings=negative())
