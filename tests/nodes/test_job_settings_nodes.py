"""A named Long Video Sampler job resumes only when it would make the same video, and its state goes when it is done.

Each refusal names the job and the setting; a job saved before the settings covered the model's weights gets
its own sentence; a finished job's state is removed (or kept) after the video is built, with its size shown.
"""

import json
import re

import pytest
import torch

from tests.nodes.test_model_fingerprint_nodes import OTHER_T2V, T2V, shifted, with_lora

TAIL = "; queue it with the same settings to resume, or give a new job name to start over."


@pytest.fixture
def outdir(comfy, tmp_path):
    import folder_paths

    old = folder_paths.get_output_directory()
    folder_paths.set_output_directory(str(tmp_path))
    yield tmp_path
    folder_paths.set_output_directory(old)


def sample(test_nodes, model, job="job", story="0:00 a red kite\n0:01 a blue boat", **kw):
    """2 s at 4 fps in one-latent-frame sections, one step: the latents and the summary."""
    from comfyui_histenc.histenc_nodes.long_video import LongVideoSampler
    from comfyui_histenc.histenc_nodes.storyboard import EncodedStoryboard

    from histenc.longvideo.storyboard import Storyboard

    board = EncodedStoryboard(Storyboard.parse(story), test_nodes.FakeClip())
    negative = [[test_nodes.embed_text("low quality"), {}]]
    args = dict(seconds=2.0, fps=4.0, section_frames=1, width=32, height=32, seed=5, steps=1, cfg=1.0)
    args.update(sampler_name="euler", scheduler="simple", continuation_frames=1, job_name=job)
    args.update(kw)
    out = LongVideoSampler.execute(model, board, negative, **args)
    return out.args[0]["samples"], out.args[1]


def refusal(test_nodes, model, job="job"):
    with pytest.raises(ValueError) as refused:
        sample(test_nodes, model, job)
    return str(refused.value)


def test_a_finished_job_with_its_state_kept_resumes_every_section(pack, load_wan, test_nodes, outdir):
    model = load_wan(T2V)
    first, summary = sample(test_nodes, model, keep_job_state=True)
    size = sum(f.stat().st_size for f in (outdir / "histenc_jobs" / "job").iterdir())
    assert summary.endswith(f" Job state kept: {size / 1e3:.1f} kB in output/histenc_jobs/job.")
    again, summary = sample(test_nodes, load_wan(T2V), keep_job_state=True)  # the same file, loaded again
    assert "resumed 3 finished section(s) from disk" in summary and torch.equal(again, first)


def test_another_checkpoint_of_the_same_class_is_refused(pack, load_wan, test_nodes, outdir):
    sample(test_nodes, load_wan(T2V), keep_job_state=True)
    assert re.fullmatch(
        r"job 'job' was started with model weights = \"[0-9a-f]{16}\" but is queued with \"[0-9a-f]{16}\""
        + re.escape(TAIL),
        refusal(test_nodes, load_wan(OTHER_T2V)),
    )


def test_another_shift_is_refused(pack, load_wan, test_nodes, outdir):
    sample(test_nodes, shifted(load_wan(T2V), 8.0), keep_job_state=True)
    assert refusal(test_nodes, shifted(load_wan(T2V), 5.0)) == (
        "job 'job' was started with model sampling.shift = 8.0 but is queued with 5.0" + TAIL
    )


def test_another_lora_strength_or_lora_file_is_refused(pack, load_wan, test_nodes, outdir):
    sample(test_nodes, with_lora(load_wan(T2V), 1.0), keep_job_state=True)
    assert refusal(test_nodes, with_lora(load_wan(T2V), 0.5)) == (
        "job 'job' was started with model patches.strengths[0] = [1.0, 1.0] but is queued with [0.5, 1.0]" + TAIL
    )
    assert refusal(test_nodes, with_lora(load_wan(T2V), 1.0, seed=1)).startswith(
        "job 'job' was started with model patches.content = "
    )
    assert refusal(test_nodes, load_wan(T2V)).startswith("job 'job' was started with model patches.keys = 2 but")
    again, summary = sample(test_nodes, with_lora(load_wan(T2V), 1.0))
    assert "resumed 3 finished section(s)" in summary


def test_a_job_saved_before_the_fingerprint_gets_its_own_sentence(pack, load_wan, test_nodes, outdir):
    """An older manifest holds only the model class and patch keys: it is refused, never resumed or crashed on."""
    model = load_wan(T2V)
    sample(test_nodes, model, keep_job_state=True)
    manifest_path = outdir / "histenc_jobs" / "job" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    settings = {k: v for k, v in manifest["settings"].items() if not k.startswith("model ")}
    manifest["settings"] = {**settings, "model patches": []}  # as the node wrote it before
    manifest_path.write_text(json.dumps(manifest))
    assert refusal(test_nodes, model) == (
        "job 'job' was started by an earlier version of this node, which did not record the model's weights, "
        "sampling and LoRAs, so resuming it could return another model's frames; give a new job name to start "
        "over, or delete output/histenc_jobs/job."
    )


def test_a_changed_length_names_seconds_not_the_prompt_lists(pack, load_wan, test_nodes, outdir):
    model = load_wan(T2V)
    sample(test_nodes, model, keep_job_state=True)
    with pytest.raises(ValueError) as refused:
        sample(test_nodes, model, seconds=1.0)
    assert str(refused.value) == "job 'job' was started with seconds = 2.0 but is queued with 1.0" + TAIL


def test_a_finished_job_state_is_removed_after_the_video_is_built(pack, load_wan, test_nodes, outdir):
    import comfy.model_management as mm

    from tests.helpers import interrupt_third_section

    model = load_wan(T2V)
    full, _ = sample(test_nodes, model, job="")
    with pytest.MonkeyPatch.context() as m:
        interrupt_third_section(m)
        with pytest.raises(mm.InterruptProcessingException):
            sample(test_nodes, model)
    folder = outdir / "histenc_jobs" / "job"
    assert len(list(folder.glob("section_*.safetensors"))) == 2  # kept while the job is unfinished
    size = sum(f.stat().st_size for f in folder.iterdir())
    resumed, summary = sample(test_nodes, model)
    assert torch.equal(resumed, full) and not folder.exists()
    # removed after the last section was saved: the two resumed ones, the last one and the manifest
    assert re.search(r" Job state removed: ([0-9.]+) kB in output/histenc_jobs/job\.$", summary)
    assert float(re.search(r"removed: ([0-9.]+) kB", summary).group(1)) > size / 1e3
    _, unnamed = sample(test_nodes, model, job="", keep_job_state=True)
    assert unnamed.endswith(" No job state: give a job_name to keep one.")
