"""T-RFlow: exact Euler at [0, 1], the derived truncation on toy flows, AF and the threshold search."""

from __future__ import annotations

import math

import pytest
import torch

from histenc.trflow import (
    EulerTerms,
    average_frequency,
    latent_average_frequency,
    lower_threshold_matching_af,
    record_euler_terms,
    step_weights,
    trflow_sample,
)


def reference_euler(model, x, sigmas, extra_args=None):
    """ComfyUI's sample_euler without churn, written out independently."""
    extra_args = extra_args or {}
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        d = (x - denoised) / sigmas[i]
        x = x + d * (sigmas[i + 1] - sigmas[i])
    return x


def shifted_sigmas(steps: int, shift: float = 5.0, dtype=torch.float32) -> torch.Tensor:
    """Wan-style flow schedule: t uniform in (1, 0], sigma = shift t / (1 + (shift - 1) t)."""
    t = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)
    return (shift * t / (1 + (shift - 1) * t)).to(dtype)


class NonlinearDenoiser:
    """A fixed, nonlinear x -> x0 map that uses sigma and an extra argument, like a conditioned model."""

    def __init__(self, channels: int = 4, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.weight = torch.randn(channels, channels, generator=g) * 0.5
        self.calls = 0

    def __call__(self, x, sigma, scale=1.0):
        self.calls += 1
        s = sigma.view(-1, *([1] * (x.ndim - 1)))
        mixed = torch.einsum("oc,bc...->bo...", self.weight.to(x.dtype), x)
        return scale * torch.tanh(mixed) * (1 - s) + 0.1 * s


def gaussian_denoiser(mu: torch.Tensor, std: float):
    """Exact E[x0 | x_sigma] for x0 ~ N(mu, std^2) per element and x_sigma = (1 - sigma) x0 + sigma noise."""

    def denoise(x, sigma):
        s = sigma.view(-1, *([1] * (x.ndim - 1))).to(x.dtype)
        gain = (1 - s) * std**2 / ((1 - s) ** 2 * std**2 + s**2)
        return mu + gain * (x - (1 - s) * mu)

    return denoise


def test_full_window_reproduces_plain_euler():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 3, 8, 8)
    sigmas = shifted_sigmas(12)
    model = NonlinearDenoiser()
    expected = reference_euler(model, x, sigmas, {"scale": 0.8})
    got = trflow_sample(model, x, sigmas, 0.0, 1.0, extra_args={"scale": 0.8})
    assert torch.allclose(got, expected, atol=2e-6, rtol=0)


def test_ksampler_calling_convention_and_callback():
    """KSAMPLER calls fn(model, noise, sigmas, extra_args=..., callback=..., disable=..., **extra_options)."""
    torch.manual_seed(1)
    x = torch.randn(1, 4, 8, 8)
    sigmas = torch.linspace(1.0, 0.0, 11)
    seen = []
    model = NonlinearDenoiser()
    out = trflow_sample(model, x, sigmas, extra_args={"scale": 1.0}, callback=seen.append, disable=True, a=0.3, b=0.7)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert model.calls == 7  # steps starting at progress 0.7 and later are never evaluated
    assert [c["i"] for c in seen] == list(range(7)) + [9]  # last report completes the progress bar
    assert torch.equal(seen[-1]["denoised"], out)


def test_step_weights_follow_the_window_exactly():
    sigmas = torch.linspace(1.0, 0.0, 11)
    w = step_weights(sigmas, 0.35, 0.7)
    expected = [0, 0, 0, 0.05, 0.1, 0.1, 0.1, 0, 0, 0]
    assert w == pytest.approx(expected, abs=1e-6)
    # "step" progress ignores sigma spacing: on a shifted schedule it keeps other steps
    shifted = shifted_sigmas(10, shift=5.0)
    by_sigma = [v > 0 for v in step_weights(shifted, 0.3, 0.7, "sigma")]
    by_step = [v > 0 for v in step_weights(shifted, 0.3, 0.7, "step")]
    assert by_step == [False] * 3 + [True] * 4 + [False] * 3
    assert by_sigma != by_step


def test_truncation_equals_renormalised_velocity_mean():
    """Discrete derivation: with a window on step edges the result is x_T minus the mean kept velocity."""
    torch.manual_seed(2)
    x = torch.randn(1, 4, 6, 6, dtype=torch.float64)
    sigmas = torch.linspace(1.0, 0.0, 11, dtype=torch.float64)
    model = NonlinearDenoiser()
    velocities, xi = [], x
    for i in range(10):
        den = model(xi, sigmas[i : i + 1])
        d = (xi - den) / sigmas[i]
        velocities.append(d)
        xi = xi + d * (sigmas[i + 1] - sigmas[i])
    expected = x - torch.stack(velocities[3:7]).mean(0)  # steps covering progress [0.3, 0.7]
    got = trflow_sample(model, x, sigmas, 0.3, 0.7)
    assert torch.allclose(got, expected, atol=1e-12)
    assert not torch.allclose(got, xi, atol=1e-3)  # and it is not plain Euler


@pytest.mark.parametrize("window", [(0.0, 0.7), (0.3, 0.7), (0.2, 1.0)])
def test_gaussian_flow_matches_closed_form(window):
    """For Gaussian data the ODE path is x(s) = (1-s) mu + sqrt((1-s)^2 std^2 + s^2) noise, so the
    window [a, b] yields noise - (x(1 - a) - x(1 - b)) / (b - a) in the many-step limit."""
    a, b = window
    torch.manual_seed(3)
    mu = torch.linspace(-1.0, 2.0, 16, dtype=torch.float64).view(1, 16)
    std = 0.5
    noise = torch.randn(1, 16, dtype=torch.float64)
    sigmas = torch.linspace(1.0, 0.0, 2001, dtype=torch.float64)
    got = trflow_sample(gaussian_denoiser(mu, std), noise, sigmas, a, b)

    def path(s):
        return (1 - s) * mu + math.sqrt((1 - s) ** 2 * std**2 + s**2) * noise

    expected = noise - (path(1 - a) - path(1 - b)) / (b - a)
    assert torch.allclose(got, expected, atol=2e-3)
    full = trflow_sample(gaussian_denoiser(mu, std), noise, sigmas, 0.0, 1.0)
    assert torch.allclose(full, mu + std * noise, atol=2e-3)  # plain Euler reaches the exact sample
    assert (got - full).abs().max() > 0.05  # truncation really moves the sample


def test_recorded_terms_give_the_sampler_result():
    torch.manual_seed(4)
    x = torch.randn(1, 4, 8, 8)
    sigmas = shifted_sigmas(9)
    terms = record_euler_terms(NonlinearDenoiser(), x, sigmas, store_device="cpu")
    for a, b in [(0.0, 1.0), (0.3, 0.7), (0.12, 0.93)]:
        assert torch.allclose(terms.combine(a, b), trflow_sample(NonlinearDenoiser(), x, sigmas, a, b), atol=1e-6)


def test_invalid_inputs_raise_clear_errors():
    x = torch.zeros(1, 2, 4, 4)
    with pytest.raises(ValueError, match="window"):
        trflow_sample(NonlinearDenoiser(2), x, torch.linspace(1, 0, 5), 0.7, 0.3)
    with pytest.raises(ValueError, match="non-increasing"):
        trflow_sample(NonlinearDenoiser(2), x, torch.tensor([1.0, 0.2, 0.5, 0.0]))
    with pytest.raises(ValueError, match="progress"):
        step_weights([1.0, 0.0], progress="time")


def cosine_image(freqs_amps, size=32, channels=1, offset=0.0):
    """Horizontal cosines with whole periods across the image: no spectral leakage."""
    x = torch.arange(size, dtype=torch.float64)
    row = sum(amp * torch.cos(2 * math.pi * f * x) for f, amp in freqs_amps) + offset
    return row.view(1, 1, size).expand(channels, size, size).clone()


def test_af_of_known_spectra():
    assert float(average_frequency(cosine_image([(4 / 32, 1.0)]))) == pytest.approx(4 / 32, abs=1e-9)
    mix = cosine_image([(2 / 32, 3.0), (10 / 32, 1.0)], channels=3)
    assert float(average_frequency(mix)) == pytest.approx((3 * 2 / 32 + 10 / 32) / 4, abs=1e-9)
    shifted = cosine_image([(2 / 32, 3.0), (10 / 32, 1.0)], channels=3, offset=5.0)
    assert float(average_frequency(shifted)) == pytest.approx(float(average_frequency(mix)), abs=1e-9)
    assert float(average_frequency(torch.full((3, 16, 16), 0.7))) == 0.0
    noise = torch.randn(64, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    # white noise: flat spectrum, so AF is the mean distance from the centre of the unit square
    assert float(average_frequency(noise).mean()) == pytest.approx(
        (math.sqrt(2) + math.log(1 + math.sqrt(2))) / 6, abs=0.01
    )
    batch = torch.stack([cosine_image([(1 / 32, 1.0)]), cosine_image([(8 / 32, 1.0)])])
    assert average_frequency(batch).tolist() == pytest.approx([1 / 32, 8 / 32], abs=1e-9)
    video = batch.permute(1, 0, 2, 3).unsqueeze(0)  # [B=1, C=1, T=2, H, W]
    assert latent_average_frequency(video) == pytest.approx((1 / 32 + 8 / 32) / 2, abs=1e-9)


def coarse_to_fine_denoiser(target: torch.Tensor):
    """Clean estimate = target low-passed with a cutoff that rises as sigma falls (structure first, detail last)."""
    h, w = target.shape[-2:]
    fy = torch.fft.fftfreq(h).view(h, 1)
    fx = torch.fft.fftfreq(w).view(1, w)
    radius = torch.sqrt(fy**2 + fx**2)
    spectrum = torch.fft.fft2(target)

    def denoise(x, sigma):
        cutoff = 0.02 + 0.7 * (1 - float(sigma.flatten()[0])) ** 2
        return torch.fft.ifft2(spectrum * (radius <= cutoff)).real.expand_as(x)

    return denoise


def test_lower_threshold_restores_reference_af():
    g = torch.Generator().manual_seed(5)
    target = torch.nn.functional.avg_pool2d(torch.randn(1, 3, 34, 34, generator=g), 3, 1)  # [1, 3, 32, 32]
    noise = torch.randn(1, 3, 32, 32, generator=g)
    terms = record_euler_terms(coarse_to_fine_denoiser(target), noise, torch.linspace(1.0, 0.0, 41))
    b = 0.7
    a, af, reference = lower_threshold_matching_af(terms, b)
    af_without_lower = latent_average_frequency(terms.combine(0.0, b))
    assert af_without_lower < reference  # dropping late steps loses detail
    assert a > 0.0 and abs(af - reference) < abs(af_without_lower - reference)
    grid = [i * 0.02 for i in range(35)]
    best = min(abs(latent_average_frequency(terms.combine(c, b)) - reference) for c in grid)
    assert abs(af - reference) == pytest.approx(best, abs=1e-12)


def test_lower_threshold_search_finds_an_interior_match():
    """Velocities -0, -1, ..., -9 on ten equal steps: the [a, 0.7] result is the mean of the kept step
    numbers, which equals the full mean 4.5 exactly at a = 0.3."""
    terms = EulerTerms(
        x_start=torch.zeros(1, 1, 2, 2, dtype=torch.float64),
        sigmas=[1.0 - i / 10 for i in range(11)],
        velocities=[torch.full((1, 1, 2, 2), -float(i), dtype=torch.float64) for i in range(10)],
    )
    mean = lambda t: float(t.mean())  # noqa: E731
    assert mean(terms.combine(0.0, 0.7)) == pytest.approx(3.0)
    a, value, reference = lower_threshold_matching_af(terms, 0.7, measure=mean)
    assert reference == pytest.approx(4.5) and value == pytest.approx(4.5)
    assert a == pytest.approx(0.3)
    with pytest.raises(ValueError, match="outside"):
        lower_threshold_matching_af(terms, 0.7, measure=mean, candidates=[0.8])


def test_af_keeps_nan_visible():
    planes = torch.rand(2, 1, 8, 8)
    planes[1, 0, 3, 3] = float("nan")
    af = average_frequency(planes)
    assert math.isfinite(float(af[0])) and math.isnan(float(af[1]))
