"""The benchmark's stages, in order, each resumable and each stored as JSON in the work folder.

base DiT to a plateau -> g1 -> the no-context floor per seed -> sliding window seed 0 -> g2 -> every other
mode x seed, trained to a plateau and scored. A gate that fails raises ``GateFailed`` after recording itself:
nothing after it runs (the gate bookkeeping is bench/context_proof/stages.Bench's).

Training is teacher forcing: a random training video is cut at a random frame s (shared by a batch), the
true frames before it are the history, frame s is the section, and the DiT with a LoRA (and the mode's
source weights) learns its flow-matching velocity with the cue of frame s as text. The KV cache trains as
histenc.train.extension's causal stage does (every earlier frame a clip, K chosen by cue similarity, their
K/V on the autograd graph); the base DiT learns single frames from the cue alone. Unfinished training lives
in ``ckpt/`` and ``runs/``; finished stages are small JSON files plus the base DiT and the seed-0 weights
of every mode (``weights/``), which later sessions and tests can load.
"""

from __future__ import annotations

import shutil
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from histenc.lora import LoRA
from histenc.train.extension import ExtensionSettings, ExtensionTrainer
from histenc.train.frame_query import DiTTrainer
from histenc.train.loop import logit_normal_timesteps, noisy_pair
from histenc.weights import load_weights, save_weights

from bench.context_proof import queries as qs, stages as cp_stages
from bench.context_proof.stages import GateFailed, slug
from bench.context_proof.training import Plan, advance, base_plan, load_params

from . import score
from .generate import ContextRunner, KVRunner, run_video
from .setup import KV, NO_CONTEXT, TRAINED, WINDOW, make_data, make_dit, make_source

__all__ = ["Bench", "GateFailed", "slug"]

G1_TOLERANCE_DB = 0.5
G2_MIN_GAIN_DB = 3.0
BASE_FORMAT = "histenc.bench_long_memory_base"
WEIGHTS_FORMAT = "histenc.bench_long_memory_mode"
FRAMES_META = {"format": "histenc.bench_long_memory_frames", "version": 1}


def summary(status: dict) -> dict:
    """A finished run's status without its per-step curves (a run past max steps validates every cooldown step)."""
    val = status.get("val") or [float("nan")]
    return {"step": status["step"], "reason": status["reason"], "val_best": min(val), "val_last": val[-1]}


def _timesteps(batch: int, cfg, g: torch.Generator) -> torch.Tensor:
    t = logit_normal_timesteps(batch, g, shift=cfg.shift)
    return torch.where(torch.rand(batch, generator=g) < 1 / qs.PURE_NOISE_EVERY, torch.ones_like(t), t)


def frame_batch(latents: torch.Tensor, cues: torch.Tensor, cfg, g: torch.Generator, batch: int) -> dict:
    """Single frames and their cues, noised: what the base DiT learns (no context)."""
    idx = torch.randint(0, latents.shape[0], (batch,), generator=g)
    s = torch.randint(0, latents.shape[2], (batch,), generator=g)
    x0 = torch.stack([latents[int(i), :, int(f) : int(f) + 1] for i, f in zip(idx, s)])
    t = _timesteps(batch, cfg, g)
    x_t, target = noisy_pair(x0, t, torch.randn(x0.shape, generator=g))
    text = torch.stack([cues[int(i), int(f)] for i, f in zip(idx, s)]).unsqueeze(1)
    return {"x_t": x_t, "timestep": t * 1000, "text": text, "target": target, "times": torch.zeros(1)}


def section_batch(latents: torch.Tensor, cues: torch.Tensor, cfg, g: torch.Generator, batch: int) -> dict:
    """Teacher forcing: videos cut at one shared frame s >= 1; the true frames before it are the history."""
    idx = torch.randint(0, latents.shape[0], (batch,), generator=g)
    s = int(torch.randint(1, latents.shape[2], (1,), generator=g))
    chosen = latents[idx]
    x0 = chosen[:, :, s : s + 1]
    t = _timesteps(batch, cfg, g)
    x_t, target = noisy_pair(x0, t, torch.randn(x0.shape, generator=g))
    return {
        "history": chosen[:, :, :s],
        "history_cues": cues[idx, :s],
        "x_t": x_t,
        "timestep": t * 1000,
        "text": cues[idx, s].unsqueeze(1),
        "target": target,
        "times": torch.zeros(1),
        "s": s,
    }


def kv_items(batch: dict) -> list[dict]:
    """A section batch as ExtensionTrainer's causal examples: every history frame a one-frame clip."""
    s, out = batch["s"], []
    for b in range(batch["x_t"].shape[0]):
        x = batch["x_t"][b : b + 1]
        past = [
            (p, batch["history"][b : b + 1, :, p : p + 1], batch["history_cues"][b, p].view(1, 1, -1)) for p in range(s)
        ]
        out.append(
            {
                "x_t": x,
                "timestep": batch["timestep"][b : b + 1],
                "target": batch["target"][b : b + 1],
                "text": batch["text"][b : b + 1],
                "condition": torch.zeros_like(x),
                "mask": torch.zeros_like(x),
                "weight": torch.ones(1, 1, 1, 1, 1),
                "past": past,
                "section_start": s,
                "time_start": s,
            }
        )
    return out


class Bench(cp_stages.Bench):
    def __init__(self, cfg, work: Path, log=print):  # the parent's data and queries belong to the encoder ranking
        self.cfg, self.work, self.log = cfg, Path(work), log
        self.work.mkdir(parents=True, exist_ok=True)
        self.data = make_data(cfg)
        g = torch.Generator().manual_seed(cfg.data_seed + 11)
        val = (self.data.val, self.data.val_cues, cfg, g)
        self.val_batches = [section_batch(*val, cfg.batch) for _ in range(max(1, cfg.val_examples // cfg.batch))]
        self.base_val = [frame_batch(*val, cfg.base_batch) for _ in range(max(1, cfg.val_examples // cfg.base_batch))]

    # ---- the stages ------------------------------------------------------------------------------
    def run(self, deadline: float) -> bool:
        """Advance every stage that fits before ``deadline``; True when everything is done."""
        steps = [self.base, self.g1, self.floor, lambda d: self.train_eval(WINDOW, 0, d), self.g2]
        steps += [lambda d, m=m, s=s: self.train_eval(m, s, d) for s in self.cfg.seeds for m in TRAINED]
        for step in steps:
            if time.monotonic() >= deadline or not step(deadline):
                return False
        return True

    def base_dit(self):
        dit = make_dit(self.cfg, seed=0)
        tensors, _ = load_weights(self.path("base_dit.safetensors"), {"format": BASE_FORMAT})
        dit.load_state_dict(tensors, strict=True)
        return dit.requires_grad_(False)

    def base(self, deadline) -> bool:
        if self.path("base_dit.safetensors").is_file():
            return True
        cfg, dit = self.cfg, make_dit(self.cfg, seed=0)

        def loss(g):
            b = frame_batch(self.data.train, self.data.train_cues, cfg, g, cfg.base_batch)
            return F.mse_loss(qs.velocity(dit, b["x_t"], b["timestep"], b["text"], b["times"]), b["target"])

        @torch.no_grad()
        def val():
            return statistics.fmean(
                float(F.mse_loss(qs.velocity(dit, b["x_t"], b["timestep"], b["text"], b["times"]), b["target"]))
                for b in self.base_val
            )

        plan = base_plan(cfg)
        identity = {"stage": "base", "config": cfg.to_json()}
        folder = self.path("ckpt", "base")
        params = dict(dit.named_parameters())
        status = advance(folder, params, lambda n: "dit", {"dit": cfg.base_lr}, loss, val, plan, deadline, identity)
        self.log(f"base DiT: step {status['step']}, {status.get('reason') or 'running'}")
        if status["done"]:
            save_weights(
                self.path("base_dit.safetensors"),
                {k: v.detach().contiguous() for k, v in dit.state_dict().items()},
                {"format": BASE_FORMAT, "version": 1, "config": cfg.to_json(), "status": summary(status)},
            )
            self.write("base_status.json", summary(status))
        return status["done"]

    def g1(self, deadline) -> bool:
        """The base DiT learned the data: without context its one-step x0 is within tolerance of the mean frame."""
        if self.recorded("g1"):
            return True
        cfg, data = self.cfg, self.data
        mean = data.train.mean(dim=(0, 2), keepdim=True)  # the mean latent frame
        runner = ContextRunner(self.base_dit(), None, cfg)
        floor, got = [], []
        for i, video in enumerate(data.test):
            p = video.prefix
            floor.append(
                score.pooled_psnr(data.codec.decode(mean.expand_as(video.latents[:, :, p:])), video.pixels[p:])
            )
            pred = data.codec.decode(run_video(runner, cfg, video, i, 0, teacher_forced=True))
            got.append(score.pooled_psnr(pred[p:], video.pixels[p:]))
        floor_db, dit_db = statistics.fmean(floor), statistics.fmean(got)
        failed = []
        if dit_db < floor_db - G1_TOLERANCE_DB:
            failed.append(
                f"the base DiT's one-step x0 without context is {dit_db:.2f} dB, more than {G1_TOLERANCE_DB} dB "
                f"below the mean-frame floor {floor_db:.2f} dB"
            )
        detail = {"floor_psnr": floor_db, "dit_onestep_psnr": dit_db, "base_status": self.read("base_status.json")}
        self.gate("g1", failed, detail)
        return True

    def g2(self, deadline) -> bool:
        """Context reaches the DiT: with the true history the sliding window clearly beats no context."""
        if self.recorded("g2"):
            return True
        window, floor = self.read(f"eval/{slug(WINDOW)}_s0.json"), self.read(f"eval/{slug(NO_CONTEXT)}_s0.json")
        w, f = statistics.fmean(window["psnr_frame_tf"]), statistics.fmean(floor["psnr_frame_tf"])
        failed = []
        if w < f + G2_MIN_GAIN_DB:
            failed.append(
                f"teacher-forced, the sliding window's one-step x0 is {w:.2f} dB, less than {G2_MIN_GAIN_DB} dB "
                f"above no context ({f:.2f} dB)"
            )
        self.gate("g2", failed, {"window_tf_psnr": w, "floor_tf_psnr": f, "min_gain": G2_MIN_GAIN_DB})
        return True

    # ---- modes ---------------------------------------------------------------------------------
    def trainer(self, mode: str, seed: int):
        cfg, dit = self.cfg, self.base_dit()
        lora = LoRA(dit, cfg.rank, cfg.rank, "all", "all", seed=seed).attach()
        if mode == KV:
            ext = ExtensionSettings(
                stage="causal", section_frames=1, given_frames=0, max_clips=cfg.kv_clips, blocks=cfg.kv_blocks
            )
            return ExtensionTrainer(dit, None, lora, ext)
        return DiTTrainer(dit, make_source(cfg, mode, dit, seed), lora)

    @staticmethod
    def loss(trainer, mode: str, batch: dict) -> torch.Tensor:
        if mode == KV:
            items = kv_items(batch)
            return sum(trainer(item) for item in items) / len(items)
        return trainer({k: batch[k] for k in ("history", "x_t", "timestep", "text", "target", "times")})

    def runner(self, trainer, mode: str):
        if mode == KV:
            return KVRunner(trainer.dit, self.cfg)
        return ContextRunner(trainer.dit, trainer.source, self.cfg)

    def train(self, mode: str, seed: int, deadline) -> tuple[dict, object]:
        cfg, trainer = self.cfg, self.trainer(mode, seed)
        params = dict(trainer.named_parameters())
        lrs = {"lora": cfg.lora_lr, "source": cfg.source_lr}

        def loss(g):
            return self.loss(trainer, mode, section_batch(self.data.train, self.data.train_cues, cfg, g, cfg.batch))

        @torch.no_grad()
        def val():
            return statistics.fmean(float(self.loss(trainer, mode, b)) for b in self.val_batches)

        plan = Plan(cfg.max_steps, cfg.eval_every, cfg.patience, cfg.min_gain, 1000 + seed, cooldown=cfg.cooldown)
        identity = {"mode": mode, "seed": seed, "cfg": cfg.to_json()}
        folder = self.path("runs", f"{slug(mode)}_s{seed}")
        group = lambda n: "lora" if n.startswith("lora.") else "source"  # noqa: E731
        status = advance(folder, params, group, lrs, loss, val, plan, deadline, identity)
        self.log(f"{mode} seed {seed}: step {status['step']}, {status.get('reason') or 'running'}")
        if status["done"]:
            load_params(folder, params)
            if seed == 0:
                meta = {"format": WEIGHTS_FORMAT, "version": 1, "mode": mode, "config": cfg.to_json()}
                tensors = {k: v.detach().contiguous() for k, v in params.items()}
                save_weights(self.path("weights", f"{slug(mode)}_s0.safetensors"), tensors, meta)
        return status, trainer.eval()

    def evaluate(self, runner, mode: str, seed: int, deadline) -> dict | None:
        """Every held-out video generated and teacher-forced, one video per piece of work (resumable)."""
        parts = []
        for i, video in enumerate(self.data.test):
            key = f"runs/{slug(mode)}_s{seed}/eval/v{i}.json"
            part = self.read(key)
            if part is None:
                if time.monotonic() >= deadline:
                    return None
                made = self.data.codec.decode(run_video(runner, self.cfg, video, i, seed, teacher_forced=False))
                tf = self.data.codec.decode(run_video(runner, self.cfg, video, i, seed, teacher_forced=True))
                part = score.score_video(made, video)
                part.update({f"{k}_tf": v for k, v in score.score_video(tf, video, with_drift=False).items()})
                if i == 0 and seed == 0:  # the frames the report draws
                    frames = (made.clamp(0, 1) * 255).round().to(torch.uint8).contiguous()
                    save_weights(self.path("frames", f"{slug(mode)}.safetensors"), {"frames": frames}, FRAMES_META)
                self.write(key, part)
            parts.append(part)
        return score.merge(parts)

    def finish(self, mode: str, seed: int, result: dict, status: dict | None) -> None:
        if status is not None:
            result["status"] = summary(status)
        self.write(f"eval/{slug(mode)}_s{seed}.json", result)
        if status is None:  # the floor has no training run: its per-video pieces go with it
            shutil.rmtree(self.path("runs", f"{slug(mode)}_s{seed}"), ignore_errors=True)

    def floor(self, deadline) -> bool:
        """The no-context floor (the base DiT alone) per seed: only the sampling noise differs."""
        for seed in self.cfg.seeds:
            if self.read(f"eval/{slug(NO_CONTEXT)}_s{seed}.json") is None:
                result = self.evaluate(ContextRunner(self.base_dit(), None, self.cfg), NO_CONTEXT, seed, deadline)
                if result is None:
                    return False
                self.finish(NO_CONTEXT, seed, result, None)
        return True

    def train_eval(self, mode: str, seed: int, deadline) -> bool:
        if self.read(f"eval/{slug(mode)}_s{seed}.json") is not None:
            return True
        status, trainer = self.train(mode, seed, deadline)
        if not status["done"]:
            return False
        result = self.evaluate(self.runner(trainer, mode), mode, seed, deadline)
        if result is None:
            return False
        self.finish(mode, seed, result, status)
        return True

    def evals(self) -> dict[str, dict[int, dict]]:
        out: dict[str, dict[int, dict]] = {}
        for mode in (NO_CONTEXT, *TRAINED):
            for seed in self.cfg.seeds:
                r = self.read(f"eval/{slug(mode)}_s{seed}.json")
                if r is not None:
                    out.setdefault(mode, {})[seed] = r
        return out
