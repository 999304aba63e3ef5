"""Context mode nodes (sliding window, ...) and the node that applies a context to a MODEL."""

from __future__ import annotations

from comfy_api.latest import io

from ..histenc.context import check_history
from ..histenc.window import SlidingWindow

from ._common import Context, attach_context, history_in_model_space, model_info


class SlidingWindowContext(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="HistEncSlidingWindow",
            display_name="Sliding Window Context",
            category="histenc/context",
            description="The last N clean latent frames of the history, shown to the DiT at full resolution.",
            inputs=[
                io.Int.Input(
                    "frames",
                    default=3,
                    min=1,
                    max=64,
                    tooltip="How many of the most recent latent frames the model sees (1 latent frame = 4 video "
                    "frames for Wan).",
                ),
                Context.Input(
                    "add_to",
                    optional=True,
                    tooltip="Another context to combine with (for example a history encoder); tokens are concatenated.",
                ),
            ],
            outputs=[Context.Output(display_name="context")],
        )

    @classmethod
    def execute(cls, frames, add_to=None) -> io.NodeOutput:
        return io.NodeOutput(list(add_to or []) + [SlidingWindow(frames)])


class ApplyContext(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="HistEncApplyContext",
            display_name="Apply History Context",
            category="histenc/context",
            description="Make a MODEL see a video history through a context mode; use it with any stock sampler.",
            inputs=[
                io.Model.Input(
                    "model", tooltip="A Wan 2.1 / 2.2 model from the stock loaders (LoRAs may already be applied)."
                ),
                Context.Input("context", tooltip="The context mode(s) that summarise the history."),
                io.Latent.Input(
                    "history", tooltip="The video so far, as a LATENT from the same model family and resolution."
                ),
            ],
            outputs=[io.Model.Output(display_name="model")],
        )

    @classmethod
    def execute(cls, model, context, history) -> io.NodeOutput:
        check_history(history["samples"], model_info(model).latent_channels)  # before the host's latent format
        return io.NodeOutput(attach_context(model, context, history_in_model_space(model, history)))


NODES = [SlidingWindowContext, ApplyContext]
