"""FramePack's HunyuanVideo checkpoints (diffusers layout) onto native HunyuanVideo plus packing projections.

FramePack publishes its HunyuanVideo transformers (the I2V model and the forward-only F1 model)
with diffusers module names. ComfyUI's HunyuanVideo is built from Flux-style layers with other
names, fused q/k/v projections and, in the final layer, the two modulation halves in the other
order. ``convert`` renames, fuses and reorders every tensor by the table below (written out in
docs/framepack_hunyuan.md), hands FramePack's history patch embedders to the pack's
``FramePackContext`` kernels, keeps the image projection aside for ``ImageProjection`` (which the
loader puts in the native model's ``vision_in`` slot), and refuses a checkpoint with any key it cannot
place, so nothing is silently dropped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping, NamedTuple

import torch

from .packing import FramePackContext, repeated_patch_weights

PROJECTION_SCHEDULE = "td_f16k4f2k2f1k1_g9"  # a schedule using all three of FramePack's kernels
PATCH = (1, 2, 2)
# FramePack's history patch embedders -> FramePackContext projection keys (kernel t, h, w)
PROJECTIONS = {
    "clean_x_embedder.proj": ("k1h2w2", (1, 2, 2)),
    "clean_x_embedder.proj_2x": ("k2h4w4", (2, 4, 4)),
    "clean_x_embedder.proj_4x": ("k4h8w8", (4, 8, 8)),
}
EXTRA_PREFIX = "image_projection."  # SigLIP image embedding -> tokens in front of the text (ImageProjection)
KNOWN_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "transformer.")


@dataclass(frozen=True)
class Rule:
    """One native module filled from one or more diffusers modules (fused along the output axis)."""

    native: str
    sources: tuple[str, ...]
    rms: bool = False  # RMSNorm: diffusers ``weight`` -> native ``scale``, no bias
    swap_halves: bool = False  # (scale, shift) -> (shift, scale)

    def params(self):
        return (("weight", "scale"),) if self.rms else (("weight", "weight"), ("bias", "bias"))


def _r(native: str, *sources: str, **kw) -> Rule:
    return Rule(native, sources, **kw)


TOP_LEVEL = [
    _r("img_in.proj", "x_embedder.proj"),
    _r("time_in.in_layer", "time_text_embed.timestep_embedder.linear_1"),
    _r("time_in.out_layer", "time_text_embed.timestep_embedder.linear_2"),
    _r("guidance_in.in_layer", "time_text_embed.guidance_embedder.linear_1"),
    _r("guidance_in.out_layer", "time_text_embed.guidance_embedder.linear_2"),
    _r("vector_in.in_layer", "time_text_embed.text_embedder.linear_1"),
    _r("vector_in.out_layer", "time_text_embed.text_embedder.linear_2"),
    _r("txt_in.input_embedder", "context_embedder.proj_in"),
    _r("txt_in.t_embedder.in_layer", "context_embedder.time_text_embed.timestep_embedder.linear_1"),
    _r("txt_in.t_embedder.out_layer", "context_embedder.time_text_embed.timestep_embedder.linear_2"),
    _r("txt_in.c_embedder.in_layer", "context_embedder.time_text_embed.text_embedder.linear_1"),
    _r("txt_in.c_embedder.out_layer", "context_embedder.time_text_embed.text_embedder.linear_2"),
    _r("final_layer.linear", "proj_out"),
    _r("final_layer.adaLN_modulation.1", "norm_out.linear", swap_halves=True),
]
REFINER = [
    _r("norm1", "norm1"),
    _r("self_attn.qkv", "attn.to_q", "attn.to_k", "attn.to_v"),
    _r("self_attn.proj", "attn.to_out.0"),
    _r("norm2", "norm2"),
    _r("mlp.0", "ff.net.0.proj"),
    _r("mlp.2", "ff.net.2"),
    _r("adaLN_modulation.1", "norm_out.linear"),  # (gate_msa, gate_mlp) in both
]
DOUBLE = [
    _r("img_mod.lin", "norm1.linear"),  # (shift, scale, gate) x 2 in both
    _r("txt_mod.lin", "norm1_context.linear"),
    _r("img_attn.qkv", "attn.to_q", "attn.to_k", "attn.to_v"),
    _r("img_attn.norm.query_norm", "attn.norm_q", rms=True),
    _r("img_attn.norm.key_norm", "attn.norm_k", rms=True),
    _r("img_attn.proj", "attn.to_out.0"),
    _r("txt_attn.qkv", "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    _r("txt_attn.norm.query_norm", "attn.norm_added_q", rms=True),
    _r("txt_attn.norm.key_norm", "attn.norm_added_k", rms=True),
    _r("txt_attn.proj", "attn.to_add_out"),
    _r("img_mlp.0", "ff.net.0.proj"),
    _r("img_mlp.2", "ff.net.2"),
    _r("txt_mlp.0", "ff_context.net.0.proj"),
    _r("txt_mlp.2", "ff_context.net.2"),
]
SINGLE = [
    _r("linear1", "attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"),
    _r("linear2", "proj_out"),
    _r("norm.query_norm", "attn.norm_q", rms=True),
    _r("norm.key_norm", "attn.norm_k", rms=True),
    _r("modulation.lin", "norm.linear"),  # (shift, scale, gate) in both
]
# (part, diffusers prefix, native prefix, rules); "{i}" is the block index
GROUPS = [
    ("top", "", "", TOP_LEVEL),
    (
        "refiner",
        "context_embedder.token_refiner.refiner_blocks.{i}.",
        "txt_in.individual_token_refiner.blocks.{i}.",
        REFINER,
    ),
    ("double", "transformer_blocks.{i}.", "double_blocks.{i}.", DOUBLE),
    ("single", "single_transformer_blocks.{i}.", "single_blocks.{i}.", SINGLE),
]
REQUIRED = (
    "x_embedder.proj.weight",
    "context_embedder.proj_in.weight",
    "proj_out.weight",
    "norm_out.linear.weight",
    "transformer_blocks.0.norm1.linear.weight",
)


class Converted(NamedTuple):
    native: dict[str, torch.Tensor]  # ComfyUI HunyuanVideo keys, ready for its stock loader
    projections: dict[str, torch.Tensor]  # FramePackContext state dict (projections.<kernel>.weight/bias)
    extras: dict[str, torch.Tensor]  # not native keys: the image projection (``image_projection.up`` / ``.down``)


def mapping_table(double: int = 1, single: int = 1, refiner: int = 2) -> list[tuple[str, tuple[str, ...], str]]:
    """(native key, diffusers keys fused in that order, note) for a model with that many blocks."""
    counts = {"top": 1, "refiner": refiner, "double": double, "single": single}
    rows = []
    for part, src_prefix, dst_prefix, rules in GROUPS:
        for i in range(counts[part]):
            for rule in rules:
                for src_param, dst_param in rule.params():
                    note = (
                        "halves swapped: (scale, shift) -> (shift, scale)"
                        if rule.swap_halves
                        else ("fused along the output axis" if len(rule.sources) > 1 else "")
                    )
                    rows.append(
                        (
                            dst_prefix.format(i=i) + rule.native + "." + dst_param,
                            tuple(src_prefix.format(i=i) + s + "." + src_param for s in rule.sources),
                            note,
                        )
                    )
    return rows


def strip_prefix(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop a wrapper prefix (``model.diffusion_model.`` and the like) that every key shares."""
    for prefix in KNOWN_PREFIXES:
        if sd and all(k.startswith(prefix) for k in sd):
            return {k[len(prefix) :]: v for k, v in sd.items()}
    return dict(sd)


def checkpoint_family(keys) -> str:
    """A short name for the kind of DiT checkpoint these keys come from."""
    keys = set(keys)
    has = lambda *names: all(n in keys for n in names)  # noqa: E731
    if has("x_embedder.proj.weight", "context_embedder.proj_in.weight"):
        packed = any(k.startswith("clean_x_embedder.") for k in keys)
        return "FramePack HunyuanVideo (diffusers)" if packed else "HunyuanVideo (diffusers)"
    if has("patch_embedding.weight") or any(re.match(r"blocks\.\d+\.self_attn\.q\.weight$", k) for k in keys):
        return "Wan 2.1 / 2.2 (native)"
    if has("condition_embedder.time_embedder.linear_1.weight"):
        return "Wan (diffusers)"
    if has("img_in.proj.weight") and any(k.startswith("double_blocks.") for k in keys):
        return "HunyuanVideo (native / original)"
    if has("img_in.weight") and any(k.startswith("double_blocks.") for k in keys):
        return "Flux (native)"
    if has("x_embedder.weight", "context_embedder.weight"):
        return "Flux or SD3 (diffusers)"
    sample = sorted(keys)[0] if keys else "no keys at all"
    return f"unknown (first key {sample!r})"


def _fetch(sd, names: list[str], used: set[str]) -> torch.Tensor | None:
    present = [n for n in names if n in sd]
    if not present:
        return None
    if len(present) != len(names):
        missing = [n for n in names if n not in sd]
        raise ValueError(
            f"checkpoint has {present[0]} but not {missing[0]}, which is fused with it; "
            "the file is incomplete, so download or merge it again."
        )
    used.update(names)
    tensors = [sd[n] for n in names]
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors, dim=0)


def _block_indices(keys, prefix: str) -> list[int]:
    if "{i}" not in prefix:
        return [0]
    pattern = re.compile(re.escape(prefix.split("{i}")[0]) + r"(\d+)\.")
    return sorted({int(m.group(1)) for k in keys if (m := pattern.match(k))})


def _projections(sd, used: set[str]) -> dict[str, torch.Tensor]:
    """FramePack's history embedders as FramePackContext projections, or, where a file has none, FramePack's own
    start for them: ``x_embedder`` with each element repeated over the kernel (``repeated_patch_weights``)."""
    out = {}
    patch_w, patch_b = sd["x_embedder.proj.weight"], sd["x_embedder.proj.bias"]
    for src, (key, size) in PROJECTIONS.items():
        w, b = sd.get(src + ".weight"), sd.get(src + ".bias")
        if w is None or b is None:
            w, b = repeated_patch_weights(patch_w.float(), patch_b.float(), size)
            w, b = w.to(patch_w.dtype), b.to(patch_b.dtype)
        elif tuple(w.shape[2:]) != size or tuple(w.shape[:2]) != tuple(patch_w.shape[:2]):
            raise ValueError(
                f"checkpoint's {src}.weight has shape {tuple(w.shape)} but FramePack's kernel "
                f"{size} at this width needs {(*patch_w.shape[:2], *size)}; this is not a FramePack file."
            )
        used.update((src + ".weight", src + ".bias"))
        out[f"projections.{key}.weight"], out[f"projections.{key}.bias"] = w, b
    return out


def convert(sd: Mapping[str, torch.Tensor], name: str = "checkpoint") -> Converted:
    """FramePack diffusers-layout state dict -> (native HunyuanVideo, packing projections, extras)."""
    sd = strip_prefix(sd)
    family = checkpoint_family(sd)
    if not family.endswith("HunyuanVideo (diffusers)"):
        raise ValueError(
            f"{name} holds a {family} model, not FramePack's HunyuanVideo in diffusers layout; "
            "load native checkpoints with the stock Load Diffusion Model node."
        )
    lacking = [k for k in REQUIRED if k not in sd]
    if lacking:
        raise ValueError(
            f"{name} lacks {lacking[0]} (and {len(lacking) - 1} more required keys); "
            "the file is incomplete, so download or merge it again."
        )
    native, used = {}, set()
    for _, src_prefix, dst_prefix, rules in GROUPS:
        for i in _block_indices(sd, src_prefix):
            src, dst = src_prefix.format(i=i), dst_prefix.format(i=i)
            for rule in rules:
                for src_param, dst_param in rule.params():
                    t = _fetch(sd, [f"{src}{s}.{src_param}" for s in rule.sources], used)
                    if t is None:
                        continue
                    if rule.swap_halves:
                        t = torch.cat(t.chunk(2, dim=0)[::-1], dim=0)
                    native[f"{dst}{rule.native}.{dst_param}"] = t
    projections = _projections(sd, used)
    extras = {k: v for k, v in sd.items() if k.startswith(EXTRA_PREFIX)}
    unmapped = sorted(set(sd) - used - set(extras))
    if unmapped:
        shown = ", ".join(unmapped[:5])
        raise ValueError(
            f"{len(unmapped)} keys of {name} have no place in native HunyuanVideo ({shown}"
            f"{', ...' if len(unmapped) > 5 else ''}); this is not FramePack's HunyuanVideo layout, "
            "so check the file or report the keys."
        )
    return Converted(native, projections, extras)


class ImageProjection(torch.nn.Module):
    """FramePack's image projection: SigLIP features -> hidden tokens (``down(silu(up(x)))``).

    The loader puts it where native HunyuanVideo keeps its image input (``vision_in``), whose forward
    prepends its output to the text tokens with zero rotary ids, as FramePack does. ``linear`` builds the
    two layers (the loader passes the host's casting Linear so the weights follow the model's device).
    """

    def __init__(self, width: int, hidden: int, linear=torch.nn.Linear):
        super().__init__()
        self.up = linear(width, 3 * hidden)
        self.down = linear(3 * hidden, hidden)

    @property
    def width(self) -> int:
        return int(self.up.in_features)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.down(torch.nn.functional.silu(self.up(features)))


def image_projection(extras: Mapping[str, torch.Tensor], linear=torch.nn.Linear, dtype=None) -> ImageProjection | None:
    """The checkpoint's image projection as a module with its weights in ``dtype`` (None: as stored), or None
    when the file has none."""
    weights = {k[len(EXTRA_PREFIX) :]: v for k, v in extras.items() if k.startswith(EXTRA_PREFIX)}
    if not weights:
        return None
    expected = {f"{layer}.{p}" for layer in ("up", "down") for p in ("weight", "bias")}
    if set(weights) != expected:
        raise ValueError(
            f"the checkpoint's image projection has {sorted(weights)} but FramePack's has {sorted(expected)}; "
            "the file is incomplete, so download or merge it again."
        )
    up = weights["up.weight"]
    module = ImageProjection(up.shape[1], weights["down.weight"].shape[0], linear)
    module.load_state_dict({k: v if dtype is None else v.to(dtype) for k, v in weights.items()})
    return module


def projections_pack(projections: Mapping[str, torch.Tensor], schedule: str = PROJECTION_SCHEDULE) -> FramePackContext:
    """A FramePackContext holding the converted projections (float32, on the CPU)."""
    w = projections["projections.k1h2w2.weight"]
    pack = FramePackContext(schedule, w.shape[0], w.shape[1], PATCH)
    pack.load_state_dict({k: v.float() for k, v in projections.items()})
    return pack


@torch.no_grad()
def copy_projections(target: FramePackContext, source: FramePackContext, name: str = "FramePack's projections") -> None:
    """Overwrite every projection ``target`` uses with the trained one of the same kernel in ``source``."""
    if (target.width, target.in_channels, target.patch) != (source.width, source.in_channels, source.patch):
        raise ValueError(
            f"{name} are for width {source.width}, {source.in_channels} channels, patch {source.patch} but "
            f"the pack needs {target.width}, {target.in_channels}, {target.patch}; use the model they came with."
        )
    for key, conv in target.projections.items():
        if key not in source.projections:
            raise ValueError(
                f"schedule '{target.schedule}' uses kernel {key}, which {name} lack (they have "
                f"{', '.join(source.projections)}); use only k1, k2 and k4 kernels."
            )
        conv.load_state_dict(source.projections[key].state_dict())


def shard_paths(path: str) -> list[str]:
    """All shards of a ``name-00001-of-00003.safetensors`` split checkpoint (or just ``path``)."""
    m = re.match(r"^(.*)-(\d+)-of-(\d+)\.safetensors$", path)
    if not m:
        return [path]
    width, total = len(m.group(2)), int(m.group(3))
    return [f"{m.group(1)}-{i:0{width}d}-of-{m.group(3)}.safetensors" for i in range(1, total + 1)]
