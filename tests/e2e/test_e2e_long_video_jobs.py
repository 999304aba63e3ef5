"""Named Long Video Sampler jobs through the real server: a finished job resumes only with what made it (weights,
shift, LoRA and its strength), an older manifest and every refusal get one sentence naming the job and the
setting, the job's state is removed (or kept) once the video is built, stale combo values and a LoRA made for
another width are refused instead of silently sampling something else."""

from __future__ import annotations

import json
import re
import time
import urllib.request

import pytest
from safetensors.torch import save_file

from scripts.host import HostError
from tests.e2e.test_e2e_storyboard_bad_input import post_prompt
from tests.nodes.test_model_fingerprint_nodes import OTHER_T2V, T2V, lora

SAMPLER = "5"
TAIL = "; queue it with the same settings to resume, or give a new job name to start over."


def prompt(job: str = "", unet: str = T2V, shift: float | None = None, lora_file=None, strength=1.0, **inputs) -> dict:
    """1 s at 4 fps in one-latent-frame sections at 32x32, two steps; the summary in node 6."""
    api = {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": unet, "weight_dtype": "default"}},
        "2": {"class_type": "HistEncTestTextEncoder", "inputs": {}},
        "3": {
            "class_type": "HistEncStoryboard",
            "inputs": {"clip": ["2", 0], "storyboard": "0:00 a red kite", "global_prompt": ""},
        },
        "4": {"class_type": "HistEncTestConditioning", "inputs": {"text": "low quality"}},
        "6": {"class_type": "PreviewAny", "inputs": {"source": [SAMPLER, 1]}},
    }
    model = ["1", 0]
    if shift is not None:
        api["7"] = {"class_type": "ModelSamplingSD3", "inputs": {"model": model, "shift": shift}}
        model = ["7", 0]
    if lora_file is not None:
        api["8"] = {
            "class_type": "LoraLoaderModelOnly",
            "inputs": {"model": model, "lora_name": lora_file, "strength_model": strength},
        }
        model = ["8", 0]
    sampler = dict(model=model, storyboard=["3", 0], negative=["4", 0], seconds=1.0, fps=4.0, section_frames=1)
    sampler.update(width=32, height=32, seed=5, steps=2, cfg=1.0, sampler_name="euler", scheduler="simple")
    sampler.update(continuation_frames=1, job_name=job, **inputs)
    api[SAMPLER] = {"class_type": "HistEncLongVideoSampler", "inputs": sampler}
    return api


def free_cache(host) -> None:
    """Clear the server's output cache: POST /free, then one small prompt, after which the worker resets it."""
    body = json.dumps({"free_memory": True}).encode()
    request = urllib.request.Request(host.url + "/free", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as reply:
        reply.read()
    text = f"flush {time.time()}"
    host.run({"1": {"class_type": "HistEncTestConditioning", "inputs": {"text": text}},
              "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}}}, timeout=60)  # fmt: skip


def summary(entry: dict) -> str:
    return entry["outputs"]["6"]["text"][0]


def failure(host, api: dict) -> str:
    """The exception message of a prompt that the server accepted and that failed while running."""
    entry = host.wait(host.queue(api), timeout=300)
    assert entry["status"]["status_str"] == "error", entry["status"]
    [error] = [data for kind, data in entry["status"]["messages"] if kind == "execution_error"]
    return error["exception_message"].strip()


@pytest.fixture(scope="module")
def loras(host):
    folder = host.base / "models" / "loras"
    folder.mkdir(parents=True, exist_ok=True)
    save_file(lora(), str(folder / "histenc_e2e_kite.safetensors"))
    save_file(lora(width=256), str(folder / "histenc_e2e_other_width.safetensors"))
    return "histenc_e2e_kite.safetensors", "histenc_e2e_other_width.safetensors"


def test_a_kept_job_resumes_and_anything_that_changes_its_frames_is_refused(host, loras):
    job = "e2e_fingerprint"
    first = host.run(prompt(job, shift=8.0, lora_file=loras[0], keep_job_state=True), timeout=300)
    assert re.search(r" Job state kept: [0-9.]+ kB in output/histenc_jobs/e2e_fingerprint\.$", summary(first))
    free_cache(host)  # else the server returns its cached output without running the node again
    again = host.run(prompt(job, shift=8.0, lora_file=loras[0], keep_job_state=True), timeout=300)
    assert "; resumed 2 finished section(s) from disk." in summary(again)
    other_weights = failure(host, prompt(job, unet=OTHER_T2V, shift=8.0, lora_file=loras[0]))
    assert re.fullmatch(
        rf"job '{job}' was started with model weights = \"[0-9a-f]{{16}}\" but is queued with \"[0-9a-f]{{16}}\""
        + re.escape(TAIL),
        other_weights,
    )
    assert failure(host, prompt(job, shift=5.0, lora_file=loras[0])) == (
        f"job '{job}' was started with model sampling.shift = 8.0 but is queued with 5.0" + TAIL
    )
    assert failure(host, prompt(job, shift=8.0, lora_file=loras[0], strength=0.5)) == (
        f"job '{job}' was started with model patches.strengths[0] = [1.0, 1.0] but is queued with [0.5, 1.0]" + TAIL
    )
    assert failure(host, prompt(job, shift=8.0, lora_file=loras[0], seconds=2.0)) == (
        f"job '{job}' was started with seconds = 1.0 but is queued with 2.0" + TAIL
    )


def test_a_job_saved_before_the_fingerprint_is_refused_with_its_own_sentence(host):
    job = "e2e_old_manifest"
    host.run(prompt(job, keep_job_state=True), timeout=300)
    path = host.base / "output" / "histenc_jobs" / job / "manifest.json"
    manifest = json.loads(path.read_text())
    old = {k: v for k, v in manifest["settings"].items() if not k.startswith("model ")}
    manifest["settings"] = {**old, "model patches": []}  # what the node stored before
    path.write_text(json.dumps(manifest))
    assert failure(host, prompt(job)) == (
        f"job '{job}' was started by an earlier version of this node, which did not record the model's weights, "
        f"sampling and LoRAs, so resuming it could return another model's frames; give a new job name to start "
        f"over, or delete output/histenc_jobs/{job}."
    )


def test_a_finished_job_state_is_removed_after_the_video_unless_kept(host):
    job = "e2e_removed"
    entry = host.run(prompt(job), timeout=300)
    assert re.fullmatch(
        r"2 of 2 sections done \(2 of 2 latent frames\), 0:01 of 0:01 of video, context up to 0 tokens per section\. "
        rf"Job state removed: [0-9.]+ kB in output/histenc_jobs/{job}\.",
        summary(entry),
    )
    assert not (host.base / "output" / "histenc_jobs" / job).exists()


def test_a_stale_sampler_name_is_refused_before_queueing_once(host):
    status, answer = post_prompt(host, prompt(sampler_name="euler_fancy"))
    assert status == 400, answer
    errors = answer["node_errors"][SAMPLER]["errors"]
    assert [e["type"] for e in errors] == ["custom_validation_failed"]  # once, not once per input
    assert errors[0]["details"].startswith("sampler_name - sampler_name 'euler_fancy' is not one of its options (")


def test_a_stale_scheduler_is_refused_not_replaced(host):
    """0.33 checks it itself before queueing; on 0.3.75 the sampler refuses it before sampling."""
    api = prompt(scheduler="fancy")
    status, answer = post_prompt(host, api)
    if status == 400:
        [error] = answer["node_errors"][SAMPLER]["errors"]
        assert error["type"] == "value_not_in_list" and "fancy" in error["details"]
        return
    entry = host.wait(answer["prompt_id"], timeout=300)
    [error] = [data for kind, data in entry["status"]["messages"] if kind == "execution_error"]
    assert error["exception_message"].strip().startswith("scheduler 'fancy' is not one of its options ('simple', ")


def test_a_lora_made_for_another_width_is_refused_before_sampling(host, loras):
    message = failure(host, prompt(lora_file=loras[1]))
    assert message == (
        "a LoRA on model patches diffusion_model.blocks.0.self_attn.q.weight with a LoRA of shape [256, 256] but "
        "that weight is [128, 128] (the LoRA was made for another model or width), so ComfyUI would sample without "
        "it; load the LoRA made for this model, or remove it."
    )


def test_the_sampler_inputs_added_later_are_optional(host):
    """A prompt saved before model_low_noise, switch_step, switch_sigma and keep_job_state existed still runs."""
    api = prompt()
    assert not {"model_low_noise", "switch_step", "switch_sigma", "keep_job_state"} & set(api[SAMPLER]["inputs"])
    try:
        entry = host.run(api, timeout=300)
    except HostError as err:  # pragma: no cover - the assertion below names the failure
        pytest.fail(str(err))
    assert summary(entry).startswith("2 of 2 sections done")
