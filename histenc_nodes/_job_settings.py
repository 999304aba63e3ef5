"""A Long Video Sampler job on disk: its folder, the settings a resume is checked against, and its state once the
video is returned.

The settings hold everything that changes the frames (model_fingerprint: weights, model sampling, LoRAs and
their strengths, object patches; the prompts and their conditioning; every sampler input; the context
sources), so a re-queued job resumes only when it would make the same video. A finished job's state (about
96 MB for a minute at 832x480) is removed once the result is built, unless the user keeps it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import folder_paths

from ..histenc.files import check_plain_name
from ..histenc.longvideo.resume import finish_job_state, stored_settings
from ._model_fingerprint import model_fingerprint

JOBS_FOLDER = "histenc_jobs"
RECORDED = "model weights"  # jobs started before the fingerprint have no such setting


def job_folder(name: str) -> str | None:
    name = name.strip()
    if not name:
        return None
    check_plain_name(name, "job name")
    return os.path.join(folder_paths.get_output_directory(), JOBS_FOLDER, name)


def shown_folder(folder: str) -> str:
    """The job folder as the user finds it: under ComfyUI's output folder."""
    return f"output/{JOBS_FOLDER}/{Path(folder).name}"


def refuse_unrecorded(folder: str | None) -> None:
    """One sentence for a job folder started before the settings covered the model's weights and patches."""
    if folder is None:
        return
    settings = stored_settings(folder)
    if settings is not None and RECORDED not in settings:
        raise ValueError(
            f"job '{Path(folder).name}' was started by an earlier version of this node, which did not record the "
            "model's weights, sampling and LoRAs, so resuming it could return another model's frames; give a new "
            f"job name to start over, or delete {shown_folder(folder)}."
        )


def tensor_hash(tensor) -> str:
    return hashlib.sha256(tensor.float().cpu().numpy().tobytes()).hexdigest()[:16]


def conditioning_hash(cond) -> str:
    h = hashlib.sha256()
    for tensor, extra in cond:
        h.update(tensor.float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _plain(value):
    return isinstance(value, (int, float, str, bool, type(None))) or (
        isinstance(value, (list, tuple)) and all(_plain(v) for v in value)
    )


def describe_sampler(sampler) -> dict:
    fn = getattr(sampler, "sampler_function", None)
    options = getattr(sampler, "extra_options", {}) or {}
    return {
        "function": getattr(fn, "__qualname__", type(sampler).__name__),
        "options": {k: v for k, v in sorted(options.items()) if _plain(v)},
    }


def job_settings(
    model,
    storyboard,
    negative,
    sections,
    *,
    seconds,
    fps,
    section_frames,
    width,
    height,
    cfg,
    sampler_name,
    sampler,
    scheduler,
    continuation_frames,
    context,
    start,
    sampling_order,
    image_features=None,
    guidance=None,
    experts=None,
) -> dict:
    """Everything that changes the frames of a job, as the JSON values its manifest stores."""
    settings = {
        **model_fingerprint(model),
        "negative": conditioning_hash(negative),
        "prompts": [p.prompt for p in sections],
        "prompt conditioning": {p: conditioning_hash(c) for p, c in storyboard.conditioning.items()},
        "seconds": seconds,
        "fps": fps,
        "section_frames": section_frames,
        "width": width,
        "height": height,
        "cfg": cfg,
        "sampler": sampler_name if sampler is None else describe_sampler(sampler),
        "scheduler": scheduler,
        "continuation_frames": continuation_frames,
        "context": [s.describe() for s in context],
        "start image": None if start is None else tensor_hash(start),
        "sampling_order": sampling_order,
        "storyboard timing": storyboard.board.timing,
        "clip vision": None if image_features is None else tensor_hash(image_features),
        "guidance": guidance,
    }
    if experts is not None:
        settings.update(model_fingerprint(experts.low, "model_low_noise"))
        settings["expert switch"] = experts.describe()
    return settings


def finish_job(folder: str | None, keep: bool) -> str:
    """After the video is built: remove the job's state unless ``keep``; the summary's sentence about it."""
    if folder is None:
        return "No job state: give a job_name to keep one." if keep else ""
    return finish_job_state(folder, keep, shown_folder(folder))
