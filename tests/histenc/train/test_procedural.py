"""Procedural long-memory videos: deterministic, objects return, ground truth matches the pixels."""

import pytest
import torch

from histenc.train.procedural import NONE, generate, generate_set, write_image_sequence


def test_same_seed_same_video_other_seed_other_video():
    a, b, c = generate(3), generate(3), generate(4)
    assert torch.equal(a.frames, b.frames) and torch.equal(a.visible, b.visible)
    assert not torch.equal(a.frames, c.frames)
    assert a.frames.shape == (64, 32, 32, 3) and a.frames.dtype == torch.float32
    assert 0 <= float(a.frames.min()) and float(a.frames.max()) <= 1


@pytest.mark.parametrize("seed", range(8))
def test_every_object_leaves_and_comes_back(seed):
    video = generate(seed, objects=3)
    visits = video.visits()
    for k in range(3):
        spans = [(s, e) for obj, s, e in visits if obj == k]
        assert len(spans) >= 2, (seed, k, visits)
        first_end, second_start = spans[0][1], spans[1][0]
        others = set(video.visible[first_end:second_start].tolist()) - {k}
        assert others, "something else must be shown between two visits"


def test_ground_truth_matches_pixels():
    video = generate(11, frames=96, size=32, objects=4)
    background = video.frames[video.visible == NONE]
    assert len(background) > 0
    # background-only frames are all alike; every object frame carries its own colour somewhere
    assert (background - background[0]).abs().max() < 1e-6
    for t in range(96):
        k = int(video.visible[t])
        colour = torch.tensor(video.objects[k].colour if k != NONE else (-1.0, -1.0, -1.0))
        hits = ((video.frames[t] - colour).abs().sum(-1) < 1e-6).sum()
        assert (hits > 0) == (k != NONE), t


def test_too_short_is_refused_and_sets_use_consecutive_seeds(tmp_path):
    with pytest.raises(ValueError, match="too short for 3 objects"):
        generate(0, frames=20)
    videos = generate_set(2, seed=100, frames=48, objects=2)
    assert [v.seed for v in videos] == [100, 101]
    folder = write_image_sequence(videos[0], tmp_path / "clip")
    assert len(list(folder.glob("*.png"))) == 48
    assert (tmp_path / "clip.txt").read_text().startswith("objects that come and go")
