"""What a MODEL is, as far as the frames it makes: a fingerprint for resumable jobs, and the LoRA shape check.

A resumed job must be refused when anything that changes its frames changed. The class name alone lets
another checkpoint of the same class, another ModelSamplingSD3 shift or another LoRA strength through, so
the fingerprint covers:

- the weights: every diffusion-model tensor's name, shape and dtype, and bytes from its start, middle and
  end (a few KB each, so a 14B model is fingerprinted in well under a second and lazily mapped weights are
  barely touched). The weights are the ones as loaded, never weights a loaded model carries with LoRAs merged
  in;
- the model sampling: its class, plain numbers (shift, multiplier), sigma range and table;
- the patches (LoRAs and merges): how many keys, their strengths and a hash of the patch tensors;
- the object patches, wrappers and model options by name (ComfyUI's attention and CFG patches), leaving
  out the pack's own block swap, which moves weights but does not change them.

The LoRA shape check reads the same patches: a LoRA made for another width is only logged by the host,
which then samples without it, so the sampler refuses it before sampling.
"""

from __future__ import annotations

import hashlib
import itertools
import math

import torch
from comfy.weight_adapter import LoRAAdapter
from torch.utils._python_dispatch import is_traceable_wrapper_subclass

from ._common import BLOCK_SWAP_KEY

SAMPLE_ELEMENTS = 512  # per part: the start, the middle and the end of every tensor
WEIGHTS_PREFIX = "diffusion_model."


def stored(tensor: torch.Tensor) -> list[torch.Tensor]:
    """The plain tensors ``tensor`` is stored as: itself (a GGUF tensor: its raw blocks), or the inner data and
    scales of a quantised wrapper tensor (newer ComfyUI's fp8 / fp4), read through torch's flatten protocol, which
    never dequantises."""
    if is_traceable_wrapper_subclass(tensor):
        names, _ = tensor.__tensor_flatten__()
        return [part for name in names for part in stored(getattr(tensor, name))]
    return [tensor.detach().as_subclass(torch.Tensor)]


def tensor_bytes(tensor: torch.Tensor) -> bytes:
    """Name-free bytes of a tensor: the first, middle and last ``SAMPLE_ELEMENTS`` elements of what it is stored
    as, read on whatever device it is."""
    out = []
    for part in stored(tensor):
        flat = part.reshape(-1)
        n, count = SAMPLE_ELEMENTS, flat.numel()
        if count > 3 * n:
            flat = torch.cat([flat[:n], flat[count // 2 : count // 2 + n], flat[-n:]])
        out.append(flat.to("cpu").contiguous().view(torch.uint8).numpy().tobytes())
    return b"".join(out)


def _hash_tensor(h, tensor: torch.Tensor) -> None:
    h.update(f"{tuple(tensor.shape)}|{tensor.dtype}|".encode())
    h.update(tensor_bytes(tensor))


def unpatched_weights(model) -> dict[str, torch.Tensor]:
    """The diffusion model's tensors as loaded, read from the modules (a GGUF layer's state dict holds only
    placeholders). ComfyUI merges LoRAs into the weights of a loaded MODEL in place and keeps the originals in
    ``backup`` (``hook_backup`` for hooked patches): those are read instead."""
    tensors = itertools.chain(model.model.named_parameters(), model.model.named_buffers())
    weights = {name: t for name, t in tensors if name.startswith(WEIGHTS_PREFIX)}
    for key, saved in model.backup.items():
        if key in weights:
            weights[key] = saved.weight
    for key, saved in model.hook_backup.items():
        if key in weights:
            weights[key] = saved[0]
    return weights


def weights_fingerprint(model) -> str:
    """16 hex digits over every diffusion-model weight (unpatched): name, shape, dtype and sampled bytes."""
    h = hashlib.sha256()
    for key, weight in sorted(unpatched_weights(model).items()):
        h.update(key.encode())
        _hash_tensor(h, weight)
    return h.hexdigest()[:16]


def _plain_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def sampling_fingerprint(model) -> dict:
    """The model sampling's class, its plain numbers (shift, multiplier), sigma range and a hash of its tables."""
    sampling = model.get_model_object("model_sampling")
    bases = [c.__name__ for c in type(sampling).__mro__[1:] if c.__module__.startswith("comfy.")]
    numbers = {k: float(v) for k, v in sorted(vars(sampling).items()) if _plain_number(v) and not k.startswith("_")}
    h = hashlib.sha256()
    for name, tensor in sorted(sampling.state_dict().items()):
        h.update(name.encode())
        _hash_tensor(h, tensor)
    return {
        "class": "+".join(bases) or type(sampling).__name__,
        **numbers,
        "sigma range": [round(float(sampling.sigma_min), 6), round(float(sampling.sigma_max), 6)],
        "tables": h.hexdigest()[:16],
    }


def _walk(h, value, depth: int = 0) -> None:
    """Hash a patch (tensors, numbers, nested tuples, weight adapters) by content."""
    if depth > 8:
        return
    if isinstance(value, torch.Tensor):
        _hash_tensor(h, value)
    elif isinstance(value, (list, tuple)):
        h.update(f"[{len(value)}".encode())
        for item in value:
            _walk(h, item, depth + 1)
    elif isinstance(value, dict):
        for key in sorted(value, key=str):
            h.update(str(key).encode())
            _walk(h, value[key], depth + 1)
    elif value is None or isinstance(value, (str, int, float, bool)):
        h.update(repr(value).encode())
    else:  # a weight adapter (LoRAAdapter...): its kind and its tensors
        h.update(type(value).__name__.encode())
        _walk(h, vars(value).get("weights"), depth + 1)


def patches_fingerprint(model) -> dict:
    """LoRAs and merges on the MODEL: keys patched, every (strength, model strength) pair, the patch content."""
    h = hashlib.sha256()
    strengths = set()
    for key in sorted(model.patches):
        h.update(key.encode())
        for strength, patch, strength_model, offset, function in model.patches[key]:
            strengths.add((float(strength), float(strength_model)))
            h.update(f"{offset}|{_name(function)}".encode())
            _walk(h, patch)
    return {
        "keys": len(model.patches),
        "strengths": [list(s) for s in sorted(strengths)],
        "content": h.hexdigest()[:16] if model.patches else None,
    }


def _name(value, depth: int = 0):
    """A JSON description of a model option: plain values as they are, functions and objects by name."""
    if value is None or isinstance(value, (str, bool)) or _plain_number(value):
        return value
    if depth > 4:
        return type(value).__name__
    if isinstance(value, dict):
        return {str(k): _name(v, depth + 1) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_name(v, depth + 1) for v in value]
    if isinstance(value, torch.Tensor):
        h = hashlib.sha256()
        _hash_tensor(h, value)
        return h.hexdigest()[:16]
    return getattr(value, "__qualname__", None) or type(value).__name__


def options_fingerprint(model) -> dict:
    """Object patches, wrappers, callbacks and model options by name; the pack's block swap is left out."""
    swapped = model.get_attachment(BLOCK_SWAP_KEY + "_count") is not None
    objects = {
        name: _name(value)
        for name, value in sorted(model.object_patches.items())
        if not (swapped and name.endswith(".forward"))  # block swap's prefetching block forwards
    }

    def named(table):
        return {str(kind): sorted(k for k in keys if k != BLOCK_SWAP_KEY) for kind, keys in sorted(table.items())}

    return {
        "object patches": objects,
        "wrappers": {k: v for k, v in named(model.wrappers).items() if v},
        "callbacks": {k: v for k, v in named(model.callbacks).items() if v},
        "options": _name(model.model_options),
    }


def model_fingerprint(model, name: str = "model") -> dict:
    """The job settings that pin down ``model`` (the sampler's input ``name``)."""
    return {
        name: type(model.model).__name__,
        f"{name} weights": weights_fingerprint(model),
        f"{name} sampling": sampling_fingerprint(model),
        f"{name} patches": patches_fingerprint(model),
        f"{name} options": options_fingerprint(model),
    }


def lora_shapes(patch) -> tuple[tuple[int, ...], str] | None:
    """(out, in) a LoRA multiplies out to, or a diff's shape, and its kind; None for patches this check does not
    read (LoHa, LoKr, LoCon with a mid weight, reshaped LoRAs)."""
    if isinstance(patch, LoRAAdapter):
        up, down, _alpha, mid, _dora, reshape = patch.weights
        if mid is not None or reshape is not None:
            return None
        return (int(up.shape[0]), int(down.flatten(start_dim=1).shape[1])), "LoRA"
    if isinstance(patch, tuple) and len(patch) == 2 and patch[0] == "diff" and isinstance(patch[1][0], torch.Tensor):
        return tuple(patch[1][0].shape), "diff"
    return None


def check_lora_shapes(model, input_name: str = "model") -> None:
    """Refuse, in one sentence, a patch (LoRA, diff) whose shape does not fit the weight it patches."""
    weights = unpatched_weights(model)
    for key in sorted(k for k in model.patches if k in weights):
        weight = weights[key]
        for patch in model.patches[key]:
            found = lora_shapes(patch[1])
            if found is None:
                continue
            shape, kind = found
            shape_of = tuple(int(n) for n in weight.shape)  # a GGUF tensor's logical shape
            wanted = shape_of if kind == "diff" else (shape_of[0], math.prod(shape_of[1:]))
            if shape != wanted:
                raise ValueError(
                    f"a LoRA on {input_name} patches {key} with a {kind} of shape {list(shape)} but that weight is "
                    f"{list(shape_of)} (the LoRA was made for another model or width), so ComfyUI would sample "
                    "without it; load the LoRA made for this model, or remove it."
                )
