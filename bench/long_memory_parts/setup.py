"""What the long-memory benchmark compares, fixed before anything runs: settings, videos, context modes.

Videos (histenc.train.procedural): objects appear, leave and come back with the same colour, shape and
home, drawn per video. ``full`` makes one-minute toy videos: 60 frames at 1 fps, 16x16 pixels, three
objects. ``small`` only proves the machinery (tests); its numbers rank nothing.

Storyboard cue: every frame comes with a one-hot prompt naming which object (or none) is on screen, the
text every mode's DiT sees and the clip KV cache's prompt embedding. It says *which* object comes back and
when, never what it looks like, so drawing a returning object right takes memory; without the cue no mode
could know which object returns when, and a returned region could not be compared with the truth.

Sections are one latent frame each (the exactly invertible ``PixelLatents`` has no temporal compression),
so a section's cue is exact. The start image is the ground truth up to the end of the first round, when
every object has been seen once; only later visits (returns) are scored.

Context modes, all with roughly the same number of context tokens at ``full`` (about 256; the encoder and
FramePack cover the whole history with them, the window and the cache only a few frames): a sliding window,
the history encoder, FramePack packing, and the clip KV cache (K past one-frame clips chosen by cue
similarity, latter half of the blocks), plus the no-context floor (the base DiT alone).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from histenc.context import SectionGrid
from histenc.dit.wan import WanPatchifier
from histenc.encoder.model import HistoryEncoder
from histenc.framepack.packing import FramePackContext
from histenc.train import procedural
from histenc.train.toy_dit import PixelLatents
from histenc.window import SlidingWindow

from bench.context_proof.setup import make_dit as _make_dit


@dataclass(frozen=True)
class LongMemoryConfig:
    name: str = "full"
    size: int = 16  # pixels; latents are size / 2
    frames: int = 60  # per video: 60 s at ``fps``
    fps: float = 1.0
    objects: int = 3
    visit: tuple = (3, 5)  # frames an object stays
    gap: tuple = (1, 3)  # frames between visits (at least 1: frame 0 shows the background alone)
    train_videos: int = 256
    val_videos: int = 8
    test_videos: int = 8
    dim: int = 64
    heads: int = 2
    layers: int = 4
    text_dim: int = 8  # the cue: one-hot of (none, object 0, object 1, ...)
    window: int = 4  # sliding-window frames
    rate: str = "2x2x4"  # history encoder rate H x W x T
    hidden: tuple = (16, 32, 64, 64)
    enc_heads: int = 4
    schedule: str = "td_f48k4h4w4f8k2h2w2f2k1h1w1_g1"  # FramePack: 2 frames at full size, 8 at 2x, 48 at 4x
    kv_clips: int = 4  # clips the KV cache attends to
    kv_blocks: str = "latter half"
    rank: int = 16
    base_batch: int = 16
    base_lr: float = 1e-3
    base_max_steps: int = 4000
    base_patience: int = 5  # base validation every 2 x eval_every steps
    base_cooldown: int = 500
    batch: int = 4
    lora_lr: float = 2e-3  # a 300-step pilot of the window: 3e-3 beat 1e-3 on validation loss; runs are longer
    source_lr: float = 2e-3
    max_steps: int = 2000
    eval_every: int = 100  # validation cadence (steps), also the checkpoint cadence
    patience: int = 3
    cooldown: int = 200
    min_gain: float = 0.01
    val_examples: int = 32
    seeds: tuple = (0, 1, 2)
    sample_steps: int = 6
    shift: float = 3.0
    data_seed: int = 0

    def to_json(self) -> dict:
        return json_ready(asdict(self))


def json_ready(value):
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value


FULL = LongMemoryConfig()
SMALL = LongMemoryConfig(
    name="small",
    size=8,
    frames=20,
    objects=2,
    visit=(2, 3),
    gap=(1, 2),
    train_videos=4,
    val_videos=2,
    test_videos=2,
    dim=32,
    layers=2,
    window=2,
    rate="2x2x2",
    hidden=(8, 8, 16, 16),
    enc_heads=2,
    schedule="td_f8k2h2w2f2k1h1w1_g1",
    kv_clips=2,
    rank=4,
    base_batch=4,
    base_max_steps=4,
    base_patience=1,
    base_cooldown=2,
    batch=2,
    max_steps=4,
    eval_every=2,
    patience=1,
    cooldown=2,
    val_examples=2,
    seeds=(0, 1),
    sample_steps=2,
)
SETTINGS = {"full": FULL, "small": SMALL}

NO_CONTEXT = "no context (floor)"
WINDOW = "sliding window"
ENCODER = "history encoder"
FRAMEPACK = "FramePack"
KV = "clip KV cache"
TRAINED = (WINDOW, ENCODER, FRAMEPACK, KV)  # each gets a LoRA (and its source's weights) trained per seed
MODES = (NO_CONTEXT, *TRAINED)
MEMORY = (ENCODER, FRAMEPACK, KV)  # judged against the sliding window by the verdict


@dataclass
class Video:
    latents: torch.Tensor  # [1, C, T, h, w]
    pixels: torch.Tensor  # [T, H, W, 3]
    cues: torch.Tensor  # [T, text_dim] one-hot
    visible: torch.Tensor  # [T] object index or procedural.NONE
    prefix: int  # frames given as the start image: up to the end of the first round
    returns: list  # (object, first frame, end frame) of every visit after the prefix


@dataclass
class Data:
    codec: PixelLatents
    train: torch.Tensor  # [N, C, T, h, w]
    train_cues: torch.Tensor  # [N, T, text_dim]
    val: torch.Tensor
    val_cues: torch.Tensor
    test: list[Video]


def cues_of(visible: torch.Tensor, text_dim: int) -> torch.Tensor:
    """One-hot cue per frame: slot 0 for no object, slot k + 1 for object k."""
    return torch.nn.functional.one_hot(visible + 1, text_dim).float()


def first_round_end(visits: list, objects: int) -> int:
    """The frame after the first visit of the last object to appear: from there on every visit is a return."""
    ends = {}
    for obj, _, end in visits:
        ends.setdefault(obj, end)
    if len(ends) < objects:
        raise ValueError(f"a video shows only {len(ends)} of its {objects} objects; lengthen it.")
    return max(ends.values())


def make_video(cfg: LongMemoryConfig, seed: int, codec: PixelLatents) -> Video:
    v = procedural.generate(seed, cfg.frames, cfg.size, cfg.objects, tuple(cfg.visit), tuple(cfg.gap))
    visits = v.visits()
    prefix = first_round_end(visits, cfg.objects)
    returns = [visit for visit in visits if visit[1] >= prefix]
    return Video(codec.encode(v.frames), v.frames, cues_of(v.visible, cfg.text_dim), v.visible, prefix, returns)


def make_data(cfg: LongMemoryConfig) -> Data:
    if cfg.gap[0] < 1 or cfg.text_dim < cfg.objects + 1:
        raise ValueError("the benchmark needs gaps of at least 1 frame and a cue slot per object plus one.")
    codec = PixelLatents(16, seed=cfg.data_seed)
    sets = []
    for offset, count in ((1000, cfg.train_videos), (5000, cfg.val_videos), (9000, cfg.test_videos)):
        sets.append([make_video(cfg, cfg.data_seed + offset + i, codec) for i in range(count)])
    train, val, test = sets
    stack = lambda vs: (torch.cat([v.latents for v in vs]), torch.stack([v.cues for v in vs]))  # noqa: E731
    return Data(codec, *stack(train), *stack(val), test)


def make_dit(cfg: LongMemoryConfig, seed: int = 0):
    return _make_dit(cfg, seed)


def patchifier(dit) -> WanPatchifier:
    return WanPatchifier(dit, torch.device("cpu"), torch.float32)


def section_grid(cfg: LongMemoryConfig) -> SectionGrid:
    return SectionGrid(1, cfg.size // 2, cfg.size // 2, (1, 1, 1))


def make_source(cfg: LongMemoryConfig, mode: str, dit, seed: int):
    """The context source of ``mode`` (fresh, seeded), or None for the no-context floor and the KV cache, which
    reaches the DiT through its attention instead of through context tokens."""
    if mode == WINDOW:
        return SlidingWindow(cfg.window)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        if mode == ENCODER:
            enc = HistoryEncoder.from_dit(patchifier(dit), rate=cfg.rate, hidden=tuple(cfg.hidden), heads=cfg.enc_heads)
            enc.chunk_groups = 0
            return enc
        if mode == FRAMEPACK:
            return FramePackContext.from_dit(patchifier(dit), cfg.schedule)
    return None


def token_count(cfg: LongMemoryConfig, mode: str, dit=None) -> int:
    """Context tokens (the KV cache: cached keys per cache block) a section sees with the longest history."""
    grid, history = section_grid(cfg), cfg.frames - 1
    if mode == NO_CONTEXT:
        return 0
    if mode == KV:
        return min(cfg.kv_clips, history) * grid.tokens
    dit = dit if dit is not None else make_dit(cfg)
    return make_source(cfg, mode, dit, 0).tokens_for(grid, history)
