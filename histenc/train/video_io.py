"""Reading training clips: videos through PyAV, image sequences through Pillow, as [T, H, W, 3] floats.

The layout matches ComfyUI's IMAGE type (values in [0, 1], channels last), so a node can hand the
frames straight to a VAE's ``encode``. Frames are resized to cover the target size and centre
cropped, and the frame count is trimmed to 1 + k * time_stride because Wan's VAE encodes the first
frame alone and then groups of ``time_stride`` frames.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

VIDEO_EXTS = (".mp4", ".webm", ".mkv", ".mov", ".avi", ".gif", ".m4v")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def read_video(path: str | Path, max_frames: int = 0, stride: int = 1) -> torch.Tensor:
    """Every ``stride``-th frame (up to ``max_frames``, 0 = all) of the first video stream."""
    import av

    frames = []
    try:
        with av.open(str(path)) as container:
            for i, frame in enumerate(container.decode(video=0)):
                if i % stride == 0:
                    frames.append(frame.to_ndarray(format="rgb24"))
                    if max_frames and len(frames) >= max_frames:
                        break
    except av.error.FFmpegError as err:
        raise ValueError(f"it could not be decoded as a video ({getattr(err, 'strerror', None) or err})") from None
    if not frames:
        raise ValueError("it has no decodable video frames")
    return torch.from_numpy(np.stack(frames)).float().div(255)


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)


def read_images(paths: list[Path], max_frames: int = 0, stride: int = 1) -> torch.Tensor:
    """Frames from image files in order; all must share one size."""
    from PIL import Image

    chosen = paths[::stride][: max_frames or None]
    frames = []
    for p in chosen:
        with Image.open(p) as img:
            frames.append(np.asarray(img.convert("RGB")))
    sizes = {f.shape for f in frames}
    if len(sizes) > 1:
        raise ValueError(f"its images have different sizes {sorted(s[:2] for s in sizes)}")
    return torch.from_numpy(np.stack(frames)).float().div(255)


def fit_frames(frames: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Resize to cover width x height (keeping the aspect ratio), then centre-crop to exactly that size."""
    t, h, w, _ = frames.shape
    if (h, w) == (height, width):
        return frames
    scale = max(height / h, width / w)
    nh, nw = max(height, round(h * scale)), max(width, round(w * scale))
    x = F.interpolate(frames.permute(0, 3, 1, 2), size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
    top, left = (nh - height) // 2, (nw - width) // 2
    return x[:, :, top : top + height, left : left + width].permute(0, 2, 3, 1).clamp(0, 1).contiguous()


def trim_time(frames: torch.Tensor, time_stride: int) -> torch.Tensor:
    """Keep the first 1 + k * time_stride frames (the most a causal video VAE encodes without padding)."""
    if time_stride <= 1:
        return frames
    keep = 1 + (frames.shape[0] - 1) // time_stride * time_stride
    return frames[:keep]
