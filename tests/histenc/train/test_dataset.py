"""Dataset cache: clips found and encoded once, sidecars read, bad files reported, empty sets refused."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from histenc.longvideo.storyboard import Storyboard, schedule_sections
from histenc.longvideo.timing import latent_section_cue
from histenc.train.dataset import ANY_FOLDER_ENV, CachedDataset, allowed_roots, build_cache, main, scan
from histenc.train.procedural import generate, write_image_sequence


def write_mp4(path, frames=13, size=32, seed=0, fps=8):
    import av

    g = np.random.default_rng(seed)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=fps)
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
    clips, ignored = scan(folder)
    kinds = {str(c.source.relative_to(folder)): (c.kind, c.sidecar.name if c.sidecar else None) for c in clips}
    assert kinds == {
        "shots/memory": ("images", "memory.txt"),
        "walk.mp4": ("video", "walk.json"),
        "still.png": ("image", None),
        "broken.mp4": ("video", None),
        "mixed": ("images", None),
    }
    assert ignored == 1  # notes.pdf: counted, never named


def test_build_encodes_once_and_reports_skips(folder, tmp_path):
    enc, cache = Encoders(), tmp_path / "cache"
    report = build_cache(folder, cache, enc.video, enc.text, width=32, height=32, max_frames=17, default_caption="x")
    assert sorted(report.encoded) == ["shots/memory", "still.png", "walk.mp4"]
    assert {n for n, _ in report.skipped} == {"broken.mp4", "mixed"}
    assert "different sizes" in dict(report.skipped)["mixed"]
    assert "3 clip(s) encoded, 0 reused from the cache, 2 skipped, 1 other file(s) ignored" in report.summary()
    assert "notes.pdf" not in report.summary() and "notes.pdf" not in (cache / "index.json").read_text()
    # 17 frames max -> 17 kept (1 + 4k); 13-frame mp4 -> 13; the still -> 1 frame
    assert sorted(enc.videos) == [(1, 32, 32, 3), (13, 32, 32, 3), (17, 32, 32, 3)]
    assert sorted(enc.texts) == sorted({"x", "a dog walks", "it sits", generate(0, frames=40, objects=2).caption})

    ds = CachedDataset(cache)
    items = {ds[i]["source"]: ds[i] for i in range(len(ds))}
    assert items["walk.mp4"]["latents"].shape == (1, 4, 4, 4, 4)
    assert [p for _, p, _ in items["walk.mp4"]["prompts"]] == ["a dog walks", "it sits"]
    assert (items["walk.mp4"]["fps"], items["shots/memory"]["fps"], items["walk.mp4"]["frame_stride"]) == (8.0, 16.0, 1)
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
    with pytest.raises(ValueError, match=r"gave no usable clips \(0 skipped, 0 other file\(s\) ignored\)"):
        build_cache(tmp_path / "empty", tmp_path / "c", enc.video, enc.text, 32, 32)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.mp4").write_bytes(b"junk")
    with pytest.raises(ValueError, match=r"1 skipped, 0 other .*; first problem: x.mp4: it could not be decoded"):
        build_cache(tmp_path / "bad", tmp_path / "c", enc.video, enc.text, 32, 32)
    with pytest.raises(ValueError, match="holds no cached dataset"):
        CachedDataset(tmp_path / "c")


def test_cli_scans_without_encoders(folder, capsys):
    assert main([str(folder)]) == 0
    out = capsys.readouterr().out
    assert "video  " in out and "[walk.json]" in out and "notes.pdf" not in out
    assert "5 clip(s), 1 other file(s) ignored" in out


STORM = [{"t": 0, "prompt": "a harbour"}, {"t": 2, "prompt": "a storm"}, {"t": 4, "prompt": "gulls"}]


@pytest.mark.parametrize("stride", [1, 2])
def test_cue_times_land_where_generation_puts_them_at_the_clips_own_fps(tmp_path, stride):
    """A 16 fps clip (not the 24 fps once assumed): its cues switch on the latent frames a generated video's do."""
    root = tmp_path / "data"
    root.mkdir()
    write_mp4(root / "storm.mp4", frames=81, fps=16)
    (root / "storm.json").write_text(json.dumps(STORM))
    enc = Encoders()
    build_cache(root, tmp_path / "cache", enc.video, enc.text, 32, 32, max_frames=81, frame_stride=stride)
    item = CachedDataset(tmp_path / "cache")[0]
    assert (item["fps"], item["frame_stride"], item["time_stride"]) == (16.0, stride, 4)
    assert item["seconds_per_latent_frame"] == 0.25 * stride
    latents = item["latents"].shape[2]
    rate = 16 / stride
    schedule = schedule_sections((4 * latents - 3) / rate, rate, 4)
    assert schedule.latent_frames == latents == {1: 21, 2: 11}[stride]
    board = Storyboard.parse(json.dumps(STORM))
    starts = [start for start, _ in item["latent_prompts"]]
    trained = [latent_section_cue(starts, s.latent_start, s.latent_end) for s in schedule.sections]
    assert trained == [p.cue for p in board.assign(schedule)]
    assert trained == {1: [0, 0, 1, 1, 2, 2], 2: [0, 1, 2]}[stride]  # 0:04 from latent frame 16 (1) or 8 (2)
    # the whole clip is one section for a plain LoRA: the prompt in force at its middle
    assert item["prompt"] == "a storm" and torch.equal(item["text"], enc.text("a storm"))
    assert all(torch.equal(cond, p[2]) for (_, cond), p in zip(item["latent_prompts"], item["prompts"]))


def test_a_cache_without_frame_rates_asks_to_be_built_again(folder, tmp_path):
    enc, cache = Encoders(), tmp_path / "cache"
    build_cache(folder, cache, enc.video, enc.text, width=32, height=32, max_frames=17, default_caption="x")
    index = json.loads((cache / "index.json").read_text())
    for item in index["items"]:
        del item["fps"]
    (cache / "index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match=r"was built before clips recorded their frame rate, .*Video Dataset node"):
        CachedDataset(cache)
    again = build_cache(folder, cache, enc.video, enc.text, width=32, height=32, max_frames=17, default_caption="x")
    assert again.encoded == [] and CachedDataset(cache)[0]["fps"] > 0  # nothing encoded again


def test_a_file_given_as_the_dataset_folder_is_named_a_file(folder, tmp_path):
    with pytest.raises(ValueError, match=r"walk.mp4 is a file, not a folder; give the folder that holds your clips"):
        scan(folder / "walk.mp4")


def test_a_build_stays_inside_its_roots_and_names_only_media(tmp_path, monkeypatch):
    """Links and ``..`` are resolved: a folder, clip or caption outside the allowed folders is never read, and the
    names of files that are not media (keys, password lists) appear nowhere."""
    monkeypatch.delenv(ANY_FOLDER_ENV, raising=False)
    inside, outside = tmp_path / "input", tmp_path / "home"
    (inside / "clips").mkdir(parents=True)
    outside.mkdir()
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(inside / "clips" / "own.png")
    Image.fromarray(np.full((32, 32, 3), 10, np.uint8)).save(outside / "private.png")
    (outside / "secret.txt").write_text("do not read")
    (inside / "clips" / "linked.png").symlink_to(outside / "private.png")
    (inside / "clips" / "own.txt").symlink_to(outside / "secret.txt")  # a caption that is a link out
    (inside / "clips" / "id_rsa").write_text("key")
    (inside / "clips" / "passwords.txt").write_text("hunter2")
    (inside / "escape").symlink_to(outside, target_is_directory=True)
    roots = allowed_roots(inside)
    enc = Encoders()
    report = build_cache(inside / "clips", tmp_path / "cache", enc.video, enc.text, 32, 32, roots=roots)
    assert report.encoded == ["own.png"] and report.ignored == 4  # both links out, id_rsa, passwords.txt
    text = report.summary() + (tmp_path / "cache" / "index.json").read_text()
    for name in ("id_rsa", "passwords", "private", "linked", "secret"):
        assert name not in text, name
    assert enc.texts == [""]  # the linked caption was not read
    for bad in (outside, inside / "escape", inside / "clips" / ".." / ".." / "home"):
        with pytest.raises(
            ValueError, match=r"is outside the folders this server may read and write .*" + ANY_FOLDER_ENV + "=1"
        ):
            scan(bad, roots)
    with pytest.raises(ValueError, match="is outside the folders"):
        scan(tmp_path / "missing", roots)  # outside: refused before anything says whether it exists
    monkeypatch.setenv(ANY_FOLDER_ENV, "1")
    assert allowed_roots(inside) is None and len(scan(outside, allowed_roots(inside))[0]) == 1


def test_a_cache_index_cannot_name_files_outside_its_folder(folder, tmp_path):
    enc, cache = Encoders(), tmp_path / "cache"
    build_cache(folder, cache, enc.video, enc.text, width=32, height=32, max_frames=17, default_caption="x")
    index = json.loads((cache / "index.json").read_text())
    index["items"][0]["latents"] = "../../elsewhere.safetensors"
    (cache / "index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match=r"names '../../elsewhere.safetensors', which is outside its folder"):
        CachedDataset(cache)[0]
