"""Dataset cache: clips found and encoded once, sidecars read, bad files reported, empty sets refused."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from histenc.train.dataset import CachedDataset, build_cache, main, scan
from histenc.train.procedural import generate, write_image_sequence


def write_mp4(path, frames=13, size=32, seed=0):
    import av

    g = np.random.default_rng(seed)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=8)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for _ in range(frames):
            img = g.integers(0, 255, (size, size, 3), dtype=np.uint8)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        out.mux(stream.encode())


class Encoders:
    """Stand-in encoders that count calls: 8x8 spatial, 4x temporal pooling to 4 channels."""

    def __init__(self):
        self.videos, self.texts = [], []

    def video(self, frames):
        self.videos.append(tuple(frames.shape))
        x = frames.permute(3, 0, 1, 2)[None]  # [1, 3, T, H, W]
        first = torch.nn.functional.avg_pool3d(x[:, :, :1], (1, 8, 8))
        rest = torch.nn.functional.avg_pool3d(x[:, :, 1:], (4, 8, 8)) if x.shape[2] > 1 else first[:, :, :0]
        lat = torch.cat([first, rest], 2)
        return torch.cat([lat, lat.mean(1, keepdim=True)], 1)

    def text(self, prompt):
        self.texts.append(prompt)
        return torch.full((1, 3, 8), float(len(prompt)))


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    write_image_sequence(generate(0, frames=40, size=32, objects=2), root / "shots" / "memory")
    write_mp4(root / "walk.mp4")
    (root / "walk.json").write_text(json.dumps([{"t": 0, "prompt": "a dog walks"}, {"t": 1, "prompt": "it sits"}]))
    Image.fromarray(np.full((40, 48, 3), 200, np.uint8)).save(root / "still.png")
    (root / "broken.mp4").write_bytes(b"not a video at all")
    (root / "notes.pdf").write_bytes(b"%PDF")
    mixed = root / "mixed"
    mixed.mkdir()
    Image.new("RGB", (32, 32)).save(mixed / "a.png")
    Image.new("RGB", (16, 32)).save(mixed / "b.png")
    return root


def test_scan_finds_clips_and_sidecars(folder):
    clips, skipped = scan(folder)
    kinds = {str(c.source.relative_to(folder)): (c.kind, c.sidecar.name if c.sidecar else None) for c in clips}
    assert kinds == {
        "shots/memory": ("images", "memory.txt"),
        "walk.mp4": ("video", "walk.json"),
        "still.png": ("image", None),
        "broken.mp4": ("video", None),
        "mixed": ("images", None),
    }
    assert skipped == [("notes.pdf", ".pdf is not a video or image type")]


def test_build_encodes_once_and_reports_skips(folder, tmp_path):
    enc, cache = Encoders(), tmp_path / "cache"
    report = build_cache(folder, cache, enc.video, enc.text, width=32, height=32, max_frames=17, default_caption="x")
    assert sorted(report.encoded) == ["shots/memory", "still.png", "walk.mp4"]
    assert {n for n, _ in report.skipped} == {"broken.mp4", "mixed", "notes.pdf"}
    assert "different sizes" in dict(report.skipped)["mixed"]
    assert "3 clip(s) encoded, 0 reused from the cache, 3 skipped" in report.summary()
    # 17 frames max -> 17 kept (1 + 4k); 13-frame mp4 -> 13; the still -> 1 frame
    assert sorted(enc.videos) == [(1, 32, 32, 3), (13, 32, 32, 3), (17, 32, 32, 3)]
    assert sorted(enc.texts) == sorted({"x", "a dog walks", "it sits", generate(0, frames=40, objects=2).caption})

    ds = CachedDataset(cache)
    items = {ds[i]["source"]: ds[i] for i in range(len(ds))}
    assert items["walk.mp4"]["latents"].shape == (1, 4, 4, 4, 4)
    assert [p for _, p, _ in items["walk.mp4"]["prompts"]] == ["a dog walks", "it sits"]
    assert torch.equal(items["still.png"]["text"], torch.full((1, 3, 8), 1.0))
    with __import__("av").open(str(folder / "walk.mp4")) as container:
        decoded = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    assert torch.equal(items["walk.mp4"]["latents"], enc.video(torch.from_numpy(decoded).float() / 255))

    enc2 = Encoders()
    again = build_cache(folder, cache, enc2.video, enc2.text, width=32, height=32, max_frames=17, default_caption="x")
    assert (again.encoded, sorted(again.reused), enc2.texts) == ([], ["shots/memory", "still.png", "walk.mp4"], [])
    os.utime(folder / "still.png", ns=(1, 1))
    third = build_cache(folder, cache, enc2.video, enc2.text, width=32, height=32, max_frames=17, default_caption="x")
    assert third.encoded == ["still.png"]
    fourth = build_cache(folder, cache, enc2.video, enc2.text, width=48, height=32, max_frames=17, default_caption="x")
    assert len(fourth.encoded) == 3  # other settings: everything again


def test_empty_or_unreadable_dataset_is_one_sentence(tmp_path):
    enc = Encoders()
    with pytest.raises(ValueError, match="does not exist"):
        build_cache(tmp_path / "nope", tmp_path / "c", enc.video, enc.text, 32, 32)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"gave no usable clips \(0 skipped\)"):
        build_cache(tmp_path / "empty", tmp_path / "c", enc.video, enc.text, 32, 32)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.mp4").write_bytes(b"junk")
    with pytest.raises(ValueError, match=r"1 skipped; first problem: x.mp4: it could not be decoded as a video"):
        build_cache(tmp_path / "bad", tmp_path / "c", enc.video, enc.text, 32, 32)
    with pytest.raises(ValueError, match="holds no cached dataset"):
        CachedDataset(tmp_path / "c")


def test_cli_scans_without_encoders(folder, capsys):
    assert main([str(folder)]) == 0
    out = capsys.readouterr().out
    assert "video  " in out and "[walk.json]" in out and "skip   notes.pdf" in out
    assert "5 clip(s), 1 skipped" in out
