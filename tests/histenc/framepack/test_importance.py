import math

import pytest
import torch

from histenc.framepack.importance import cosine_similarity, importance, most_important_first, time_similarity


def test_cosine_is_one_for_a_scaled_copy_and_minus_one_for_a_negated_one():
    frames = torch.randn(2, 4, 3, 5, 6)
    estimate = frames[:, :, 1:2] * 3.0
    frames[:, :, 2] = -estimate[:, :, 0]
    sim = cosine_similarity(frames, estimate)
    assert sim[1].item() == pytest.approx(1.0, abs=1e-6) and sim[2].item() == pytest.approx(-1.0, abs=1e-6)
    assert -1 < sim[0].item() < 1


def test_time_similarity_is_a_gaussian_in_seconds():
    sim = time_similarity(torch.tensor([0, -6, -12]), seconds_per_frame=1 / 6)
    assert sim.tolist() == pytest.approx([1.0, math.exp(-1), math.exp(-4)], rel=1e-6)


def test_orderings():
    times = torch.tensor([-5, -4, -3, -2, -1])
    frames = torch.randn(1, 4, 5, 3, 3)
    assert most_important_first(importance(frames, times, "time"), times) == [4, 3, 2, 1, 0]
    estimate = frames[:, :, 0:1]
    similar = most_important_first(importance(frames, times, "similarity", estimate), times)
    assert similar[0] == 0
    hybrid = importance(frames, times, "hybrid", estimate, lambda_time=2.0, seconds_per_frame=1.0)
    expected = cosine_similarity(frames, estimate) + 2.0 * torch.exp(-(times.float() ** 2))
    assert torch.allclose(hybrid, expected)
    with pytest.raises(ValueError, match="frame ordering"):
        importance(frames, times, "newest")
