"""One training run, the same for every caller: build and attach the LoRA, run the objective in the
shared loop, detach the LoRA whatever happens, save the files.

The Train LoRA, Pretrain History Encoder, Finetune Autoregressive and Finetune Video Extension
nodes and ``python -m histenc.train`` all call ``run_training``; they differ only in how they get
the DiT and the data and in where the files go. An objective says what trains besides the LoRA
and how that module is saved; the loop (histenc.train.loop) owns resuming and checkpoints.

    job = run_training(dit, FrameQueryObjective(encoder, clips, fq), LoRASpec(rank=16), settings,
                       "runs/enc", lora_file="runs/enc/lora.safetensors",
                       module_file="runs/enc/history_encoder.safetensors",
                       progress=lambda step, steps, loss: ..., cancelled=lambda: False)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from ..encoder.io import save_encoder
from ..encoder.model import HistoryEncoder
from ..lora import LoRA, check_rank_alpha, lora_layout
from .autoregressive import AutoregressiveSettings, finetune_autoregressive
from .extension import ExtensionSettings, finetune_extension
from .frame_query import Clip, FrameQuerySettings, pretrain_history_encoder, trainable_module
from .loop import TrainResult, TrainSettings
from .lora_finetune import finetune_lora


class TrainingCancelled(Exception):
    """The cancel check asked to stop; the loop has checkpointed the last completed step."""


@dataclass(frozen=True)
class LoRASpec:
    """The LoRA a run trains; ``alpha`` None means alpha = rank (the update is scaled by alpha / rank)."""

    rank: int
    alpha: float | None = None
    targets: str | Sequence[str] = "all"
    blocks: str | Sequence[int] = "all"
    seed: int = 0

    def __post_init__(self):
        check_rank_alpha(int(self.rank), self.scale_alpha)

    @property
    def scale_alpha(self) -> float:
        return float(self.rank if self.alpha is None else self.alpha)

    def layout(self, dit) -> tuple[tuple[str, ...], tuple[int, ...]]:
        """The (targets, blocks) this spec resolves to on ``dit``, for the settings a resume must match."""
        return lora_layout(dit, self.targets, self.blocks)

    def build(self, dit) -> LoRA:
        return LoRA(dit, int(self.rank), self.scale_alpha, self.targets, self.blocks, int(self.seed))


# --- objectives ----------------------------------------------------------------------------------
class Objective:
    """What a run trains besides the LoRA, on which data; ``module`` is saved to the run's module file."""

    stem = "module"  # the module file's name in a CLI output folder

    @property
    def module(self) -> nn.Module | None:
        return None

    def fit(self, dit, lora: LoRA | None, settings: TrainSettings, out_dir, **loop) -> TrainResult:
        raise NotImplementedError

    def save(self, path: Path, record: Mapping[str, Any]) -> Path:
        raise NotImplementedError


@dataclass
class PlainLoRAObjective(Objective):
    """A style / character LoRA on a cached dataset (histenc.train.lora_finetune)."""

    dataset: Any
    to_model_space: Callable[[torch.Tensor], torch.Tensor] = lambda x: x
    shift: float = 3.0

    def fit(self, dit, lora, settings, out_dir, **loop) -> TrainResult:
        if lora is None:
            raise ValueError("plain LoRA training trains only the LoRA; give a LoRA rank of 1 or more.")
        return finetune_lora(dit, lora, self.dataset, settings, out_dir, self.to_model_space, self.shift, **loop)


@dataclass
class _SourceObjective(Objective):
    """An objective that trains a context source (history encoder or FramePack projections) with the LoRA."""

    source: Any
    clips: Sequence[Clip]
    clean_context: bool | None = field(default=None, kw_only=True)  # None: the DiT's own timestep layout
    family: str | None = field(default=None, kw_only=True)  # recorded in a history encoder's file (wan2.1, ...)

    @property
    def module(self) -> nn.Module | None:
        return trainable_module(self.source)

    @property
    def stem(self) -> str:
        return "history_encoder" if isinstance(self.module, HistoryEncoder) else "framepack"

    def save(self, path: Path, record: Mapping[str, Any]) -> Path:
        inner = self.module.to("cpu")
        if isinstance(inner, HistoryEncoder):
            return save_encoder(path, inner, family=self.family)
        inner.save(path)
        return Path(path)


@dataclass
class FrameQueryObjective(_SourceObjective):
    """Frame-query pretraining of a history encoder (paper 001, Eq. 4)."""

    settings: FrameQuerySettings = field(default_factory=FrameQuerySettings)

    def fit(self, dit, lora, settings, out_dir, **loop) -> TrainResult:
        return pretrain_history_encoder(
            dit,
            self.source,
            self.clips,
            settings,
            out_dir,
            self.settings,
            lora=lora,
            clean_context=self.clean_context,
            **loop,
        )


@dataclass
class AutoregressiveObjective(_SourceObjective):
    """Next-section prediction from the encoded history (paper 001, Eq. 6)."""

    settings: AutoregressiveSettings = field(default_factory=AutoregressiveSettings)

    def fit(self, dit, lora, settings, out_dir, **loop) -> TrainResult:
        return finetune_autoregressive(
            dit,
            self.source,
            self.clips,
            settings,
            out_dir,
            self.settings,
            lora=lora,
            clean_context=self.clean_context,
            **loop,
        )


@dataclass
class ExtensionObjective(Objective):
    """The video-extension stages (paper 002); the projection is saved only by the stage that trains it."""

    projection: Any  # ExtensionProjection, or None for a causal stage without one
    clips: Sequence[Clip]
    settings: ExtensionSettings = field(default_factory=ExtensionSettings)
    stem = "extension"

    @property
    def module(self) -> nn.Module | None:
        return self.projection if self.settings.stage == "extension" else None

    def fit(self, dit, lora, settings, out_dir, **loop) -> TrainResult:
        return finetune_extension(dit, self.projection, self.clips, settings, out_dir, self.settings, lora=lora, **loop)

    def save(self, path: Path, record: Mapping[str, Any]) -> Path:
        from ..extension import save_extension

        return save_extension(path, self.projection.to("cpu"), "wan", dict(record))


# --- the run ---------------------------------------------------------------------------------------
@dataclass
class TrainOutput:
    """The loop's result, the trained LoRA (detached), the weight files written (None: not written) and what became
    of the resumable checkpoint (its size, and whether it was kept)."""

    result: TrainResult
    lora: LoRA | None
    lora_file: Path | None
    module_file: Path | None
    checkpoint_bytes: int = 0
    checkpoint_kept: bool = True

    @property
    def files(self) -> list[Path]:
        return [p for p in (self.module_file, self.lora_file) if p is not None]

    def summary(self) -> str:
        """What the run did and left behind, in a few lines for the user (a node shows it)."""
        r = self.result
        loss = f"{r.losses[-1]:.4f}" if r.losses else "none"
        resumed = f" (resumed from step {r.resumed_from})" if r.resumed_from else ""
        size = f"{self.checkpoint_bytes / 2**20:.1f} MB"
        state = (
            f"training checkpoint kept: {r.checkpoint} ({size}), to resume or extend this run; delete it when done"
            if self.checkpoint_kept
            else f"training checkpoint removed ({size} freed); re-running starts from step 0"
        )
        return "\n".join(
            [f"trained {r.step} steps{resumed}, last loss {loss}"]
            + [f"wrote {p}" for p in self.files]
            + [f"loss curve: {r.csv} and {r.png}", state]
        )


def default_record(settings: TrainSettings, result: TrainResult) -> dict[str, Any]:
    """What a weight file records about its training: the settings a resume must match and the steps run."""
    return {**settings.identity(), "steps": result.step}


def check_reached(adapter: LoRA) -> None:
    """After the first step: every targeted layer ran through its module call, so its LoRA trains."""
    missed = adapter.unreached()
    if missed:
        more = f" and {len(missed) - 1} more" if len(missed) > 1 else ""
        raise ValueError(
            f"the LoRA targets include {missed[0]}{more}, which this DiT's forward never called as a layer, so "
            "their LoRA would not train; drop those layers from the LoRA targets."
        )


def run_training(
    dit,
    objective: Objective,
    lora: LoRASpec | None,
    settings: TrainSettings,
    out_dir: str | os.PathLike,
    *,
    progress: Callable[[int, int, float], None] | None = None,
    cancelled: Callable[[], bool | None] | None = None,
    lora_file: str | os.PathLike | None = None,
    module_file: str | os.PathLike | None = None,
    record: Callable[[TrainResult], Mapping[str, Any]] | None = None,
    gradient_checkpointing: bool = False,
    wrap: Callable[[nn.Module], nn.Module] | None = None,
    rank: int = 0,
    keep_checkpoint: bool = True,
) -> TrainOutput:
    """Train ``objective`` (and a new LoRA from ``lora``) on ``dit``, resuming from ``out_dir``; save the files.

    ``progress(step, steps, loss)`` runs after every step, then ``cancelled()``: it may raise its own
    exception (ComfyUI's interrupt) or return True to stop with ``TrainingCancelled``; either way the
    last completed step is checkpointed first. After the first step, a targeted layer the DiT never called
    (a fused kernel reading its weight directly) stops the run in one sentence rather than train nothing.
    The LoRA is detached from ``dit`` even when training fails. Files are written only after a completed
    run: the objective's module to ``module_file`` (when it has one) and the LoRA to ``lora_file``, each
    with ``record(result)`` (default: the settings' identity and the steps run). ``keep_checkpoint`` False removes
    the resumable checkpoint (parameters and optimizer state) once those files are written; an interrupted or
    failed run always keeps it. ``wrap`` / ``rank`` are DistributedDataParallel's.
    """
    adapter = lora.build(dit) if lora is not None else None
    first = [True]

    def on_step(step: int, loss: float) -> None:
        if first[0] and adapter is not None:
            first[0] = False
            check_reached(adapter)
        if progress is not None:
            progress(step, settings.steps, loss)
        if cancelled is not None and cancelled():
            raise TrainingCancelled(
                f"training was cancelled after step {step} of {settings.steps}; run it again "
                f"with the same settings to resume from the checkpoint in {out_dir}."
            )

    loop: dict[str, Any] = {"gradient_checkpointing": gradient_checkpointing, "on_step": on_step}
    if wrap is not None or rank:
        loop.update(wrap=wrap, rank=rank)
    if adapter is not None:
        adapter.attach()
    try:
        result = objective.fit(dit, adapter, settings, out_dir, **loop)
    finally:
        if adapter is not None:
            adapter.detach()
    meta = dict(record(result) if record is not None else default_record(settings, result))
    written_module = None
    if module_file is not None and objective.module is not None:
        written_module = objective.save(Path(module_file), meta)
    written_lora = adapter.save(lora_file, training=meta) if adapter is not None and lora_file is not None else None
    checkpoint = Path(result.checkpoint)
    size = checkpoint.stat().st_size if checkpoint.is_file() else 0
    if not keep_checkpoint:
        checkpoint.unlink(missing_ok=True)
    return TrainOutput(result, adapter, written_lora, written_module, size, keep_checkpoint)
