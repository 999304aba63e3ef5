"""Two experts that share the steps of every section (Wan 2.2 14B: a high-noise and a low-noise model).

The high-noise expert makes the first ``switch`` steps and the low-noise one the rest. The switch is a step,
or (step 0) the number of steps whose sigma is at or above a boundary: Wan 2.2's own rule (0.875 for T2V,
0.9 for I2V). The two must be experts of one model: same family, width, channels, patch and inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from ..dit.info import ModelInfo

PAIR_FACTS = {
    "family": "family",
    "width": "width",
    "latent_channels": "latent channels",
    "input_channels": "input channels",
    "patch": "patch",
    "clip_vision": "CLIP-vision input",
}
EXAMPLE = "connect the two experts of one model, e.g. wan2.2_t2v_high_noise_14B and wan2.2_t2v_low_noise_14B."


@dataclass(frozen=True)
class Experts:
    """The low-noise expert (a host MODEL) and how many of the ``steps`` the high-noise one makes first."""

    low: object
    switch: int
    steps: int

    def __post_init__(self) -> None:
        if not 0 < self.switch < self.steps:
            raise ValueError(
                f"the expert switch is at step {self.switch} of {self.steps}; each expert needs at least one step, "
                f"so switch between 1 and {self.steps - 1}."
            )

    def describe(self) -> dict:
        return {"switch step": self.switch}


def check_pair(high: ModelInfo, low: ModelInfo, names: tuple[str, str]) -> None:
    """One sentence when the low-noise expert is not the high-noise one's partner (``names``: their classes)."""
    for attr, label in PAIR_FACTS.items():
        mine, theirs = getattr(high, attr), getattr(low, attr)
        if mine != theirs:
            raise ValueError(
                f"model_low_noise does not match model: its {label} is {theirs} but model's is {mine} "
                f"({names[1]} and {names[0]}); {EXAMPLE}"
            )
    if names[0] != names[1]:
        raise ValueError(f"model_low_noise is a {names[1]} model but model is a {names[0]} model; {EXAMPLE}")


def switch_at(sigmas: Sequence[float], step: int, boundary: float) -> int:
    """Steps made by the high-noise expert on ``sigmas`` (steps + 1 values): ``step``, or (``step`` 0) those whose
    sigma is at or above ``boundary``; one sentence when an expert would get no step."""
    sigmas = [float(s) for s in sigmas]
    steps = len(sigmas) - 1
    if step:
        if step >= steps:
            raise ValueError(
                f"switch_step {step} leaves the low-noise expert no step of the {steps}; pick 1 to {steps - 1} "
                "(ComfyUI's Wan 2.2 templates: half the steps), or 0 to switch at switch_sigma."
            )
        return step
    high = sum(1 for s in sigmas[:steps] if s >= boundary)
    if not 0 < high < steps:
        raise ValueError(
            f"switch_sigma {boundary:g} gives {'no' if high == 0 else 'every'} step to the high-noise expert "
            f"(sigmas run from {sigmas[0]:.3f} to {sigmas[steps - 1]:.3f} over the {steps} steps); "
            "pick a boundary between them (Wan 2.2: 0.875 for T2V, 0.9 for I2V) or set switch_step."
        )
    return high
