"""Training datasets: a folder of clips encoded once into cached latents and text conditioning.

Layout of the source folder (any depth):

    clip.mp4  (+ clip.txt caption or clip.json storyboard)      a video, decoded with PyAV
    shot_03/0001.png ... (+ shot_03.txt or shot_03.json)         a folder of images is one sequence
    still.png (+ still.txt) directly in the dataset folder       a one-frame clip

A storyboard's times are seconds of the source video. Each item records the clip's frame rate (the
video's own; ``image_fps`` for image sequences), so a cue lands on the latent frame it was written for
whatever the fps and ``frame_stride``, and a run of latent frames takes the prompt a generated section
would (``histenc.longvideo.timing``).

The encoders are callables, so this module never touches a model: ``encode_video(frames [T, H, W, 3]
in [0, 1]) -> latents`` and ``encode_text(prompt) -> tensor``. Results go to ``cache_dir`` as
safetensors files plus ``index.json``; a clip whose file, size and settings are unchanged is
reused instead of encoded again, and identical prompts are encoded once.

Reports and the index name only the media files a build looked at (clips used or skipped, with why); every
other file is counted, never named. ``roots`` confines a build to some folders (symlinks and ``..`` resolved):
the nodes pass ComfyUI's input, output and models folders unless the server runs with
``HISTENC_ALLOW_ANY_FOLDER=1`` (``allowed_roots``).

    python -m histenc.train.dataset FOLDER [--cache DIR] [--encoders module:function]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..files import atomic_write
from ..longvideo.storyboard import Storyboard
from ..longvideo.timing import cue_latent_position, latent_section_cue
from ..units import seconds_per_latent_frame
from .video_io import IMAGE_EXTS, VIDEO_EXTS, fit_frames, image_files, read_images, read_video, trim_time
from ..weights import load_weights, save_weights

INDEX_NAME = "index.json"
INDEX_VERSION = 2  # 2: every item records its clip's fps
DEFAULT_IMAGE_FPS = 16.0  # an image sequence has no frame rate of its own; Wan 2.1's, the sampler's default
LATENT_FORMAT, TEXT_FORMAT = "histenc.dataset_latents", "histenc.dataset_text"


@dataclass
class Clip:
    source: Path
    kind: str  # "video" | "images" | "image"
    files: list[Path]
    sidecar: Path | None = None


@dataclass
class DatasetReport:
    index: Path | None
    encoded: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # media files that could not be used, and why
    ignored: int = 0  # other files (not videos or images, or links out of the allowed folders): counted, never named

    def summary(self) -> str:
        lines = [
            f"{len(self.encoded)} clip(s) encoded, {len(self.reused)} reused from the cache, "
            f"{len(self.skipped)} skipped, {self.ignored} other file(s) ignored"
            + (f"; index: {self.index}" if self.index else "")
        ]
        lines += [f"  skipped {name}: {reason}" for name, reason in self.skipped]
        return "\n".join(lines)


# --- where a dataset may be read and its cache written -------------------------------------------------
ANY_FOLDER_ENV = "HISTENC_ALLOW_ANY_FOLDER"  # =1: the server reads datasets and writes caches in any folder


def allowed_roots(*folders: str | Path) -> tuple[Path, ...] | None:
    """``folders`` resolved (symlinks, ``..``), the only places a dataset build may touch; None (anywhere) when
    the process runs with HISTENC_ALLOW_ANY_FOLDER=1, the owner's opt-in for a trusted machine."""
    if os.environ.get(ANY_FOLDER_ENV, "").strip() == "1":
        return None
    return tuple(Path(os.path.realpath(f)) for f in folders)


def within(path: str | Path, roots: tuple[Path, ...] | None) -> bool:
    """Whether ``path``, symlinks and ``..`` resolved, lies inside one of ``roots`` (always, for None)."""
    if roots is None:
        return True
    real = Path(os.path.realpath(path))
    return any(real == r or r in real.parents for r in roots)


def confine(path: str | Path, roots: tuple[Path, ...] | None, what: str, fix: str) -> Path:
    """``path`` resolved, or one sentence naming it when it lies outside every root; ``fix`` says what to do."""
    real = Path(os.path.realpath(path))
    if not within(real, roots):
        raise ValueError(
            f"{what} {path} is outside the folders this server may read and write ({', '.join(map(str, roots))}); "
            f"{fix}, or start ComfyUI with {ANY_FOLDER_ENV}=1 to allow any folder."
        )
    return real


def scan(folder: str | Path, roots: tuple[Path, ...] | None = None) -> tuple[list[Clip], int]:
    """The clips of a dataset folder, and how many other files it holds (never named: they are not the user's
    training data, and their names can say more than the user meant to share). Within ``roots`` only."""
    root = Path(folder)
    confine(root, roots, "dataset folder", "put your clips in a folder under one of them")  # before saying it exists
    if root.is_file():
        raise ValueError(
            f"dataset folder {root} is a file, not a folder; give the folder that holds your clips "
            f"(this file's folder is {root.parent})."
        )
    if not root.is_dir():
        raise ValueError(
            f"dataset folder {root} does not exist; give the folder that holds your videos or image folders."
        )
    clips, ignored = [], 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))  # hidden folders, old caches
        here = Path(dirpath)
        images = [p for p in image_files(here) if within(p, roots)]
        if here != root and images:
            clips.append(Clip(here, "images", images, _sidecar(here.parent / here.name, roots)))
        for name in sorted(filenames):
            p = here / name
            ext = p.suffix.lower()
            if not within(p, roots):
                ignored += 1  # a link out of the allowed folders
            elif ext in VIDEO_EXTS:
                clips.append(Clip(p, "video", [p], _sidecar(p.with_suffix(""), roots)))
            elif ext in IMAGE_EXTS:
                if here == root:  # deeper down, an image is a frame of its folder's sequence
                    clips.append(Clip(p, "image", [p], _sidecar(p.with_suffix(""), roots)))
            elif not (_is_sidecar(p) or name.startswith(".")):
                ignored += 1
    return clips, ignored


def _sidecar(stem: Path, roots: tuple[Path, ...] | None = None) -> Path | None:
    for ext in (".json", ".txt"):
        candidate = stem.with_name(stem.name + ext)
        if candidate.is_file() and within(candidate, roots):
            return candidate
    return None


def _is_sidecar(p: Path) -> bool:
    if p.suffix.lower() not in (".json", ".txt"):
        return False
    stem = p.with_suffix("")
    return any(stem.with_name(stem.name + e).exists() for e in VIDEO_EXTS + IMAGE_EXTS) or stem.is_dir()


def read_prompts(clip: Clip, default_caption: str) -> list[tuple[float, str]]:
    """(time in seconds, prompt) cues: a storyboard sidecar, a caption sidecar, or the default caption."""
    if clip.sidecar is None:
        return [(0.0, default_caption)]
    text = clip.sidecar.read_text(encoding="utf-8")
    if clip.sidecar.suffix.lower() == ".json":
        board = Storyboard.parse(text)
        return [(float(c.t), board.prompt_at(i)) for i, c in enumerate(board.cues)]
    return [(0.0, " ".join(text.split()))]


def clip_fps(clip: Clip, image_fps: float = DEFAULT_IMAGE_FPS) -> float:
    """Frames per second of the clip's source: the video stream's average rate, else ``image_fps``."""
    if clip.kind != "video":
        return float(image_fps)
    import av

    try:
        with av.open(str(clip.source)) as container:
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    except (av.error.FFmpegError, IndexError) as err:  # the words read_video uses for a file it cannot decode
        raise ValueError(f"it could not be decoded as a video ({getattr(err, 'strerror', None) or err})") from None
    return float(rate) if rate else float(image_fps)


def _fingerprint(clip: Clip) -> dict:
    stats = [f.stat() for f in clip.files]
    sidecar = clip.sidecar.stat() if clip.sidecar else None
    return {
        "files": len(stats),
        "bytes": sum(s.st_size for s in stats),
        "mtime_ns": max(s.st_mtime_ns for s in stats),
        "sidecar_mtime_ns": sidecar.st_mtime_ns if sidecar else None,
    }


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def build_cache(
    folder: str | Path,
    cache_dir: str | Path,
    encode_video: Callable[[torch.Tensor], torch.Tensor],
    encode_text: Callable[[str], torch.Tensor],
    width: int = 832,
    height: int = 480,
    max_frames: int = 81,
    frame_stride: int = 1,
    time_stride: int = 4,
    default_caption: str = "",
    encoder_tag: str = "",
    image_fps: float = DEFAULT_IMAGE_FPS,
    roots: tuple[Path, ...] | None = None,
) -> DatasetReport:
    """Encode every clip of ``folder`` (within ``roots``) into ``cache_dir``, reusing unchanged ones; refuse an
    empty result. The caller picks and confines ``cache_dir``."""
    if not image_fps > 0:
        raise ValueError(f"dataset image_fps {image_fps} must be a positive number of frames per second, e.g. 16.")
    if width < 16 or height < 16 or width % 16 or height % 16:
        raise ValueError(f"dataset size {width}x{height} must be multiples of 16 of at least 16; e.g. 832x480.")
    if max_frames < 1 or frame_stride < 1:
        raise ValueError(f"dataset max_frames {max_frames} and frame_stride {frame_stride} must be 1 or more.")
    root, cache = Path(folder), Path(cache_dir)
    clips, ignored = scan(root, roots)
    settings = {
        "width": width,
        "height": height,
        "max_frames": max_frames,
        "frame_stride": frame_stride,
        "time_stride": time_stride,
        "encoder": encoder_tag,
    }
    old = _read_index(cache)
    old_items = {i["source"]: i for i in old.get("items", [])} if old.get("settings") == settings else {}
    report, items = DatasetReport(cache / INDEX_NAME, ignored=ignored), []
    for clip in clips:
        name = str(clip.source.relative_to(root))
        prev, frames = old_items.get(name), None
        try:
            prompts = read_prompts(clip, default_caption)
            fps = clip_fps(clip, image_fps)
            finger = _fingerprint(clip)
            if not (prev and prev["fingerprint"] == finger and (cache / prev["latents"]).is_file()):
                frames = (
                    read_video(clip.source, max_frames, frame_stride)
                    if clip.kind == "video"
                    else read_images(clip.files, max_frames, frame_stride)
                )
                frames = trim_time(fit_frames(frames, width, height), time_stride)
        except ValueError as err:
            report.skipped.append((name, str(err).rstrip(".")))
            continue
        except Exception as err:  # PyAV / Pillow errors on broken files
            report.skipped.append((name, f"it could not be read ({type(err).__name__}: {str(err).strip()[:120]})"))
            continue
        if frames is None:
            item = prev
            report.reused.append(name)
        else:  # encoder errors are not the file's fault: they stop the build
            item = {
                "source": name,
                "kind": clip.kind,
                "fingerprint": finger,
                "frames": int(frames.shape[0]),
                "latents": f"latents/{_digest(name)}.safetensors",
            }
            latents = _encode(encode_video, frames, name)
            save_weights(
                cache / item["latents"],
                {"latents": latents},
                {"format": LATENT_FORMAT, "version": 1, "source": name, "frames": item["frames"]},
            )
            item["shape"] = list(latents.shape)
            report.encoded.append(name)
        item["fps"] = fps
        item["prompts"] = [{"t": t, "text": p, "cond": _cache_text(cache, encode_text, p)} for t, p in prompts]
        items.append(item)
    if not items:
        why = f"; first problem: {report.skipped[0][0]}: {report.skipped[0][1]}" if report.skipped else ""
        raise ValueError(
            f"dataset folder {root} gave no usable clips ({len(report.skipped)} skipped, {ignored} other "
            f"file(s) ignored{why}); "
            f"add videos ({', '.join(VIDEO_EXTS)}) or folders of images."
        )
    index = {"version": INDEX_VERSION, "settings": settings, "items": items, "skipped": report.skipped}
    _write_index(cache, {**index, "ignored": ignored})
    return report


def _encode(encode_video, frames: torch.Tensor, name: str) -> torch.Tensor:
    latents = encode_video(frames)
    if not isinstance(latents, torch.Tensor) or latents.ndim not in (4, 5):
        shape = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
        raise ValueError(
            f"the video encoder returned {shape} for {name}, not latents [B, C, T, H, W]; pass a video VAE's encode."
        )
    if not torch.isfinite(latents).all():
        raise ValueError(
            f"the video encoder returned non-finite latents for {name}; the VAE is broken or overflows "
            "in its dtype, so load a working VAE (or run it in float32)."
        )
    return latents.detach().float().cpu()


def _cache_text(cache: Path, encode_text, prompt: str) -> str:
    rel = f"text/{_digest(prompt)}.safetensors"
    if not (cache / rel).is_file():
        cond = encode_text(prompt)
        cond, pooled = cond if isinstance(cond, tuple) else (cond, None)  # a pooled vector too (HunyuanVideo's CLIP-L)
        tensors = {"cond": cond.detach().float().cpu()}
        if pooled is not None:
            tensors["pooled"] = pooled.detach().float().cpu()
        save_weights(cache / rel, tensors, {"format": TEXT_FORMAT, "version": 1, "prompt": prompt})
    return rel


def _read_index(cache: Path) -> dict:
    try:
        return json.loads((cache / INDEX_NAME).read_text())
    except (OSError, ValueError):
        return {}


def _write_index(cache: Path, index: dict) -> None:
    atomic_write(cache / INDEX_NAME, json.dumps(index, indent=1, ensure_ascii=False))


class CachedDataset:
    """The cached clips of an index: item i -> {latents, text, prompt, prompts, latent_prompts, fps, source}."""

    def __init__(self, cache_dir: str | Path):
        self.root = Path(cache_dir)
        index = _read_index(self.root)
        if not index.get("items"):
            raise ValueError(
                f"{self.root} holds no cached dataset ({INDEX_NAME} is missing or empty); "
                "build it first with the Video Dataset node or python -m histenc.train.dataset."
            )
        if any("fps" not in item for item in index["items"]):
            raise ValueError(
                f"the dataset cache {self.root} was built before clips recorded their frame rate, so its prompt "
                "times cannot be placed; build it again with the Video Dataset node (unchanged clips are reused)."
            )
        self.settings, self.items = index["settings"], index["items"]
        self._text: dict[str, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.items)

    def file(self, rel: str) -> Path:
        """A file the index names, which must lie inside the cache folder (an edited index may not reach out)."""
        path = self.root / rel
        if not within(path, (Path(os.path.realpath(self.root)),)):
            raise ValueError(
                f"the dataset index in {self.root} names {rel!r}, which is outside its folder; build the dataset "
                "again with the Video Dataset node."
            )
        return path

    def text(self, rel: str) -> torch.Tensor:
        return self.text_tensors(rel)["cond"]

    def text_tensors(self, rel: str) -> dict[str, torch.Tensor]:
        """A cached prompt's tensors: ``cond``, and ``pooled`` when its text encoder gave a pooled vector."""
        if rel not in self._text:
            self._text[rel] = load_weights(self.file(rel), expect={"format": TEXT_FORMAT})[0]
        return self._text[rel]

    def __getitem__(self, i: int) -> dict:
        """``prompts``: (seconds, text, cond); ``latent_prompts``: (latent frame the cue starts at, cond), for a
        training Clip; ``text`` / ``prompt``: what the whole clip takes, the prompt in force at its middle."""
        item = self.items[i]
        latents = load_weights(self.file(item["latents"]), expect={"format": LATENT_FORMAT})[0]["latents"]
        prompts = [(p["t"], p["text"], self.text(p["cond"])) for p in item["prompts"]]
        fps, stride = float(item["fps"]), int(self.settings.get("frame_stride", 1))
        time_stride = int(self.settings.get("time_stride", 4))
        starts = [cue_latent_position(float(t), fps, time_stride, stride) for t, _, _ in prompts]
        whole = latent_section_cue(starts, 0, int(latents.shape[-3]), time_stride)
        return {
            "latents": latents,
            "text": prompts[whole][2],
            "pooled": self.text_tensors(item["prompts"][whole]["cond"]).get("pooled"),
            "prompt": prompts[whole][1],
            "prompts": prompts,
            "latent_prompts": [(start, cond) for start, (_, _, cond) in zip(starts, prompts)],
            "fps": fps,
            "frame_stride": stride,
            "time_stride": time_stride,
            "seconds_per_latent_frame": seconds_per_latent_frame(fps, time_stride, stride),
            "source": item["source"],
        }


def _load_encoders(spec: str):
    module, _, attr = spec.partition(":")
    if not attr:
        raise ValueError(
            f"--encoders {spec!r} must look like package.module:function; that function returns "
            "(encode_video, encode_text)."
        )
    return getattr(importlib.import_module(module), attr)()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m histenc.train.dataset", description=__doc__.split("\n\n")[0])
    ap.add_argument("folder")
    ap.add_argument("--cache", help="cache folder (default: FOLDER/.histenc_cache)")
    ap.add_argument("--encoders", help="module:function returning (encode_video, encode_text); without it only scan")
    ap.add_argument("--width", type=int, default=832)
    ap.add_argument("--height", type=int, default=480)
    ap.add_argument("--max-frames", type=int, default=81)
    ap.add_argument("--stride", type=int, default=1)
    ap.add_argument("--caption", default="", help="prompt for clips without a sidecar")
    ap.add_argument("--image-fps", type=float, default=DEFAULT_IMAGE_FPS, help="frame rate of image sequences")
    args = ap.parse_args(argv)
    try:
        if not args.encoders:
            clips, ignored = scan(args.folder)
            for c in clips:
                print(f"{c.kind:6s} {c.source}" + (f"  [{c.sidecar.name}]" if c.sidecar else ""))
            print(
                f"{len(clips)} clip(s), {ignored} other file(s) ignored (scan only: pass --encoders to build the cache)"
            )
            return 0 if clips else 1
        encode_video, encode_text = _load_encoders(args.encoders)
        report = build_cache(
            args.folder,
            args.cache or Path(args.folder) / ".histenc_cache",
            encode_video,
            encode_text,
            args.width,
            args.height,
            args.max_frames,
            args.stride,
            default_caption=args.caption,
            encoder_tag=args.encoders,
            image_fps=args.image_fps,
        )
    except ValueError as err:
        print(f"error: {err}")
        return 2
    print(report.summary())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
