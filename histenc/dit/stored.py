"""A DiT layer's weight as the numbers the DiT computes with, whatever form the loader stored it in.

Loaders keep weights as plain float tensors (fp32, fp16, bf16, and fp8 that the host upcasts as it is), as fp8
beside a per-tensor ``scale_weight`` (ComfyUI 0.3.75's "fp8 scaled" layers: weight = fp8 * scale), as the
host's ``QuantizedTensor`` (ComfyUI 0.33 converts the same files into it; its ``dequantize`` is the host's own
decoding) or as ComfyUI-GGUF's ``GGMLTensor`` (plain numbers only for F32 / F16; other types are packed blocks
its layers decode on the fly). What the pack reads from a DiT (the patch embedding that starts the history
encoder and the FramePack projections) must be those numbers, never raw storage, and what it writes into a DiT
(a merged LoRA) must not be rounded away by an 8-bit or block storage: both go through here, and any storage
this cannot read or write is refused in one sentence naming the layer, the storage and what to do.

The host's classes are recognised by name, as the pack recognises its DiT families (histenc.dit.info), so the
core never imports the host.
"""

from __future__ import annotations

import torch
from torch import nn

FLOAT_STORAGE = (torch.float32, torch.float16, torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2)
WRITABLE = (torch.float32, torch.float16, torch.bfloat16)  # a LoRA merged into them survives the rounding
SCALE = "scale_weight"  # 0.3.75's scaled fp8 layers: weight = stored * scale_weight
INPUT_SCALE = "scale_input"  # scales the layer's input (fp8 matmul), not its weight
GGUF_PLAIN = (torch.float32, torch.float16)  # GGUF F32 / F16 tensors hold their numbers as they are


def _companions(module: nn.Module) -> dict[str, torch.Tensor]:
    """Tensors the layer keeps beside its weight and bias (scales of a quantised weight), by name."""
    own = list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False))
    return {n: t for n, t in own if n not in ("weight", "bias") and t is not None}


def stored_as(module: nn.Module, part: str = "weight") -> str:
    """How a layer keeps ``part``, in words: "bfloat16", "float8_e4m3fn with a per-tensor scale", "GGUF Q4_K"..."""
    t = getattr(module, part)
    kind = type(t).__name__
    if kind == "GGMLTensor":
        return f"GGUF {t.tensor_type.name}"
    if kind == "QuantizedTensor":
        return "the host's QuantizedTensor (a quantised format)"
    if type(t) not in (torch.Tensor, nn.Parameter):
        return f"{kind} ({str(t.dtype).split('.')[-1]})"
    dtype = str(t.dtype).split(".")[-1]
    if part == "weight" and SCALE in _companions(module):
        return f"{dtype} with a per-tensor scale"
    return dtype


def _refuse(name: str, module: nn.Module, part: str, why: str, fix: str) -> ValueError:
    return ValueError(f"the DiT's {name}.{part} is stored as {stored_as(module, part)}, {why}; {fix}.")


def dequantised(module: nn.Module, name: str, part: str = "weight") -> torch.Tensor:
    """``module.<part>`` as float32 numbers (a copy on the layer's device): what the layer computes with.

    ``name`` is the layer's path in the DiT, for the sentence that refuses a storage this cannot decode.
    """
    t = getattr(module, part)
    kind = type(t).__name__
    if kind == "QuantizedTensor":
        return t.dequantize().to(torch.float32, copy=True)
    if kind == "GGMLTensor":
        if t.dtype not in GGUF_PLAIN or tuple(t.size()) != tuple(t.shape):
            raise _refuse(
                name,
                module,
                part,
                "packed blocks the pack cannot decode (ComfyUI-GGUF decodes them only inside its own layers)",
                "use a GGUF file that keeps this layer in F16 or F32 (ComfyUI-GGUF's tools/convert.py does for the "
                "patch embedding), or the model's safetensors file",
            )
        return torch.Tensor.as_subclass(t, torch.Tensor).detach().to(torch.float32, copy=True)
    if type(t) not in (torch.Tensor, nn.Parameter) or t.dtype not in FLOAT_STORAGE:
        raise _refuse(
            name,
            module,
            part,
            "a form the pack cannot read back as numbers",
            "load this model from a bf16, fp16, fp8 or fp8-scaled safetensors file or a GGUF file",
        )
    value = t.detach().to(torch.float32, copy=True)
    if part != "weight":
        return value
    extra = _companions(module)
    unknown = sorted(set(extra) - {SCALE, INPUT_SCALE})
    if unknown:
        raise _refuse(
            name,
            module,
            part,
            f"beside {unknown[0]}, a quantisation the pack does not know how to apply",
            "load this model from a bf16, fp16, fp8 or fp8-scaled safetensors file or a GGUF file",
        )
    if SCALE in extra:
        value = value * extra[SCALE].detach().to(value.device, torch.float32)
    return value


def check_writable(module: nn.Module, name: str) -> None:
    """Refuse to add to a weight whose storage would lose a small update (fp8, scaled, GGUF blocks, quantized)."""
    t = module.weight
    if type(t) in (torch.Tensor, nn.Parameter) and t.dtype in WRITABLE and not _companions(module):
        return
    raise _refuse(
        name,
        module,
        "weight",
        "which a merged LoRA would be rounded into (or could not be written to at all)",
        "keep the LoRA attached instead (its hooks add it at the DiT's compute precision) or apply the file with "
        "LoraLoaderModelOnly",
    )
