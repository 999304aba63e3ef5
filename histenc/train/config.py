"""The JSON config of ``python -m histenc.train``: what to train, on which model and data.

{
  "objective": "frame_query" | "autoregressive" | "extension",
  "out_dir": "runs/encoder", "steps": 1000, "lr": 1e-4, "seed": 0, "checkpoint_every": 50,
  "gradient_checkpointing": false, "device": "auto",
  "model": {"kind": "toy", "dim": 128, "ffn_dim": 256, "num_heads": 1, "num_layers": 2, "text_dim": 4096,
            "weights": null}                            a plain-torch Wan 2.1 DiT (histenc.train.toy_dit)
         | {"kind": "factory", "factory": "package.module:function"}   your function returns a Wan-layout DiT
  "data": {"kind": "procedural", "videos": 8, "seed": 1000, "frames": 48, "size": 32, "objects": 3}
        | {"kind": "cache", "path": "dataset/.histenc_cache",
           "latent_mean": [...16], "latent_std": [...16]}     model space = (latents - mean) / std
  "context": {"kind": "encoder", "rate": "4x4x2", "variant": "full", "hidden": [64, 128, 256, 512],
              "weights": null}                          start from a pretrained encoder file
           | {"kind": "framepack", "schedule": "td_f16k4f4k2f1k1_g9_x_f1k1", "weights": null},
  "codebook": null,                                     a history codebook file: discretised history
  "lora": {"rank": 16, "alpha": 16, "targets": "all", "blocks": "all"} | null,
  "frame_query": {"history_frames": 16, "query_frames": 2, "mask_mean": 0.2, "mask_std": 1.0, "shift": 3.0},
  "autoregressive": {"section_frames": 4, "max_history": 64, "min_history": 2, "shift": 3.0},
  "extension": {"stage": "extension" | "causal", "clip_frames": 8, "max_given": 2, "p_drop": 0.1,
                "section_frames": 4, "given_frames": 1, "max_clips": 5, "blocks": "latter half",
                "tolerance": 0.001, "shift": 3.0, "weights": null}   video extension (context is unused);
                the LoRA's targets / blocks default to the stage's (every layer / K,V of the latter half)
}
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .autoregressive import AutoregressiveSettings
from .extension import ExtensionSettings
from .frame_query import FrameQuerySettings

OBJECTIVES = ("frame_query", "autoregressive", "extension")
MODEL_KINDS = ("toy", "factory")
DATA_KINDS = ("procedural", "cache")
CONTEXT_KINDS = ("encoder", "framepack")


@dataclass
class TrainConfig:
    objective: str
    out_dir: str
    steps: int = 100
    lr: float = 1e-4
    seed: int = 0
    checkpoint_every: int = 50
    gradient_checkpointing: bool = False
    device: str = "auto"
    model: dict = field(default_factory=lambda: {"kind": "toy"})
    data: dict = field(default_factory=lambda: {"kind": "procedural"})
    context: dict = field(default_factory=lambda: {"kind": "encoder"})
    codebook: str | None = None
    lora: dict | None = field(default_factory=lambda: {"rank": 16, "alpha": 16})
    frame_query: dict = field(default_factory=dict)
    autoregressive: dict = field(default_factory=dict)
    extension: dict = field(default_factory=dict)

    def __post_init__(self):
        _choice("objective", self.objective, OBJECTIVES)
        _choice("model.kind", self.model.get("kind"), MODEL_KINDS)
        _choice("data.kind", self.data.get("kind"), DATA_KINDS)
        _choice("context.kind", self.context.get("kind", "encoder"), CONTEXT_KINDS)
        if self.objective == "frame_query" and self.context.get("kind", "encoder") != "encoder":
            raise ValueError("frame-query pretraining trains a history encoder; set context.kind to 'encoder'.")
        if self.model["kind"] == "factory" and ":" not in str(self.model.get("factory", "")):
            raise ValueError(
                f"model.factory is {self.model.get('factory')!r}; write it as package.module:function "
                "(the function returns a Wan-layout DiT module)."
            )
        if self.data["kind"] == "cache" and not self.data.get("path"):
            raise ValueError("data.path is missing; give the folder of a cached dataset (its index.json).")
        self.frame_query_settings()  # validate now, not after the model is loaded
        self.autoregressive_settings()
        self.extension_settings()
        if self.objective == "extension" and self.extension_settings().stage == "causal" and not self.lora:
            raise ValueError("the extension objective's causal stage trains only a LoRA; give a lora entry.")

    def frame_query_settings(self) -> FrameQuerySettings:
        return _build(FrameQuerySettings, self.frame_query, "frame_query")

    def autoregressive_settings(self) -> AutoregressiveSettings:
        return _build(AutoregressiveSettings, self.autoregressive, "autoregressive")

    def extension_settings(self) -> ExtensionSettings:
        return _build(ExtensionSettings, {k: v for k, v in self.extension.items() if k != "weights"}, "extension")

    def identity(self) -> dict[str, Any]:
        """Settings a resumed run must share (TrainSettings.extra): everything but steps and checkpointing."""
        return {
            "objective": self.objective,
            "model": self.model,
            "data": self.data,
            "context": self.context,
            "codebook": self.codebook,
            "lora": self.lora,
            "gradient_checkpointing": self.gradient_checkpointing,
            "frame_query": self.frame_query_settings().to_meta(),
            "autoregressive": self.autoregressive_settings().to_meta(),
            "extension": {**self.extension_settings().to_meta(), "weights": self.extension.get("weights")},
        }


def _choice(name: str, value, options) -> None:
    if value not in options:
        raise ValueError(f"{name} is {value!r}; use one of {', '.join(options)}.")


def _build(cls, values: dict, name: str):
    known = set(cls.__dataclass_fields__)
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(
            f"{name} has the unknown setting {unknown[0]!r}; known settings are {', '.join(sorted(known))}."
        )
    return cls(**values)


def load_config(path: str | Path) -> TrainConfig:
    """Read and check a config file; every problem is one sentence naming the entry."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"training config {path} does not exist; pass the path of a JSON config file.")
    try:
        raw = json.loads(path.read_text())
    except ValueError as err:
        raise ValueError(f"training config {path} is not valid JSON ({err}); fix the file.") from None
    if not isinstance(raw, dict):
        raise ValueError(f"training config {path} must hold a JSON object, not {type(raw).__name__}.")
    known = set(TrainConfig.__dataclass_fields__)
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(
            f"training config entry {unknown[0]!r} is unknown; known entries are {', '.join(sorted(known))}."
        )
    for key in ("objective", "out_dir"):
        if key not in raw:
            raise ValueError(f"training config {path} has no {key!r}; add it (see docs/training.md).")
    return TrainConfig(**raw)
