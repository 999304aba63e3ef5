"""LoRA on a DiT's linear layers, saved in the key layout ComfyUI's stock LoRA loader reads.

The adapters live beside the DiT, not inside it: each targeted ``nn.Linear`` gets a forward hook
that adds ``scale * up(down(x))`` to its output, with ``scale = alpha / rank``. The DiT's own
state-dict keys never change, so the same module can sit inside ComfyUI's ModelPatcher while it
trains, and a saved file is exactly what ``LoraLoaderModelOnly`` expects:

    diffusion_model.blocks.{i}.{target}.lora_down.weight   [rank, in]
    diffusion_model.blocks.{i}.{target}.lora_up.weight     [out, rank]
    diffusion_model.blocks.{i}.{target}.alpha              scalar

ComfyUI maps ``diffusion_model.<module>`` straight to ``diffusion_model.<module>.weight`` and adds
``strength * alpha / rank * up @ down`` to it, which is what ``merge`` does here.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .weights import load_weights, save_weights

LORA_FORMAT = "histenc.lora"
LORA_VERSION = 1
PREFIX = "diffusion_model."

# Wan's linear layers per block, by group; ffn.0 / ffn.2 are the two Linear layers of the MLP.
TARGET_GROUPS = {
    "self_attn": ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o"),
    "cross_attn": ("cross_attn.q", "cross_attn.k", "cross_attn.v", "cross_attn.o"),
    "ffn": ("ffn.0", "ffn.2"),
}
ALL_TARGETS = tuple(t for group in TARGET_GROUPS.values() for t in group)
FAMILIES = {"WanModel": "wan"}
_KEY = re.compile(r"^diffusion_model\.blocks\.(\d+)\.(.+)\.(lora_down\.weight|lora_up\.weight|alpha)$")


def dit_family(dit: nn.Module) -> str:
    name = type(dit).__name__
    if name not in FAMILIES:
        raise ValueError(f"the DiT is a {name}, which has no LoRA layout yet; load a Wan 2.1 / 2.2 model (WanModel).")
    return FAMILIES[name]


def dit_width(dit: nn.Module) -> int:
    return int(dit.blocks[0].self_attn.q.in_features)


def parse_targets(spec: str | Sequence[str]) -> tuple[str, ...]:
    """Group names (self_attn, cross_attn, ffn, all) or layer names (self_attn.q, ffn.0) -> layer names."""
    parts = [p.strip() for p in (spec.split(",") if isinstance(spec, str) else spec) if p.strip()]
    if not parts:
        raise ValueError("LoRA targets are empty; use e.g. 'self_attn,cross_attn,ffn' or 'all'.")
    out: list[str] = []
    for p in parts:
        names = ALL_TARGETS if p == "all" else TARGET_GROUPS.get(p, (p,) if p in ALL_TARGETS else None)
        if names is None:
            raise ValueError(
                f"LoRA target {p!r} is unknown; use groups {sorted(TARGET_GROUPS)} or 'all', "
                f"or layers such as {', '.join(ALL_TARGETS[:2])}."
            )
        out.extend(n for n in names if n not in out)
    return tuple(out)


def select_blocks(spec: str | Sequence[int], num_blocks: int) -> tuple[int, ...]:
    """'all', 'latter_half' (paper 002: LoRA on the second half of the blocks), or explicit indices '0,3,5'."""
    if isinstance(spec, str):
        s = spec.strip().lower().replace(" ", "")
        if s == "all":
            return tuple(range(num_blocks))
        if s in ("latter_half", "latter-half", "second_half"):
            return tuple(range(num_blocks // 2, num_blocks))
        try:
            spec = [int(p) for p in s.split(",") if p]
        except ValueError:
            raise ValueError(
                f"LoRA blocks {spec!r} is not 'all', 'latter_half' or a comma-separated list of block numbers; "
                "write e.g. '0,2,5'."
            ) from None
    blocks = sorted(set(int(b) for b in spec))
    if not blocks:
        raise ValueError("LoRA blocks list is empty; use 'all', 'latter_half' or block numbers like '0,1'.")
    bad = [b for b in blocks if not 0 <= b < num_blocks]
    if bad:
        raise ValueError(f"LoRA block {bad[0]} does not exist; this model has blocks 0..{num_blocks - 1}.")
    return tuple(blocks)


def check_rank_alpha(rank: int, alpha: float) -> None:
    if int(rank) < 1:
        raise ValueError(f"LoRA rank is {rank}; use a rank of 1 or more (e.g. 16).")
    if not float(alpha) > 0:
        raise ValueError(f"LoRA alpha is {alpha}; use an alpha above 0 (e.g. equal to the rank).")


class LoRALayer(nn.Module):
    """down [rank, in] (Kaiming-uniform) and up [out, rank] (zeros): a fresh LoRA changes nothing."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        rank: int,
        alpha: float,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
    ):
        super().__init__()
        self.rank, self.alpha = int(rank), float(alpha)
        bound = 1.0 / math.sqrt(in_features)  # kaiming_uniform(a=sqrt(5)), as nn.Linear and PEFT use
        down = (torch.rand(rank, in_features, generator=generator) * 2 - 1) * bound
        self.down = nn.Parameter(down.to(dtype))
        self.up = nn.Parameter(torch.zeros(out_features, rank, dtype=dtype))
        self.reached = False  # set by the hook: the DiT called this layer as a module since the LoRA was attached

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(x.to(self.down.dtype), self.down), self.up) * self.scale

    def delta_weight(self) -> torch.Tensor:
        return (self.up.float() @ self.down.float()) * self.scale


class LoRA(nn.Module):
    """A set of LoRA layers for one DiT; attach (hooks), merge into / unmerge from its weights, save."""

    def __init__(
        self,
        dit: nn.Module,
        rank: int,
        alpha: float,
        targets: str | Sequence[str] = "all",
        blocks: str | Sequence[int] = "all",
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
    ):
        super().__init__()
        check_rank_alpha(rank, alpha)
        self.family, self.width = dit_family(dit), dit_width(dit)
        self.rank, self.alpha = int(rank), float(alpha)
        self.targets = parse_targets(targets)
        self.blocks = select_blocks(blocks, len(dit.blocks))
        self.num_blocks = len(dit.blocks)
        g = torch.Generator().manual_seed(int(seed))
        self.names: list[str] = []
        self.layers = nn.ModuleList()
        device = next(dit.parameters()).device
        for b in self.blocks:
            for t in self.targets:
                linear = _linear(dit, b, t)
                self.names.append(f"blocks.{b}.{t}")
                self.layers.append(LoRALayer(linear.in_features, linear.out_features, self.rank, self.alpha, g, dtype))
        self.to(device)
        self._dit = [dit]  # a list, so the DiT is not registered as a submodule of the LoRA
        self._hooks: list = []
        self.merged = False

    @property
    def dit(self) -> nn.Module:
        return self._dit[0]

    def modules_and_layers(self):
        for name, layer in zip(self.names, self.layers):
            yield self.dit.get_submodule(name), layer

    # --- hooks ------------------------------------------------------------------------------
    def attach(self) -> "LoRA":
        """Make the DiT's forward include the LoRA (idempotent)."""
        if not self._hooks:
            for module, layer in self.modules_and_layers():
                layer.reached = False
                self._hooks.append(module.register_forward_hook(_hook(layer, self)))
        return self

    def unreached(self) -> list[str]:
        """Targeted layers the DiT has not called as a module since ``attach``: their LoRA would never train.

        A forward that reads a layer's weight itself (a fused kernel) skips the layer's hook.
        """
        return [name for name, layer in zip(self.names, self.layers) if not layer.reached]

    def detach(self) -> "LoRA":
        for h in self._hooks:
            h.remove()
        self._hooks = []
        return self

    # --- merge --------------------------------------------------------------------------------
    @torch.no_grad()
    def merge(self, sign: float = 1.0) -> "LoRA":
        """Add ``scale * up @ down`` to each targeted weight (the hooks then stay silent)."""
        if self.merged == (sign > 0):
            return self
        for module, layer in self.modules_and_layers():
            w = module.weight
            w.copy_((w.float() + sign * layer.delta_weight().to(w.device)).to(w.dtype))
        self.merged = sign > 0
        return self

    def unmerge(self) -> "LoRA":
        """Subtract what ``merge`` added (exact up to the rounding of the weight's dtype)."""
        return self.merge(-1.0)

    # --- files --------------------------------------------------------------------------------
    def comfy_state_dict(self) -> dict[str, torch.Tensor]:
        out = {}
        for name, layer in zip(self.names, self.layers):
            out[f"{PREFIX}{name}.lora_down.weight"] = layer.down.detach().cpu().contiguous()
            out[f"{PREFIX}{name}.lora_up.weight"] = layer.up.detach().cpu().contiguous()
            out[f"{PREFIX}{name}.alpha"] = torch.tensor(self.alpha, dtype=torch.float32)
        return out

    def metadata(self, training: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return {
            "format": LORA_FORMAT,
            "version": LORA_VERSION,
            "family": self.family,
            "width": self.width,
            "rank": self.rank,
            "alpha": self.alpha,
            "targets": list(self.targets),
            "blocks": list(self.blocks),
            "num_blocks": self.num_blocks,
            "training": dict(training or {}),
        }

    def save(self, path: str | os.PathLike, training: Mapping[str, Any] | None = None) -> Path:
        return save_weights(path, self.comfy_state_dict(), self.metadata(training))

    def load_comfy_state_dict(self, sd: Mapping[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for name, layer in zip(self.names, self.layers):
                layer.down.copy_(sd[f"{PREFIX}{name}.lora_down.weight"])
                layer.up.copy_(sd[f"{PREFIX}{name}.lora_up.weight"])


def _linear(dit: nn.Module, block: int, target: str) -> nn.Linear:
    try:
        module = dit.get_submodule(f"blocks.{block}.{target}")
    except AttributeError:
        module = None
    if not isinstance(module, nn.Linear):
        raise ValueError(
            f"LoRA target {target!r} is not a linear layer in block {block} of this DiT; drop it from the targets."
        )
    return module


def _hook(layer: LoRALayer, owner: LoRA):
    def add_lora(module, args, output):
        if owner.merged:
            return output
        layer.reached = True
        return output + layer(args[0]).to(output.dtype)

    return add_lora


def load_lora(path: str | os.PathLike, dit: nn.Module, attach: bool = True) -> LoRA:
    """Rebuild a LoRA from a file for ``dit``; a file made for another width is refused naming both widths."""
    path = Path(path)
    tensors, meta = load_weights(path)
    width = dit_width(dit)
    layout = _layout(tensors, path)
    found = meta.get("width")
    if found is None:  # a file from another tool: read the width off the tensors
        found = next(iter(layout.values()))["in"]
    if int(found) != width:
        raise ValueError(
            f"LoRA file {path.name} was made for a model of width {found} but this model has width {width}; "
            "use a LoRA trained for this model size."
        )
    ranks = {v["rank"] for v in layout.values()}
    alphas = {v["alpha"] for v in layout.values()}
    if len(ranks) != 1 or len(alphas) != 1:
        raise ValueError(
            f"LoRA file {path.name} mixes ranks {sorted(ranks)} or alphas {sorted(alphas)}; "
            "only uniform LoRAs can be loaded for training, load it with LoraLoaderModelOnly instead."
        )
    blocks = sorted({b for b, _ in layout})
    targets = sorted(
        {t for _, t in layout}, key=lambda t: ALL_TARGETS.index(t) if t in ALL_TARGETS else len(ALL_TARGETS)
    )
    expected = {(b, t) for b in blocks for t in targets}
    if expected != set(layout):
        raise ValueError(
            f"LoRA file {path.name} covers different layers in different blocks; "
            "load it with LoraLoaderModelOnly instead."
        )
    rank, alpha = ranks.pop(), alphas.pop()
    lora = LoRA(dit, rank, float(rank) if alpha is None else alpha, targets, blocks)  # ComfyUI: no alpha = rank
    lora.load_comfy_state_dict(tensors)
    return lora.attach() if attach else lora


def _layout(tensors: Mapping[str, torch.Tensor], path: Path) -> dict[tuple[int, str], dict]:
    layout: dict[tuple[int, str], dict] = {}
    for key, value in tensors.items():
        m = _KEY.match(key)
        if not m:
            raise ValueError(
                f"LoRA file {path.name} has the key {key!r}, which is not a Wan block LoRA key; "
                "load it with LoraLoaderModelOnly instead."
            )
        entry = layout.setdefault((int(m.group(1)), m.group(2)), {"alpha": None})
        if m.group(3) == "alpha":
            entry["alpha"] = float(value)
        elif m.group(3) == "lora_down.weight":
            entry["rank"], entry["in"] = int(value.shape[0]), int(value.shape[1])
    if not layout:
        raise ValueError(f"LoRA file {path.name} has no LoRA tensors; save it again.")
    return layout
