"""HunyuanVideo adapter: the stock forward runs with three submodules hooked for one call.

``joint`` is a DIFFUSION_MODEL wrapper (histenc_nodes._common.attach_context adds it to the MODEL). It takes
the live DiT from the executor and reads the payload from ``transformer_options``; without one (or with no
tokens) the executor runs untouched. The native forward has many branches (reference latents, guiding
frames, byT5 and vision tokens, ControlNet, block patches); instead of copying it, the call runs with
forward hooks on three of the model's submodules, removed when it returns:

- ``img_in``: its first call (the noisy section) returns the section tokens followed by the context
  tokens, so every later step (attention mask length, ``img_len``) counts them as image tokens;
- ``pe_embedder``: the rotary phases of the context tokens (box-averaged over their footprint) go right
  after the section's phases. Hosts order the ids differently (older ones image then text, newer ones
  ``cat(txt_ids, img_ids)``), so the section is found among the ids by its own ids (``img_ids``), not by
  its place;
- ``final_layer``: sees only the section tokens.

Context tokens share the section's modulation vector, as FramePack's HunyuanVideo does.

Time origin: text (and image) tokens carry no rotation, so where the video sits on the time axis changes
what the section sees of the prompt. Native HunyuanVideo numbers a clip's frames from t = 0 and FramePack
numbers its slots from its start slot at t = 0 (F1: start frame 0, packed history 1..19, section 20..28).
The adapter does the same: the earliest context time (``positions``, in the contract's section-relative
time) becomes t = 0, so the section's own ids (and a reference latent's) move forward by that much and the
context keeps its place relative to them. A sliding window so placed is the stock forward on the history and
the section concatenated.

Image tokens: FramePack prepends its image projection of SigLIP features to the text. The host's forward
already has that path (``clip_fea`` -> ``vision_in``, prepended with zero ids), which Load FramePack
HunyuanVideo fills with FramePack's projection; its ``extra_conds`` does not pass ``clip_fea`` for this model
class, so the joint passes the ``ImageTokens`` found in ``transformer_options[IMAGE_KEY]``. The host builds
its attention mask from a text-only ``txt_mask``, which no longer fits once those tokens are in front, so
the joint drops the padding the mask marks instead: what FramePack itself does at batch size 1, and the
same attention for every token that is not padding.
"""

from __future__ import annotations

import contextlib
import math

import torch

from ..context import ContextTokens, SectionGrid
from .info import ModelInfo, hunyuan_info
from .payload import PAYLOAD_KEY
from .rope import box_rope
from .stored import dequantised


# Per block list: the LayerNorms the residual stream passes through before the block adds to it in place, and the
# forward arguments (name, position) that are that stream.
RESIDUAL_NORMS = {"double_blocks": ("img_norm1", "img_norm2", "txt_norm1", "txt_norm2"), "single_blocks": ("pre_norm",)}
RESIDUAL_ARGS = {"double_blocks": ("img", "txt"), "single_blocks": ("x",)}


def _copy_input(module, args):
    return (args[0].clone(), *args[1:]) if torch.is_grad_enabled() else None


def _copying(forward, names: tuple[str, ...]):
    """``forward`` called with copies of its residual-stream arguments while gradients are recorded."""

    def run(*args, **kwargs):
        if torch.is_grad_enabled():
            args = tuple(a.clone() if i < len(names) else a for i, a in enumerate(args))
            kwargs = {k: v.clone() if k in names else v for k, v in kwargs.items()}
        return forward(*args, **kwargs)

    return run


@contextlib.contextmanager
def trainable(model):
    """Autograd through the native blocks for the block of code (LoRA training).

    The blocks add to their residual stream in place (``img += ...``, ``x += ...``): to the very tensors they were
    called with, after a LayerNorm saved them for backward, which autograd refuses ("modified by an inplace
    operation"), and which a checkpointed block (gradient checkpointing, block swap) would do to the inputs its
    checkpoint keeps. While gradients are recorded each block works on copies of its residual-stream arguments and
    each of those norms on a copy of its input, so nothing saved is changed afterwards; the forward computes
    exactly the same. Install it before any wrapper of the blocks' forward (checkpointing, block swap).
    """
    handles, patched = [], []
    try:
        for attr, names in RESIDUAL_NORMS.items():
            for block in getattr(model, attr):
                handles += [getattr(block, n).register_forward_pre_hook(_copy_input) for n in names]
                patched.append((block, block.__dict__.get("forward")))
                block.forward = _copying(block.forward, RESIDUAL_ARGS[attr])
        yield model
    finally:
        for h in handles:
            h.remove()
        for block, own in reversed(patched):
            if own is None:
                del block.forward
            else:
                block.forward = own


class HunyuanPatchifier:
    """HunyuanVideo's ``img_in`` as context sources see it (width, channels, patch, device)."""

    def __init__(self, model, device: torch.device, dtype: torch.dtype, info: ModelInfo | None = None):
        self.model = model
        self.info = info or hunyuan_info(model)
        self.width = self.info.width
        self.in_channels = self.info.latent_channels
        self.patch = self.info.patch
        self.device, self.dtype = device, dtype

    def embed_input(self, latents: torch.Tensor) -> torch.Tensor:
        extra = self.info.input_channels - latents.shape[1]
        if extra == 0:
            return latents
        return torch.cat([latents, latents.new_zeros(latents.shape[0], extra, *latents.shape[2:])], dim=1)

    def latent_patch_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        proj = self.model.img_in.proj  # the DiT's numbers, whatever the file stored (histenc.dit.stored)
        w = dequantised(proj, "img_in.proj").cpu()
        b = dequantised(proj, "img_in.proj", "bias").cpu()
        return w[:, : self.in_channels].clone(), b.clone()

    def patchify(self, latents: torch.Tensor) -> torch.Tensor:
        return self.model.img_in(self.embed_input(latents.to(self.device, self.dtype)))

    def rope(self, positions: torch.Tensor, extent: torch.Tensor | None, cells=None) -> torch.Tensor:
        """[1, 1, N, d/2, 2, 2]: HunyuanVideo keeps the head axis before the tokens; ``cells``: the section's grid."""
        ext = None if extent is None else extent.to(self.device)
        return box_rope(self.model.pe_embedder, positions.to(self.device), ext, cells).movedim(2, 1)


class HunyuanContextHooks:
    """One DiT call's hooks: context tokens after the section's, their phases after the section's phases,
    and every image id moved by ``origin`` on the time axis."""

    def __init__(self, model, ctx: ContextTokens, phases: torch.Tensor, section_ids: torch.Tensor, origin=0.0):
        self.model, self.tokens, self.phases = model, ctx.tokens, phases
        self.count = ctx.count
        self.section_ids = section_ids[0]  # [n, 3]: what the stock forward computes for the section's tokens
        self.origin = float(origin)
        self.appended = False
        self.at = None

    def _append(self, module, args, out):
        if self.appended:  # a reference latent also goes through img_in; it gets no context
            return out
        self.appended = True
        tokens = self.tokens
        if tokens.shape[0] != out.shape[0]:
            tokens = tokens.repeat(math.ceil(out.shape[0] / tokens.shape[0]), 1, 1)[: out.shape[0]]
        return torch.cat([out, tokens.to(out.dtype)], dim=1)

    def after_section(self, ids: torch.Tensor) -> int:
        """Where the section's ids end in ``ids`` [B, L, 3], found by value (text ids are all zero).

        The section's last id is unique unless the section is one token at (0, 0, 0), which every text id
        equals; only then does the block layout decide (image before text when the blocks are flipped).
        """
        rows, section = ids[0], self.section_ids.to(ids)
        n = section.shape[0]
        ends = (torch.nonzero((rows == section[-1]).all(dim=-1)).flatten() + 1).tolist()
        ends = [e for e in ends if e >= n and torch.equal(rows[e - n : e], section)]
        if not ends:
            raise ValueError(
                f"the {rows.shape[0]} rotary ids of this ComfyUI's HunyuanVideo forward do not contain the "
                f"section's {n} image ids, so the context has no place; run this model without a history context."
            )
        if len(ends) > 1 and getattr(self.model.double_blocks[0], "flipped_img_txt", False):
            return ends[0]
        return ends[-1]

    def _move(self, module, args):
        """Before the ids become phases: find the section among them, then move every image id by the origin."""
        ids = args[0]
        self.at = self.after_section(ids)
        if not self.origin:
            return None
        image = ids.abs().sum(dim=-1) > 0  # text, byT5 and vision ids are all zero; image ids are not,
        image[:, self.at - self.section_ids.shape[0] : self.at] = True  # but for the section's first, at 0, 0, 0
        moved = ids.clone()
        moved[..., 0] += image.to(ids.dtype) * self.origin
        return (moved, *args[1:])

    def _insert(self, module, args, pe):
        at = self.at  # pe: [B, 1, L, d/2, 2, 2]
        phases = self.phases.to(pe.device, pe.dtype).expand(pe.shape[0], -1, -1, -1, -1, -1)
        return torch.cat([pe[:, :, :at], phases, pe[:, :, at:]], dim=2)

    def _section_only(self, module, args, kwargs):
        if not self.appended:
            return None
        x = args[0] if args else kwargs["x"]
        x = x[:, : x.shape[1] - self.count]
        return ((x, *args[1:]), kwargs) if args else (args, {**kwargs, "x": x})

    @contextlib.contextmanager
    def installed(self):
        m = self.model
        handles = [
            m.img_in.register_forward_hook(self._append),
            m.pe_embedder.register_forward_pre_hook(self._move),
            m.pe_embedder.register_forward_hook(self._insert),
            m.final_layer.register_forward_pre_hook(self._section_only, with_kwargs=True),
        ]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()


def time_origin(positions: torch.Tensor) -> float:
    """How far the section moves forward so the earliest context token sits at t = 0 (0 for none before it)."""
    return max(0.0, -float(positions[:, 0].min())) if positions.shape[0] else 0.0


def context_hooks(model, payload, x):
    """The hooks for one call of ``model`` on section ``x``, or None when the payload gives no tokens."""
    dit = HunyuanPatchifier(model, x.device, x.dtype, payload.info)
    grid = SectionGrid(x.shape[2], x.shape[3], x.shape[4], dit.patch)
    ctx = payload.resolve(dit, grid)
    if ctx.count == 0:
        return None
    origin = time_origin(ctx.positions)
    moved = ctx.positions + ctx.positions.new_tensor([origin, 0.0, 0.0])
    return HunyuanContextHooks(model, ctx, dit.rope(moved, ctx.extent, grid.cells), model.img_ids(x), origin)


IMAGE_KEY = "histenc_image_tokens"  # transformer_options: the ImageTokens the joint passes as ``clip_fea``


class ImageTokens:
    """CLIP-vision features [1, N, C] for the DiT's ``vision_in`` (FramePack's image projection of the start
    image), the same for the prompt and the negative, as FramePack gives both. Shared by every MODEL clone."""

    def __init__(self, features: torch.Tensor):
        if not isinstance(features, torch.Tensor) or features.ndim != 3:
            shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
            raise ValueError(f"image features must be [images, tokens, width], got {shape}; connect CLIPVisionEncode.")
        self.features = features[:1].detach()

    @property
    def width(self) -> int:
        return int(self.features.shape[-1])

    def __deepcopy__(self, memo):
        return self

    def batch(self, n: int, device, dtype) -> torch.Tensor:
        return self.features.to(device=device, dtype=dtype).expand(n, -1, -1)


def without_padding(context: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, None]:
    """The text tokens the mask keeps (every row of the batch must keep the same ones), and no mask."""
    if mask is None:
        return context, None
    keep = mask >= 0 if torch.is_floating_point(mask) else mask != 0  # additive (0 keeps) or 0 / 1
    keep = keep.reshape(keep.shape[0], -1)
    if not bool((keep == keep[:1]).all()):
        raise ValueError(
            f"the {keep.shape[0]} prompts of this batch pad their text differently, which the image tokens cannot "
            "follow; sample them one at a time (batch size 1)."
        )
    return context[:, keep[0].to(context.device)], None


def joint(
    executor,
    x,
    timestep,
    context,
    y=None,
    txt_byt5=None,
    clip_fea=None,
    guidance=None,
    attention_mask=None,
    guiding_frame_index=None,
    ref_latent=None,
    disable_time_r=False,
    control=None,
    transformer_options={},
    **kwargs,
):
    """The DIFFUSION_MODEL wrapper: the live DiT (``executor.class_obj``) runs its stock forward with the hooks."""
    image = transformer_options.get(IMAGE_KEY)
    if image is not None and clip_fea is None:
        if executor.class_obj.vision_in is None:
            raise ValueError(
                "image tokens were given but this HunyuanVideo has no image input (vision_in); load a FramePack "
                "checkpoint with its image projection through Load FramePack HunyuanVideo, or remove the image."
            )
        clip_fea = image.batch(x.shape[0], x.device, x.dtype)
        context, attention_mask = without_padding(context, attention_mask)
    args = (x, timestep, context, y, txt_byt5, clip_fea, guidance, attention_mask, guiding_frame_index)
    args += (ref_latent, disable_time_r, control, transformer_options)
    payload = transformer_options.get(PAYLOAD_KEY)
    hooks = None if payload is None else context_hooks(executor.class_obj, payload, x)
    if hooks is None:
        return executor(*args, **kwargs)
    with hooks.installed():
        return executor(*args, **kwargs)
