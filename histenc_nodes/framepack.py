"""FramePack nodes: schedule with live validation, packing context, history codebooks, trained projections."""

from __future__ import annotations

import os

import folder_paths
from comfy_api.latest import io, ui

from ..histenc.context import SectionGrid
from ..histenc.framepack.codebook import DiscreteHistory, HistoryCodebook, framepacks
from ..histenc.framepack.importance import ORDERINGS
from ..histenc.framepack.packing import FramePackContext
from ..histenc.framepack.schedule import F1, PAPER_SCHEDULES, Schedule, parse_schedule
from ..histenc.units import check_size, latent_frames, seconds_per_latent_frame

from ._common import (
    NO_FILE,
    PROJECTIONS_FOLDER,
    CODEBOOKS_FOLDER,
    CodebookType,
    Context,
    ScheduleType,
    compute_dtype,
    family,
    files_in,
    model_dit,
    save_path,
)

DEFAULT_SCHEDULE = "td_f16k4f2k2f1k1_g9"


def load_projections(pack: FramePackContext, path: str, dit) -> None:
    """Copy the saved projection of every kernel the pack uses (the saved schedule may differ)."""
    saved = FramePackContext.load(path, dit)
    for key, conv in pack.projections.items():
        if key not in saved.projections:
            raise ValueError(
                f"projections file {os.path.basename(path)} (schedule '{saved.schedule}') has no projection for kernel "
                f"{key}, which schedule '{pack.schedule}' uses; pick projections trained for this schedule or 'none'."
            )
        conv.load_state_dict(saved.projections[key].state_dict())


class FramePackScheduleNode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="HistEncFramePackSchedule",
            display_name="FramePack Schedule",
            category="histenc/framepack",
            description="A FramePack schedule (recent history frames in detail, older ones packed coarser), checked "
            "before queueing, with the number of context tokens it costs at a size and history length.",
            inputs=[
                io.String.Input(
                    "schedule",
                    default=DEFAULT_SCHEDULE,
                    tooltip="Old to new, parts joined by '_': f<frames>k<kernel> packs (k1 = 1x2x2 latent "
                    "pixels, k2 = 2x4x4, k4 = 4x8x8 or k1h2w2), g<frames> the section, x a skip, "
                    "td/ta/tc delete/append/compress the rest, +D discretise the history. Paper "
                    "examples: " + ", ".join(PAPER_SCHEDULES[:5]) + f". '{F1}' is FramePack F1's own layout "
                    "(start image, 16 frames at k4, 2 at k2, 1 at k1, every slot filled), for its released weights.",
                ),
                io.Int.Input("width", default=832, min=16, max=4096, step=16, tooltip="Video width in pixels."),
                io.Int.Input("height", default=480, min=16, max=4096, step=16, tooltip="Video height in pixels."),
                io.Float.Input(
                    "history_seconds",
                    default=60.0,
                    min=0.0,
                    max=36000.0,
                    step=1.0,
                    tooltip="Seconds of video already generated; the context length stops growing once "
                    "the schedule is full.",
                ),
                io.Float.Input(
                    "fps",
                    default=16.0,
                    min=1.0,
                    max=120.0,
                    step=1.0,
                    tooltip="Frames per second (Wan 2.1: 16, Wan 2.2: 24).",
                ),
                io.Int.Input(
                    "spatial_compression",
                    default=8,
                    min=1,
                    max=64,
                    tooltip="Pixels per latent pixel of the VAE: 8 for Wan 2.1, Wan 2.2 A14B and "
                    "HunyuanVideo, 16 for Wan 2.2 TI2V 5B.",
                ),
            ],
            outputs=[
                ScheduleType.Output(display_name="schedule"),
                io.Int.Output(
                    display_name="context_length",
                    tooltip="Context tokens the DiT sees besides the section's own tokens.",
                ),
                io.String.Output(display_name="description"),
            ],
        )

    @classmethod
    def validate_inputs(cls, schedule):
        if not isinstance(schedule, str):
            return True  # linked from another node: parsed when it runs
        try:
            parse_schedule(schedule)
        except ValueError as err:
            return str(err)
        return True

    @classmethod
    def execute(cls, schedule, width, height, history_seconds, fps, spatial_compression) -> io.NodeOutput:
        parsed = parse_schedule(schedule)
        lat_h, lat_w = check_size(width, height, spatial_compression)
        grid = SectionGrid(parsed.generate_frames or 1, lat_h, lat_w)
        frames = latent_frames(history_seconds, fps)
        length = parsed.context_length(grid, frames)
        text = describe(parsed, grid, length, history_seconds, frames, width, height)
        return io.NodeOutput(parsed, length, text, ui=ui.PreviewText(text))


def describe(
    schedule: Schedule, grid: SectionGrid, length: int, seconds: float, frames: int, width: int, height: int
) -> str:
    section = f"the {grid.frames}-frame section" if schedule.generate_frames else "a 1-frame section"
    text = (
        f"{schedule}: {length} context tokens for {seconds:g} s of history ({frames} latent frames of "
        f"{grid.width}x{grid.height}) at {width}x{height}; {section} adds {grid.tokens} tokens "
        f"(total {length + grid.tokens}); sampling order: {schedule.sampling}."
    )
    if schedule.discrete:
        text += " +D: connect a history codebook to the FramePack context."
    if schedule.fixed_slots:
        text += (
            " FramePack F1: the start image fills slot 0 and zero latents the slots the video has no frames for yet, "
            "so every section after the start image sees the same number of tokens; needs a start image."
        )
    return text


class FramePackContextNode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="HistEncFramePackContext",
            display_name="FramePack Context",
            category="histenc/framepack",
            description="Packs the history with a FramePack schedule: the most important frames in full detail, the "
            "rest progressively coarser, so the context stays bounded however long the video gets. Trained weights: "
            "FramePack F1 on HunyuanVideo (Load FramePack HunyuanVideo, schedule framepack_f1) has them; on Wan no "
            "packing weights are published, and untrained projections (the DiT's own patch embedding) are not "
            "expected to help until trained.",
            inputs=[
                io.Model.Input(
                    "model",
                    tooltip="The Wan or HunyuanVideo model the context is for; its patch embedding starts the "
                    "packing projections when no trained ones are chosen.",
                ),
                ScheduleType.Input("schedule", tooltip="From the FramePack Schedule node."),
                io.Combo.Input(
                    "ordering",
                    options=list(ORDERINGS),
                    default="time",
                    tooltip="Which frames count as most important: 'time' the most recent, 'similarity' "
                    "the most similar to the newest frame, 'hybrid' both (weighted by lambda_time).",
                ),
                io.Float.Input(
                    "lambda_time",
                    default=1.0,
                    min=0.0,
                    max=100.0,
                    step=0.05,
                    tooltip="Hybrid ordering only: weight of time proximity against similarity.",
                ),
                io.Float.Input(
                    "fps",
                    default=16.0,
                    min=1.0,
                    max=120.0,
                    step=1.0,
                    tooltip="Frames per second of the video; hybrid ordering measures time gaps in seconds.",
                ),
                io.Combo.Input(
                    "projections",
                    options=files_in(PROJECTIONS_FOLDER),
                    default=NO_FILE,
                    optional=True,
                    tooltip="Trained packing projections from models/framepack_projections; 'none' starts "
                    "from the DiT's own patch embedding.",
                ),
                CodebookType.Input(
                    "codebook",
                    optional=True,
                    tooltip="A history codebook: the history is discretised before packing (needed for +D schedules).",
                ),
                Context.Input(
                    "add_to",
                    optional=True,
                    tooltip="Another context to combine with (for example a sliding window); tokens are concatenated.",
                ),
            ],
            outputs=[Context.Output(display_name="context")],
        )

    @classmethod
    def execute(
        cls, model, schedule, ordering, lambda_time, fps, projections=NO_FILE, codebook=None, add_to=None
    ) -> io.NodeOutput:
        family(model)
        dit = model_dit(model)
        pack = FramePackContext.from_dit(
            dit, schedule, ordering=ordering, lambda_time=lambda_time, seconds_per_frame=seconds_per_latent_frame(fps)
        )
        if projections and projections != NO_FILE:
            load_projections(pack, folder_paths.get_full_path_or_raise(PROJECTIONS_FOLDER, projections), dit)
        pack.to(compute_dtype(model))  # the DiT's own dtype: its bf16 weights lose nothing, half the memory of fp32
        source = pack
        if codebook is not None:
            if codebook.channels != dit.in_channels:
                raise ValueError(
                    f"codebook has {codebook.channels} channels but the model's latents have "
                    f"{dit.in_channels}; fit a codebook on this model family's latents."
                )
            source = DiscreteHistory(pack, codebook)
        elif pack.schedule.discrete:
            raise ValueError(
                f"schedule '{pack.schedule}' discretises the history (+{pack.schedule.discrete}) but no "
                "codebook is connected; connect a history codebook or remove the +D."
            )
        return io.NodeOutput(list(add_to or []) + [source])


class FitHistoryCodebook(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="HistEncFitHistoryCodebook",
            display_name="Fit History Codebook",
            category="histenc/framepack",
            description="K-means over the latent pixels of real videos; snapping the history to it at generation "
            "time makes generated history look like real history and reduces drift.",
            inputs=[
                io.Model.Input(
                    "model",
                    tooltip="The model the codebook is for: its latent format maps the LATENT to "
                    "the space the DiT sees the history in.",
                ),
                io.Latent.Input(
                    "latent",
                    tooltip="A batch of real (not generated) video or image latents of this "
                    "model family; up to 200,000 latent pixels are sampled.",
                ),
                io.Int.Input(
                    "size",
                    default=256,
                    min=1,
                    max=4096,
                    tooltip="Codebook entries K: 128 or 256 are usual; fewer forget more detail and drift less.",
                ),
                io.Int.Input(
                    "seed", default=0, min=0, max=0xFFFFFFFF, tooltip="Seed of the k-means start and pixel sample."
                ),
                io.String.Input(
                    "filename",
                    default="history_codebook",
                    tooltip="Saved as models/history_codebooks/<filename>.safetensors (replaced if present).",
                ),
            ],
            outputs=[CodebookType.Output(display_name="codebook")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, model, latent, size, seed, filename) -> io.NodeOutput:
        samples = latent["samples"]
        if samples.ndim == 4:
            samples = samples.unsqueeze(2)  # image latents: one frame each
        channels = model.model.latent_format.latent_channels
        if samples.ndim != 5 or samples.shape[1] != channels:
            raise ValueError(
                f"latent has shape {tuple(samples.shape)} but this model's latents have {channels} "
                "channels; encode the videos with this model family's VAE."
            )
        path = save_path(CODEBOOKS_FOLDER, filename, "codebook")
        codebook = HistoryCodebook.fit(model.model.process_latent_in(samples.float()).cpu(), k=size, seed=seed)
        codebook.save(path)
        return io.NodeOutput(codebook, ui=ui.PreviewText(f"{codebook.size} entries saved to {path}"))


class LoadHistoryCodebook(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="HistEncLoadHistoryCodebook",
            display_name="Load History Codebook",
            category="histenc/framepack",
            description="A history codebook fitted earlier, for the FramePack context (+D schedules).",
            inputs=[
                io.Combo.Input(
                    "codebook_name",
                    options=folder_paths.get_filename_list(CODEBOOKS_FOLDER),
                    tooltip="A codebook file in models/history_codebooks.",
                ),
            ],
            outputs=[CodebookType.Output(display_name="codebook")],
        )

    @classmethod
    def execute(cls, codebook_name) -> io.NodeOutput:
        return io.NodeOutput(HistoryCodebook.load(folder_paths.get_full_path_or_raise(CODEBOOKS_FOLDER, codebook_name)))


class SaveFramePackProjections(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="HistEncSaveFramePackProjections",
            display_name="Save FramePack Projections",
            category="histenc/framepack",
            description="Saves the packing projections of a FramePack context (after training) so the FramePack "
            "Context node can load them.",
            inputs=[
                Context.Input("context", tooltip="A context holding exactly one FramePack context."),
                io.String.Input(
                    "filename",
                    default="framepack_projections",
                    tooltip="Saved as models/framepack_projections/<filename>.safetensors (replaced if present).",
                ),
            ],
            outputs=[],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, context, filename) -> io.NodeOutput:
        packs = framepacks(context)
        if len(packs) != 1:
            raise ValueError(
                f"context holds {len(packs)} FramePack contexts but saving needs exactly one; "
                "connect the output of a single FramePack Context node."
            )
        path = save_path(PROJECTIONS_FOLDER, filename, "projections")
        packs[0].save(path)
        return io.NodeOutput(ui=ui.PreviewText(f"projections of '{packs[0].schedule}' saved to {path}"))


NODES = [FramePackScheduleNode, FramePackContextNode, FitHistoryCodebook, LoadHistoryCodebook, SaveFramePackProjections]
