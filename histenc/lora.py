"""LoRA on a DiT's linear layers, saved in the key layout ComfyUI's stock LoRA loader reads.

The adapters live beside the DiT, not inside it: each targeted linear layer gets a forward hook
that adds ``scale * up(down(x))`` to its output, with ``scale = alpha / rank``. The DiT's own
state-dict keys never change, so the same module can sit inside ComfyUI's ModelPatcher while it
trains, and a saved file is exactly what ``LoraLoaderModelOnly`` expects:

    diffusion_model.<layer>.lora_down.weight   [rank, in]
    diffusion_model.<layer>.lora_up.weight     [out, rank]
    diffusion_model.<layer>.alpha              scalar

Wan's layers go by ComfyUI's own module names (``blocks.3.self_attn.q``), which the loader maps straight to
``<layer>.weight``. HunyuanVideo's go by the released checkpoint's names (``double_blocks.0.img_attn_qkv``,
``single_blocks.1.modulation.linear``), the names ComfyUI's HunyuanVideo key map translates back to its modules
(comfy/lora.py ``model_lora_keys_unet``), so other HunyuanVideo tools read them too. The loader adds
``strength * alpha / rank * up @ down`` to the weight, which is what ``merge`` does here.

Blocks are numbered in the order the forward runs them (histenc.dit.info.dit_blocks): Wan's ``blocks``;
HunyuanVideo's double-stream blocks, then its single-stream blocks (``latter_half`` of a 20 + 40 block model is
single blocks 10..39). A target applies to the blocks that have that layer.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .dit.stored import check_writable
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

# HunyuanVideo's: a double-stream block has an image and a text stream (attention, MLP, modulation each), a
# single-stream block two fused layers (qkv + MLP in, attention out + MLP out) and its modulation.
HUNYUAN_GROUPS = {
    "img_attn": ("img_attn.qkv", "img_attn.proj"),
    "txt_attn": ("txt_attn.qkv", "txt_attn.proj"),
    "img_mlp": ("img_mlp.0", "img_mlp.2"),
    "txt_mlp": ("txt_mlp.0", "txt_mlp.2"),
    "single": ("linear1", "linear2"),
    "modulation": ("img_mod.lin", "txt_mod.lin", "modulation.lin"),
}
HUNYUAN_DOUBLE = HUNYUAN_GROUPS["img_attn"] + HUNYUAN_GROUPS["txt_attn"] + HUNYUAN_GROUPS["img_mlp"]
HUNYUAN_DOUBLE += HUNYUAN_GROUPS["txt_mlp"] + ("img_mod.lin", "txt_mod.lin")
HUNYUAN_SINGLE = ("linear1", "linear2", "modulation.lin")
# ComfyUI's HunyuanVideo module names -> the released checkpoint's, replaced in this order on "<layer>." exactly as
# comfy/lora.py maps a weight key to its LoRA key for HunyuanVideo.
HUNYUAN_FILE_NAMES = (
    ("_mod.lin.", "_mod.linear."),
    ("_attn.qkv.", "_attn_qkv."),
    ("_attn.proj.", "_attn_proj."),
    ("mlp.0.", "mlp.fc1."),
    ("mlp.2.", "mlp.fc2."),
    (".modulation.lin.", ".modulation.linear."),
)


@dataclass(frozen=True)
class Layout:
    """One family's LoRA layout: its block lists (in run order) with their layers, target groups, file names."""

    family: str
    blocks: Mapping[str, tuple[str, ...]]  # block list attribute -> the linear layers every such block has
    groups: Mapping[str, tuple[str, ...]]
    file_names: tuple[tuple[str, str], ...] = ()
    width_layer: str = "blocks.0.self_attn.q"  # a linear layer whose input is the DiT's width
    auto: tuple[str, ...] = ("self_attn", "cross_attn", "ffn")  # the groups 'auto' means: attention and MLP

    @property
    def targets(self) -> tuple[str, ...]:
        out: list[str] = []
        for layers in list(self.groups.values()) + list(self.blocks.values()):
            out.extend(t for t in layers if t not in out)
        return tuple(out)

    def file_key(self, name: str) -> str:
        """A layer's name in a saved file (what ComfyUI's loader maps to ``diffusion_model.<name>.weight``)."""
        key = name + "."
        for module, released in self.file_names:
            key = key.replace(module, released)
        return key[:-1]

    def module_name(self, key: str) -> str:
        key += "."
        for module, released in reversed(self.file_names):
            key = key.replace(released, module)
        return key[:-1]

    def paths(self, dit: nn.Module) -> list[tuple[str, int]]:
        """(block list, index) of every block in run order."""
        return [(attr, i) for attr in self.blocks for i in range(len(getattr(dit, attr)))]


WAN = Layout("wan", {"blocks": ALL_TARGETS}, TARGET_GROUPS)
HUNYUAN = Layout(
    "hunyuan_video",
    {"double_blocks": HUNYUAN_DOUBLE, "single_blocks": HUNYUAN_SINGLE},
    HUNYUAN_GROUPS,
    HUNYUAN_FILE_NAMES,
    "double_blocks.0.img_attn.qkv",
    ("img_attn", "txt_attn", "img_mlp", "txt_mlp", "single"),
)
LAYOUTS = {"WanModel": WAN, "HunyuanVideo": HUNYUAN}
_KEY = re.compile(r"^diffusion_model\.(.+)\.(lora_down\.weight|lora_up\.weight|alpha)$")


def layout_of(dit: nn.Module) -> Layout:
    """The LoRA layout of this DiT's family, or one sentence naming the DiT and the families that have one."""
    name = type(dit).__name__
    if name not in LAYOUTS:
        raise ValueError(
            f"the DiT is a {name}, which has no LoRA layout; load a Wan 2.1 / 2.2 (WanModel) or HunyuanVideo model."
        )
    return LAYOUTS[name]


def lora_family(dit: nn.Module) -> str:
    """ "wan" or "hunyuan_video": the family whose LoRA layout fits this DiT (one sentence if none does)."""
    return layout_of(dit).family


def dit_family(dit: nn.Module) -> str:
    """ "wan" for a Wan DiT, else one sentence: the context trainers (history encoder, video extension) run the
    context adapter's training path, which is Wan's."""
    name = type(dit).__name__
    if name != "WanModel":
        raise ValueError(
            f"the DiT is a {name}; this training runs on Wan 2.1 / 2.2 models (WanModel) only, so load one of those "
            "(HunyuanVideo trains plain LoRAs with Train LoRA)."
        )
    return "wan"


def dit_width(dit: nn.Module) -> int:
    return int(_linear(dit, layout_of(dit).width_layer).in_features)


def parse_targets(spec: str | Sequence[str], layout: Layout = WAN) -> tuple[str, ...]:
    """Group names (Wan: self_attn, cross_attn, ffn; HunyuanVideo: img_attn, txt_attn, img_mlp, txt_mlp, single,
    modulation), 'all', 'auto' (the family's attention and MLP groups) or layer names (self_attn.q, img_attn.qkv,
    linear1) -> layer names."""
    parts = [p.strip() for p in (spec.split(",") if isinstance(spec, str) else spec) if p.strip()]
    parts = [g for p in parts for g in (layout.auto if p == "auto" else (p,))]
    example = ", ".join(list(layout.groups)[:3])
    if not parts:
        raise ValueError(f"LoRA targets are empty; use e.g. '{example}' or 'all'.")
    out: list[str] = []
    for p in parts:
        names = layout.targets if p == "all" else layout.groups.get(p, (p,) if p in layout.targets else None)
        if names is None:
            raise ValueError(
                f"LoRA target {p!r} is not one of this {layout.family} model's; use 'auto', groups "
                f"{sorted(layout.groups)} or 'all', or layers such as {', '.join(layout.targets[:2])}."
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
        self.layout = layout_of(dit)
        self.family, self.width = self.layout.family, dit_width(dit)
        self.rank, self.alpha = int(rank), float(alpha)
        self.targets, self.blocks = lora_layout(dit, targets, blocks)
        self.num_blocks = len(self.layout.paths(dit))
        self.names = layer_names(dit, self.targets, self.blocks)
        g = torch.Generator().manual_seed(int(seed))
        self.layers = nn.ModuleList()
        for name in self.names:
            linear = _linear(dit, name)
            self.layers.append(LoRALayer(linear.in_features, linear.out_features, self.rank, self.alpha, g, dtype))
        self.to(next(dit.parameters()).device)
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
        """Add ``scale * up @ down`` to each targeted weight (the hooks then stay silent).

        Only weights stored as float32 / float16 / bfloat16 take it: in fp8 (scaled or not), GGUF blocks or a
        quantized tensor the update would be rounded away or could not be written, so that is refused in one
        sentence before any weight changes (keep the LoRA attached instead).
        """
        if self.merged == (sign > 0):
            return self
        for name, (module, _) in zip(self.names, self.modules_and_layers()):
            check_writable(module, name)
        for module, layer in self.modules_and_layers():
            w = module.weight
            w.copy_((w.float() + sign * layer.delta_weight().to(w.device)).to(w.dtype))
        self.merged = sign > 0
        return self

    def unmerge(self) -> "LoRA":
        """Subtract what ``merge`` added (exact up to the rounding of the weight's dtype)."""
        return self.merge(-1.0)

    # --- files --------------------------------------------------------------------------------
    def file_key(self, name: str) -> str:
        return PREFIX + self.layout.file_key(name)

    def comfy_state_dict(self) -> dict[str, torch.Tensor]:
        out = {}
        for name, layer in zip(self.names, self.layers):
            key = self.file_key(name)
            out[f"{key}.lora_down.weight"] = layer.down.detach().cpu().contiguous()
            out[f"{key}.lora_up.weight"] = layer.up.detach().cpu().contiguous()
            out[f"{key}.alpha"] = torch.tensor(self.alpha, dtype=torch.float32)
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
                layer.down.copy_(sd[f"{self.file_key(name)}.lora_down.weight"])
                layer.up.copy_(sd[f"{self.file_key(name)}.lora_up.weight"])


def lora_layout(dit: nn.Module, targets, blocks) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """The (layer names per block, run-order block numbers) that ``targets`` and ``blocks`` choose on ``dit``."""
    layout = layout_of(dit)
    return parse_targets(targets, layout), select_blocks(blocks, len(layout.paths(dit)))


def layer_names(dit: nn.Module, targets: Sequence[str], blocks: Sequence[int]) -> list[str]:
    """Module paths of the targeted layers in the chosen blocks (a target applies where the block has it)."""
    layout = layout_of(dit)
    paths = layout.paths(dit)
    names = [f"{attr}.{i}.{t}" for attr, i in (paths[b] for b in blocks) for t in targets if t in layout.blocks[attr]]
    if not names:
        raise ValueError(
            f"LoRA targets {', '.join(targets)} are layers of none of the chosen blocks ({len(blocks)} of this "
            f"{layout.family} model's {len(paths)}); choose other blocks or add targets those blocks have."
        )
    return names


def _is_linear(module) -> bool:
    """A linear layer: torch's, or a host's op class of that name (ComfyUI 0.33's quantized ``Linear`` is not a
    subclass of torch's but computes the same ``x @ W.T + b``)."""
    return isinstance(module, nn.Linear) or type(module).__name__ == "Linear"


def _linear(dit: nn.Module, name: str) -> nn.Module:
    try:
        module = dit.get_submodule(name)
    except AttributeError:
        module = None
    if not _is_linear(module):
        raise ValueError(
            f"LoRA target {name!r} is not a linear layer of this DiT ({type(dit).__name__}); drop it from the targets."
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
    layout = layout_of(dit)
    found = meta.get("width")
    entries = _entries(tensors, path, layout)
    if found is None:  # a file from another tool: read the width off the tensors
        found = next(iter(entries.values()))["in"]
    if int(found) != width:
        raise ValueError(
            f"LoRA file {path.name} was made for a model of width {found} but this model has width {width}; "
            "use a LoRA trained for this model size."
        )
    ranks = {v["rank"] for v in entries.values()}
    alphas = {v["alpha"] for v in entries.values()}
    if len(ranks) != 1 or len(alphas) != 1:
        raise ValueError(
            f"LoRA file {path.name} mixes ranks {sorted(ranks)} or alphas {sorted(alphas)}; "
            "only uniform LoRAs can be loaded for training, load it with LoraLoaderModelOnly instead."
        )
    paths = {f"{attr}.{i}": n for n, (attr, i) in enumerate(layout.paths(dit))}
    chosen: dict[int, set[str]] = {}
    for name in entries:
        block = next((p for p in paths if name.startswith(p + ".")), None)
        target = name[len(block) + 1 :] if block is not None else None
        if target not in layout.targets:
            raise ValueError(
                f"LoRA file {path.name} has a LoRA for {name}, which is not a {layout.family} block layer of this "
                "model; load it with LoraLoaderModelOnly instead."
            )
        chosen.setdefault(paths[block], set()).add(target)
    blocks = sorted(chosen)
    targets = sorted(set().union(*chosen.values()), key=layout.targets.index)
    if set(layer_names(dit, targets, blocks)) != set(entries):
        raise ValueError(
            f"LoRA file {path.name} covers different layers in different blocks; "
            "load it with LoraLoaderModelOnly instead."
        )
    rank, alpha = ranks.pop(), alphas.pop()
    lora = LoRA(dit, rank, float(rank) if alpha is None else alpha, targets, blocks)  # ComfyUI: no alpha = rank
    lora.load_comfy_state_dict(tensors)
    return lora.attach() if attach else lora


def _entries(tensors: Mapping[str, torch.Tensor], path: Path, layout: Layout) -> dict[str, dict]:
    """Layer (module name) -> its rank, input width and alpha, from a file's keys."""
    entries: dict[str, dict] = {}
    for key, value in tensors.items():
        m = _KEY.match(key)
        if not m:
            raise ValueError(
                f"LoRA file {path.name} has the key {key!r}, which is not a {layout.family} block LoRA key; "
                "load it with LoraLoaderModelOnly instead."
            )
        entry = entries.setdefault(layout.module_name(m.group(1)), {"alpha": None})
        if m.group(2) == "alpha":
            entry["alpha"] = float(value)
        elif m.group(2) == "lora_down.weight":
            entry["rank"], entry["in"] = int(value.shape[0]), int(value.shape[1])
    if not entries:
        raise ValueError(f"LoRA file {path.name} has no LoRA tensors; save it again.")
    return entries
