"""Truncation-rectified flow (T-RFlow): Euler sampling that keeps only a window of its steps.

Calling convention (the one ComfyUI's k-diffusion samplers use)
    ``denoise(x, sigma * s_in, **extra_args) -> x0_hat`` with ``x = (1 - sigma) x0 + sigma noise``,
    ``sigmas`` descending from sigma_0 (about 1) to sigma_N (usually 0).

Derivation
    One Euler step moves along the velocity ``d_i = (x_i - x0_i) / sigma_i`` (the model's noise
    estimate minus its clean estimate):

        x_{i+1} = x_i + (sigma_{i+1} - sigma_i) d_i = x_i - D_i d_i,    D_i = sigma_i - sigma_{i+1} >= 0.

    Unrolling from the start x_0 gives the final sample as the start minus a D-weighted sum of
    velocities. With S = sum_i D_i = sigma_0 - sigma_N the weights D_i / S add up to one, so

        x_N = x_0 - sum_i D_i d_i = sum_i (D_i / S) z_i,      z_i = x_0 - S d_i.

    z_i is step i's own guess of the result: where its velocity leads when followed from the
    starting noise over the whole schedule. Written with the clean estimate,
    z_i = S * x0_i + (x_0 - S * eps_i), eps_i = x0_i + d_i being the model's noise estimate, so each
    term is a clean estimate plus a noise term that vanishes when the model recovers the starting
    noise exactly. Plain Euler is the full, D-weighted ensemble of the z_i.

    T-RFlow keeps only the terms from a window [a, b] of the trajectory and renormalises:

        x_N(a, b) = sum_i w_i z_i / sum_i w_i = x_0 - S * sum_i w_i d_i / sum_i w_i,
        w_i = D_i * f_i,  f_i = fraction of step i's progress interval inside [a, b].

    With [a, b] = [0, 1] every f_i is 1 and the formula is plain Euler. A step cut by a window edge
    counts in part, so the result changes continuously with a and b.

Progress (0 = pure noise, 1 = clean)
    ``"sigma"`` (default): p(sigma) = (sigma_0 - sigma) / (sigma_0 - sigma_N); step i covers
    [p(sigma_i), p(sigma_{i+1})]. The window is then an interval of flow time, and in the limit of
    many steps x_N(a, b) = x_0 - (x(sigma_0 - a S) - x(sigma_0 - b S)) / (b - a) for the exact ODE
    path x(sigma). ``"step"``: step i covers [i / N, (i + 1) / N] whatever the schedule; with shifted
    schedules (Wan uses shift 5-8) this places the window very differently, so say which one you use.

Why it helps: early steps fix low frequencies (layout, colour), late steps add high-frequency
detail and, in autoregressive video, the errors that compound from section to section. [0, 0.7]
drops the late terms; [0.3, 0.7] also drops early ones so that the kept mix is not dull.
``lower_threshold_matching_af`` picks a from the average frequency (AF) of the result.

The trajectory itself is plain Euler: the model sees exactly the inputs it would see without
truncation. Steps entirely after b contribute nothing, so they are never evaluated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

PROGRESS_MODES = ("sigma", "step")
_EDGE_TOLERANCE = 1e-5


def _sigma_list(sigmas: torch.Tensor | Sequence[float]) -> list[float]:
    values = [float(s) for s in (sigmas.tolist() if isinstance(sigmas, torch.Tensor) else sigmas)]
    for i in range(len(values) - 1):
        if values[i + 1] > values[i]:
            raise ValueError(
                f"sigmas must be non-increasing for T-RFlow, but sigma[{i + 1}] = {values[i + 1]:.6g} is above "
                f"sigma[{i}] = {values[i]:.6g}; pass a plain descending schedule."
            )
    return values


def _check_window(a: float, b: float) -> None:
    if not (0.0 <= a < b <= 1.0):
        raise ValueError(
            f"T-RFlow window [a, b] = [{a}, {b}] is invalid; use 0 <= a < b <= 1 (for example [0.3, 0.7])."
        )


def step_progress(sigmas: torch.Tensor | Sequence[float], progress: str = "sigma") -> list[tuple[float, float]]:
    """Progress interval [start, end] of every Euler step (0 = pure noise, 1 = clean)."""
    values = _sigma_list(sigmas)
    n = len(values) - 1
    if progress == "step":
        return [(i / n, (i + 1) / n) for i in range(n)]
    if progress != "sigma":
        raise ValueError(f"progress = {progress!r} is unknown; use one of {PROGRESS_MODES}.")
    span = values[0] - values[-1]
    if span <= 0:
        return [(0.0, 1.0) for _ in range(n)]
    return [((values[0] - values[i]) / span, (values[0] - values[i + 1]) / span) for i in range(n)]


def step_weights(
    sigmas: torch.Tensor | Sequence[float], a: float = 0.0, b: float = 1.0, progress: str = "sigma"
) -> list[float]:
    """Unnormalised weight w_i = D_i * (share of step i inside [a, b]) of every Euler step."""
    _check_window(a, b)
    values = _sigma_list(sigmas)
    weights = []
    for i, (start, end) in enumerate(step_progress(values, progress)):
        length = end - start
        inside = max(0.0, min(end, b) - max(start, a))
        share = inside / length if length > 0 else 0.0
        # Window edges that land on a step edge up to float rounding must not keep a sliver.
        share = 0.0 if share < _EDGE_TOLERANCE else 1.0 if share > 1.0 - _EDGE_TOLERANCE else share
        weights.append((values[i] - values[i + 1]) * share)
    return weights


def _combine(x_start: torch.Tensor, span: float, weights: list[float], velocities) -> torch.Tensor:
    total = sum(weights)
    if total <= 0:
        raise ValueError(
            "the T-RFlow window keeps no step of this schedule (all kept steps have zero sigma change); "
            "widen [a, b] or use more steps."
        )
    acc = torch.zeros_like(x_start, dtype=torch.float32 if x_start.dtype != torch.float64 else torch.float64)
    for w, d in zip(weights, velocities):
        if w > 0:
            acc.add_(d.to(device=acc.device, dtype=acc.dtype), alpha=w / total)
    return (x_start.to(acc.dtype) - span * acc).to(x_start.dtype)


@torch.no_grad()
def trflow_sample(
    denoise: Callable[..., torch.Tensor],
    x: torch.Tensor,
    sigmas: torch.Tensor,
    a: float = 0.0,
    b: float = 1.0,
    callback: Callable[[dict], None] | None = None,
    disable: bool | None = None,
    extra_args: dict | None = None,
    progress: str = "sigma",
) -> torch.Tensor:
    """Euler rectified-flow sampling that keeps only the steps in the progress window [a, b].

    Same calling convention as ComfyUI's ``sample_euler``; ``comfy.samplers.KSAMPLER`` passes a, b and
    progress through its extra options. ``disable`` is accepted for that convention and ignored:
    the host's progress bar is driven by ``callback``.
    """
    del disable
    extra_args = {} if extra_args is None else extra_args
    values = _sigma_list(sigmas)
    n = len(values) - 1
    if n < 1:
        return x
    weights = step_weights(values, a, b, progress)
    last_needed = max((i for i, w in enumerate(weights) if w > 0), default=-1)
    if last_needed < 0:
        _combine(x, 0.0, weights, [])  # raises the "keeps no step" error
    total = sum(weights)
    span = values[0] - values[-1]
    x_start = x
    acc = torch.zeros_like(x, dtype=torch.float64 if x.dtype == torch.float64 else torch.float32)
    s_in = x.new_ones([x.shape[0]])
    denoised = x
    for i in range(last_needed + 1):
        sigma = sigmas[i] if isinstance(sigmas, torch.Tensor) else torch.tensor(values[i], device=x.device)
        denoised = denoise(x, sigma * s_in, **extra_args)
        d = (x - denoised) / values[i]
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma, "denoised": denoised})
        if weights[i] > 0:
            acc.add_(d.to(acc.dtype), alpha=weights[i] / total)
        x = x + d * (values[i + 1] - values[i])
    result = (x_start.to(acc.dtype) - span * acc).to(x_start.dtype)
    if callback is not None and last_needed < n - 1:
        # Skipped late steps: report the finished sample so progress bars and x0 previews complete.
        callback({"x": result, "i": n - 1, "sigma": sigmas[n - 1], "sigma_hat": sigmas[n - 1], "denoised": result})
    return result


@dataclass
class EulerTerms:
    """Start, schedule and every step's velocity of one plain Euler run.

    Because truncation never changes the trajectory, one recorded run gives the T-RFlow result for
    any window without calling the model again (what the threshold search needs).
    """

    x_start: torch.Tensor
    sigmas: list[float]
    velocities: list[torch.Tensor]

    def combine(self, a: float = 0.0, b: float = 1.0, progress: str = "sigma") -> torch.Tensor:
        """T-RFlow result for the window [a, b]."""
        weights = step_weights(self.sigmas, a, b, progress)
        return _combine(self.x_start, self.sigmas[0] - self.sigmas[-1], weights, self.velocities)


@torch.no_grad()
def record_euler_terms(
    denoise: Callable[..., torch.Tensor],
    x: torch.Tensor,
    sigmas: torch.Tensor,
    extra_args: dict | None = None,
    store_device: torch.device | str | None = None,
) -> EulerTerms:
    """Run plain Euler once and keep every velocity d_i (on ``store_device``, e.g. "cpu", to spare VRAM)."""
    extra_args = {} if extra_args is None else extra_args
    values = _sigma_list(sigmas)
    s_in = x.new_ones([x.shape[0]])
    x_start, velocities = x, []
    for i in range(len(values) - 1):
        sigma = sigmas[i] if isinstance(sigmas, torch.Tensor) else torch.tensor(values[i], device=x.device)
        denoised = denoise(x, sigma * s_in, **extra_args)
        d = (x - denoised) / values[i]
        velocities.append(d.to(store_device) if store_device is not None else d)
        x = x + d * (values[i + 1] - values[i])
    return EulerTerms(x_start=x_start, sigmas=values, velocities=velocities)


def average_frequency(planes: torch.Tensor) -> torch.Tensor:
    """AF: magnitude-weighted mean radial frequency of the 2-D spectrum, in cycles per pixel.

    ``planes`` is [..., C, H, W]; the result is [...]. AF = sum_f r(f) |F(f)| / sum_f |F(f)|, the
    magnitudes summed over channels. The DC term (mean colour) is left out so that a brightness or
    colour shift does not read as a change of detail. A flat frame has AF 0; pure noise is about 0.38.
    """
    if planes.ndim < 3:
        raise ValueError(f"average_frequency needs [..., channels, height, width], got shape {tuple(planes.shape)}.")
    h, w = planes.shape[-2:]
    real = planes.double() if planes.dtype == torch.float64 else planes.float()
    spectrum = torch.fft.fft2(real).abs().sum(dim=-3)
    fy = torch.fft.fftfreq(h, device=planes.device, dtype=real.dtype).view(h, 1)
    fx = torch.fft.fftfreq(w, device=planes.device, dtype=real.dtype).view(1, w)
    radius = torch.sqrt(fy * fy + fx * fx)
    spectrum[..., 0, 0] = 0.0
    total = spectrum.sum(dim=(-2, -1))
    weighted = (spectrum * radius).sum(dim=(-2, -1))
    # A flat frame (total 0) has AF 0; NaN input stays NaN so broken frames are not read as flat.
    return torch.where(total == 0, torch.zeros_like(total), weighted / total.clamp_min(1e-30))


def latent_average_frequency(latent: torch.Tensor) -> float:
    """Mean AF over all frames of a latent [B, C, H, W] or [B, C, T, H, W]."""
    if latent.ndim == 5:
        latent = latent.transpose(1, 2)
    elif latent.ndim != 4:
        raise ValueError(f"latent must be [B, C, H, W] or [B, C, T, H, W], got shape {tuple(latent.shape)}.")
    return float(average_frequency(latent).mean())


def lower_threshold_matching_af(
    terms: EulerTerms,
    b: float,
    measure: Callable[[torch.Tensor], float] = latent_average_frequency,
    candidates: Sequence[float] | None = None,
    progress: str = "sigma",
) -> tuple[float, float, float]:
    """Lower threshold a whose result on [a, b] has the AF closest to the untruncated [0, 1] result.

    Dropping the late steps (b < 1) lowers AF; dropping early steps as well raises it again. The
    search tries ``candidates`` (default: 0, 0.02, ... below b) on one recorded run. ``measure`` maps a
    result to one AF number; pass one that decodes to pixels to match AF in image space.
    Returns (a, AF of the [a, b] result, AF of the [0, 1] reference).
    """
    _check_window(0.0, b)
    reference = measure(terms.combine(0.0, 1.0, progress))
    if candidates is None:
        candidates = [i * 0.02 for i in range(int(b / 0.02 + 1e-9) + 1) if i * 0.02 < b - 1e-9]
    best = None
    for a in candidates:
        if not (0.0 <= a < b):
            raise ValueError(f"candidate lower threshold {a} is outside [0, b = {b}); pass values in that range.")
        try:
            af = measure(terms.combine(a, b, progress))
        except ValueError:
            continue  # window keeps no step of this schedule
        if best is None or abs(af - reference) < abs(best[1] - reference):
            best = (float(a), af)
    if best is None:
        raise ValueError(f"no candidate lower threshold keeps a step below b = {b}; use more steps or a larger b.")
    return best[0], best[1], reference
