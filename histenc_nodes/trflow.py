"""T-RFlow as a ComfyUI SAMPLER for SamplerCustom, SamplerCustomAdvanced and the long-video sampler."""

from __future__ import annotations

import comfy.samplers
from comfy_api.latest import io

from ..histenc.trflow import PROGRESS_MODES, trflow_sample


class TRFlowSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="HistEncTRFlowSampler",
            display_name="T-RFlow Sampler",
            category="histenc/sampling",
            description=(
                "Euler sampling that keeps only the clean-image estimates from a window [a, b] of the denoising "
                "trajectory (0 = pure noise, 1 = clean) and renormalises them. Late steps add the high-frequency "
                "errors that pile up over long videos; [0.3, 0.7] drops them and rebalances detail. [0, 1] is plain "
                "Euler."
            ),
            inputs=[
                io.Float.Input(
                    "a",
                    default=0.3,
                    min=0.0,
                    max=1.0,
                    step=0.01,
                    tooltip="Start of the kept window. Raising it drops early, low-frequency estimates and "
                    "restores sharpness lost by a lower b. 0 keeps them all.",
                ),
                io.Float.Input(
                    "b",
                    default=0.7,
                    min=0.0,
                    max=1.0,
                    step=0.01,
                    tooltip="End of the kept window. Lowering it drops late steps (less accumulated artefact, "
                    "softer detail); steps after b are not computed at all. 1 keeps them all.",
                ),
                io.Combo.Input(
                    "progress",
                    options=list(PROGRESS_MODES),
                    default="sigma",
                    tooltip="How a and b are measured: 'sigma' as a fraction of the noise-level range of the "
                    "schedule, 'step' as a fraction of the step count.",
                ),
            ],
            outputs=[
                io.Sampler.Output(
                    display_name="sampler",
                    tooltip="Connect to SamplerCustom, SamplerCustomAdvanced or the long-video sampler.",
                )
            ],
        )

    @classmethod
    def execute(cls, a, b, progress) -> io.NodeOutput:
        if not (0.0 <= a < b <= 1.0):
            raise ValueError(
                f"T-RFlow window [a, b] = [{a}, {b}] is empty; set a below b (for example a = 0.3, b = 0.7)."
            )
        sampler = comfy.samplers.KSAMPLER(
            trflow_sample, extra_options={"a": float(a), "b": float(b), "progress": progress}
        )
        return io.NodeOutput(sampler)


NODES = [TRFlowSampler]
