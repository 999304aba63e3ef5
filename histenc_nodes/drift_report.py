"""Drift report node: per-frame quality over time for IMAGE frames, as a plot in the UI and a text table."""

from __future__ import annotations

import logging

from comfy_api.latest import io, ui

from ..histenc.analysis.report import build_report, section_starts_every, section_starts_from_latent

log = logging.getLogger(__name__)

SECTION_UNITS = ["latent frames", "video frames"]


def section_starts(frames: int, section_frames: int, unit: str) -> list[int]:
    """Section starts in video frames, from a section length in the chosen unit (0: no sections)."""
    if section_frames <= 0:
        return [0]
    if unit == "latent frames":
        return section_starts_from_latent(frames, section_frames)
    if unit == "video frames":
        return section_starts_every(frames, section_frames)
    raise ValueError(f"section_unit = {unit!r} is unknown; use one of {SECTION_UNITS}.")


class DriftReportNode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="HistEncDriftReport",
            display_name="Drift Report",
            category="histenc/analysis",
            description=(
                "Plots clarity, colour and average frequency (and PSNR/SSIM against a reference) over the video, with "
                "section boundaries, and tabulates the start-end drift |first 15% - last 15%| of each measure."
            ),
            is_output_node=True,
            inputs=[
                io.Image.Input("images", tooltip="The decoded video frames to analyse."),
                io.Float.Input(
                    "fps",
                    default=16.0,
                    min=0.0,
                    max=240.0,
                    step=0.01,
                    tooltip="Frame rate, for the time axis in seconds (0 shows frame numbers).",
                ),
                io.Int.Input(
                    "section_frames",
                    default=0,
                    min=0,
                    max=4096,
                    tooltip="Length of one section, to mark section boundaries; 0 marks none. Use the "
                    "long-video sampler's section_frames with the unit 'latent frames'.",
                ),
                io.Combo.Input(
                    "section_unit",
                    options=SECTION_UNITS,
                    default=SECTION_UNITS[0],
                    tooltip="'latent frames': Wan/Hunyuan sections (first section 4L-3 video frames, then "
                    "4L each). 'video frames': fixed-length sections of decoded frames.",
                ),
                io.Int.Input("width", default=960, min=160, max=4096, step=8, tooltip="Width of the plot in pixels."),
                io.Int.Input(
                    "panel_height",
                    default=150,
                    min=60,
                    max=1024,
                    step=2,
                    tooltip="Height of each metric panel in pixels.",
                ),
                io.Image.Input(
                    "reference",
                    optional=True,
                    tooltip="Optional frames of the same size and count (for example the ground truth) to "
                    "add PSNR and SSIM panels.",
                ),
            ],
            outputs=[
                io.Image.Output(display_name="plot", tooltip="The metric plot as an image."),
                io.String.Output(
                    display_name="table",
                    tooltip="Per-measure means, start/end means and drift, then per-section means, as a text table.",
                ),
            ],
        )

    @classmethod
    def execute(cls, images, fps, section_frames, section_unit, width, panel_height, reference=None) -> io.NodeOutput:
        if images.ndim != 4 or images.shape[0] < 1:
            raise ValueError(
                f"images must be a batch of frames [frames, height, width, 3], got shape {tuple(images.shape)}."
            )
        if reference is not None and reference.shape != images.shape:
            raise ValueError(
                f"reference has shape {tuple(reference.shape)} but images have {tuple(images.shape)}; "
                "pass a reference with the same frame count and size."
            )
        starts = section_starts(images.shape[0], section_frames, section_unit)
        report = build_report(images, starts, fps, reference, width, panel_height)
        plot = report.image_tensor()
        log.info(f"drift report of {images.shape[0]} frames:\n{report.table}")
        return io.NodeOutput(plot, report.table, ui=ui.PreviewImage(plot, cls=cls))


NODES = [DriftReportNode]
