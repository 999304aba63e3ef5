"""Per-frame measures against values known in closed form, and the start-end drift contrast."""

from __future__ import annotations

import math

import pytest
import torch

from histenc.analysis.metrics import (
    af_per_frame,
    colour_stats_per_frame,
    drift_contrast,
    edge_count,
    frame_metrics,
    psnr_per_frame,
    query_reconstruction,
    sharpness_per_frame,
    ssim_per_frame,
)


def flat(values, size=16):
    """IMAGE frames [T, size, size, 3], frame t filled with values[t] (a number or an RGB triple)."""
    v = torch.as_tensor(values, dtype=torch.float32)
    if v.ndim == 1:
        v = v[:, None].expand(-1, 3)
    return v[:, None, None, :].expand(-1, size, size, 3).clone()


def test_psnr_known_values():
    target = flat([0.0, 0.5])
    pred = flat([0.1, 0.5 - 0.01])
    got = psnr_per_frame(pred, target)
    assert got.tolist() == pytest.approx([20.0, 40.0], abs=1e-3)  # MSE 1e-2 and 1e-4
    assert math.isinf(float(psnr_per_frame(target, target)[0]))


def test_ssim_known_values():
    g = torch.Generator().manual_seed(0)
    frames = torch.rand(2, 24, 24, 3, generator=g)
    assert ssim_per_frame(frames, frames).tolist() == pytest.approx([1.0, 1.0], abs=1e-5)
    # flat frames: only the luminance term (2 m1 m2 + c1) / (m1^2 + m2^2 + c1) remains, c1 = 0.01^2
    c1 = 1e-4
    expected = (2 * 0.5 * 0.25 + c1) / (0.5**2 + 0.25**2 + c1)
    assert float(ssim_per_frame(flat([0.5]), flat([0.25]))[0]) == pytest.approx(expected, abs=1e-5)
    noisy = (frames + 0.2 * torch.randn(frames.shape, generator=g)).clamp(0, 1)
    s = ssim_per_frame(noisy, frames)
    assert bool((s < 0.9).all() and (s > 0.0).all())
    with pytest.raises(ValueError, match="same shape"):
        ssim_per_frame(frames, frames[:1])


def test_drift_contrast_of_linear_brightness():
    t = 100
    brightness = 0.2 + 0.6 * torch.arange(t) / (t - 1)
    frames = flat(brightness.tolist(), size=8)
    mean, _ = colour_stats_per_frame(frames)
    assert edge_count(t) == 15
    # first 15 frames average index 7, last 15 average index 92: Delta = 0.6 * 85 / 99
    expected = 0.6 * 85 / 99
    assert float(drift_contrast(mean[:, 0])) == pytest.approx(expected, abs=1e-6)
    assert drift_contrast(mean).tolist() == pytest.approx([expected] * 3, abs=1e-6)
    assert float(drift_contrast(torch.full((t,), 0.4))) == 0.0
    assert edge_count(10) == 2 and edge_count(1) == 1 and edge_count(7) == 2


def test_colour_stats_and_clarity():
    g = torch.Generator().manual_seed(1)
    frames = flat([[0.2, 0.4, 0.6]])
    mean, std = colour_stats_per_frame(frames)
    assert mean[0].tolist() == pytest.approx([0.2, 0.4, 0.6], abs=1e-6)
    assert std[0].tolist() == pytest.approx([0.0, 0.0, 0.0], abs=1e-6)
    assert float(sharpness_per_frame(frames)[0]) == pytest.approx(0.0, abs=1e-10)
    sharp = torch.rand(1, 32, 32, 3, generator=g)
    blurred = torch.nn.functional.avg_pool2d(sharp.permute(0, 3, 1, 2), 3, 1, 1).permute(0, 2, 3, 1)
    clarity = sharpness_per_frame(torch.cat([sharp, blurred]))
    assert float(clarity[0]) > 3 * float(clarity[1])
    # a vertical step edge of height 1 in luma: the 8-neighbour Laplacian is -3 / +3 on the two edge
    # columns (reflect border), so the variance over 16x16 is 2 * 16 * 9 / 256 - mean^2 with mean 0
    step = torch.zeros(1, 16, 16, 3)
    step[:, :, 8:, :] = 1.0
    assert float(sharpness_per_frame(step)[0]) == pytest.approx(2 * 16 * 9 / 256, rel=1e-5)


def test_af_per_frame_reads_the_frame_spectrum():
    x = torch.arange(32, dtype=torch.float32)
    low = (0.5 + 0.3 * torch.cos(2 * math.pi * 2 * x / 32)).view(1, 32).expand(32, 32)
    high = (0.5 + 0.3 * torch.cos(2 * math.pi * 8 * x / 32)).view(32, 1).expand(32, 32)
    frames = torch.stack([low, high])[..., None].expand(-1, -1, -1, 3)
    assert af_per_frame(frames).tolist() == pytest.approx([2 / 32, 8 / 32], abs=1e-6)


def test_frame_metrics_names_and_lengths():
    g = torch.Generator().manual_seed(2)
    frames = torch.rand(5, 16, 16, 3, generator=g)
    m = frame_metrics(frames, chunk=2)
    assert list(m) == ["clarity", "mean_r", "mean_g", "mean_b", "std_r", "std_g", "std_b", "af"]
    assert all(v.shape == (5,) for v in m.values())
    assert torch.allclose(m["clarity"], sharpness_per_frame(frames))
    with_ref = frame_metrics(frames, frames * 0.5, chunk=3)
    assert "psnr" in with_ref and "ssim" in with_ref and with_ref["psnr"].shape == (5,)
    with pytest.raises(ValueError, match="IMAGE frames"):
        frame_metrics(frames.permute(0, 3, 1, 2))


def test_query_reconstruction_compares_the_asked_frames():
    history = flat([0.0, 0.2, 0.4, 0.6])
    queried = flat([0.4 + 0.01, 0.0])  # reconstructions of frames 2 and 0
    out = query_reconstruction(queried, history, [2, 0])
    assert out["psnr"][0].item() == pytest.approx(40.0, abs=1e-3)
    assert math.isinf(out["psnr"][1].item())
    assert out["mean_psnr"].item() == pytest.approx(40.0, abs=1e-3)
    assert out["ssim"].tolist() == pytest.approx([1.0, 1.0], abs=1e-3)
    with pytest.raises(ValueError, match="one index per frame"):
        query_reconstruction(queried, history, [2])
    with pytest.raises(ValueError, match="outside the history"):
        query_reconstruction(queried, history, [2, 9])
