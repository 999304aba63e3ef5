"""Crash-safe, resumable on-disk state of one long-video job.

A job folder holds ``manifest.json`` and one ``section_NNNN.safetensors`` per finished section.
Every file is written to a temporary name in the same folder, flushed to disk and moved over
the final name with ``os.replace`` (atomic on POSIX and Windows), so a crash leaves either the
old file or the new one, never half of one. A section counts as finished only when the
manifest says so AND its file's SHA-256 matches the manifest; anything else is generated again.

The manifest stores the full settings dict, not only its hash, so a run with different
settings can say which setting changed instead of silently starting over or mixing two jobs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Mapping, Sequence

import safetensors
import safetensors.torch
from safetensors.torch import load as load_safetensors_bytes  # safetensors bytes, never pickle
import torch

from .. import __version__ as HISTENC_VERSION
from ..files import atomic_write

MANIFEST = "manifest.json"
FORMAT = "histenc-long-video"
FORMAT_VERSION = 1
_UNSET = object()


def canonical_settings(settings: Mapping[str, Any]) -> dict:
    """Settings as they read back from JSON (tuples become lists), or one sentence naming the bad key."""
    out = {}
    for key, value in settings.items():
        if not isinstance(key, str):
            raise ValueError(f"setting names must be text, got {key!r}; name every setting with a string.")
        try:
            out[key] = json.loads(json.dumps(value, allow_nan=False))
        except (TypeError, ValueError):
            raise ValueError(
                f"setting '{key}' is a {type(value).__name__}, which the job manifest cannot store; "
                "pass a number, text, list or a name that identifies it."
            ) from None
    return out


def settings_hash(settings: Mapping[str, Any]) -> str:
    text = json.dumps(canonical_settings(settings), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def first_difference(old: Mapping[str, Any], new: Mapping[str, Any]) -> str | None:
    """Name of the setting to report: the first one (in ``new``'s order, then ``old``'s) whose value differs,
    a plain value before a list or table, since a changed number (seconds) also changes the lists made from it."""
    keys = [k for k in list(new) + [k for k in old if k not in new] if old.get(k, _UNSET) != new.get(k, _UNSET)]
    plain = [k for k in keys if not isinstance(old.get(k), (list, dict)) and not isinstance(new.get(k), (list, dict))]
    return (plain or keys or [None])[0]


def describe_difference(name: str, old: Any, new: Any) -> tuple[str, Any, Any]:
    """(what differs, its old value, its new value) down to the first differing item of a list or table, so
    two long lists are never shown side by side: ``prompts[3]``, ``model sampling.shift``."""
    in_list = False  # one level into lists: a changed step of a sampling order reads as the whole step
    while True:
        if isinstance(old, dict) and isinstance(new, dict):
            key = first_difference(old, new)
            name, old, new = f"{name}.{key}", old.get(key, _UNSET), new.get(key, _UNSET)
        elif isinstance(old, list) and isinstance(new, list) and not in_list:
            if len(old) != len(new):
                return f"the number of items in {name}", len(old), len(new)
            i = next(i for i, (a, b) in enumerate(zip(old, new)) if a != b)
            name, old, new, in_list = f"{name}[{i}]", old[i], new[i], True
        else:
            return name, old, new


def _show(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


def refusal(job: str, name: str, old: Any, new: Any) -> str:
    """The one sentence that refuses to resume ``job``, naming the setting and both of its values."""
    what, old, new = describe_difference(name, old, new)
    started = f"without {what}" if old is _UNSET else f"with {what} = {_show(old)}"
    if old is _UNSET:
        queued = f"with {what} = {_show(new)}"
    elif new is _UNSET:
        queued = f"without {what}"
    else:
        queued = f"with {_show(new)}"
    return (
        f"job '{job}' was started {started} but is queued {queued}; queue it with the same settings to resume, "
        "or give a new job name to start over."
    )


class JobState:
    """The manifest and section files of one job folder; ``open`` creates it or checks it for resuming."""

    def __init__(self, folder: Path, settings: dict, sections: list[dict], manifest_extra: dict):
        self.folder = folder
        self.settings = settings
        self.hash = settings_hash(settings)
        self.sections = sections  # per section: seed, prompt, latent_frames, status, file, sha256
        self.extra = manifest_extra

    @staticmethod
    def open(
        folder: str | os.PathLike,
        settings: Mapping[str, Any],
        sections: Sequence[Mapping[str, Any]],
        extra: Mapping[str, Any] | None = None,
        name: str | None = None,
    ) -> "JobState":
        """Open ``folder`` for a job with these settings; refuse, naming the setting, if it holds another job.

        ``sections`` describes every section (e.g. seed, prompt, latent_frames); it belongs to the
        settings too, so a changed storyboard or section length also refuses to resume. ``name`` is the
        job's name in the refusals (default: the folder's name, which is the job name the node was given).
        """
        folder = Path(folder)
        settings = canonical_settings(settings)
        described = canonical_settings({"sections": list(sections)})["sections"]
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob(".*.tmp"):
            stale.unlink(missing_ok=True)  # a temp file only survives a crash mid-write
        manifest = _read_manifest(folder)
        entries = [{**d, "status": "pending", "file": None, "sha256": None} for d in described]
        if manifest is not None:
            job = folder.name if name is None else name
            key = first_difference(manifest["settings"], settings)
            if key is not None:
                raise ValueError(refusal(job, key, manifest["settings"].get(key, _UNSET), settings.get(key, _UNSET)))
            old = [{k: v for k, v in e.items() if k not in ("status", "file", "sha256")} for e in manifest["sections"]]
            if old != described:
                raise ValueError(refusal(job, "sections", old, described))
            for entry, stored in zip(entries, manifest["sections"]):
                entry.update(status=stored["status"], file=stored["file"], sha256=stored["sha256"])
        state = JobState(folder, settings, entries, dict(extra or {}))
        state.write_manifest()
        return state

    def is_done(self, index: int) -> bool:
        """Finished according to the manifest and its file is intact (checked against the stored SHA-256)."""
        entry = self.sections[index]
        if entry["status"] != "done" or not entry["file"]:
            return False
        path = self.folder / entry["file"]
        return path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]

    def load(self, index: int) -> torch.Tensor:
        entry = self.sections[index]
        data = (self.folder / entry["file"]).read_bytes()
        if hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise ValueError(
                f"section file {self.folder / entry['file']} no longer matches its checksum; delete it to generate "
                "that section again."
            )
        return load_safetensors_bytes(data)["latents"]

    def save(self, index: int, latents: torch.Tensor) -> None:
        """Write the section atomically, then record it as done (manifest written atomically too)."""
        name = f"section_{index:04d}.safetensors"
        meta = {"format": FORMAT, "index": str(index), "settings_hash": self.hash}
        data = safetensors.torch.save({"latents": latents.detach().cpu().contiguous()}, metadata=meta)
        atomic_write(self.folder / name, data)
        self.sections[index].update(status="done", file=name, sha256=hashlib.sha256(data).hexdigest())
        self.write_manifest()

    def mark(self, index: int, status: str) -> None:
        """Record a non-final status ("running", "interrupted") for the manifest's reader."""
        if self.sections[index]["status"] != "done":
            self.sections[index]["status"] = status
            self.write_manifest()

    def write_manifest(self) -> None:
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "versions": {
                "histenc": HISTENC_VERSION,
                "torch": torch.__version__,
                "safetensors": safetensors.__version__,
            },
            "settings_hash": self.hash,
            "settings": self.settings,
            **self.extra,
            "sections": self.sections,
        }
        atomic_write(self.folder / MANIFEST, json.dumps(manifest, indent=1, ensure_ascii=False).encode())


def human_size(size: int) -> str:
    if size >= 1e6:
        return f"{size / 1e6:.1f} MB"
    return f"{size / 1e3:.1f} kB" if size >= 1e3 else f"{size} bytes"


def finish_job_state(folder: str | os.PathLike, keep: bool, shown: str | None = None) -> str:
    """A finished job's folder removed (or, with ``keep``, kept so re-queueing returns the video at once), and the
    sentence that says which and how big it is (``shown``: the folder as the user finds it). Call it only once the
    video is built from the section files."""
    folder = Path(folder)
    size = f"{human_size(sum(f.stat().st_size for f in folder.rglob('*') if f.is_file()))} in {shown or folder}"
    if keep:
        return f"Job state kept: {size}."
    try:
        shutil.rmtree(folder)
    except OSError as err:  # the video is built already: say so rather than fail it
        return f"Job state could not be removed ({err.strerror}): {size}; delete it by hand."
    return f"Job state removed: {size}."


def stored_settings(folder: str | os.PathLike) -> dict | None:
    """The settings a job folder was started with (None when it holds no job yet)."""
    manifest = _read_manifest(Path(folder))
    return None if manifest is None else manifest["settings"]


def _read_manifest(folder: Path) -> dict | None:
    path = folder / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        ok = (
            manifest.get("format") == FORMAT
            and isinstance(manifest.get("settings"), dict)
            and isinstance(manifest.get("sections"), list)
        )
    except (ValueError, AttributeError, UnicodeDecodeError):
        ok = False
    if not ok:
        raise ValueError(
            f"{path} is not a long-video job manifest, so job '{folder.name}' cannot resume from it; give a new job "
            "name, or delete that file."
        )
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"job '{folder.name}' was saved in manifest format {manifest.get('format_version')} but this version "
            f"reads format {FORMAT_VERSION}; give a new job name to start over."
        )
    return manifest
