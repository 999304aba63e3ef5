"""The benchmark's stages, in order, each resumable and each stored as JSON in the work folder.

g0 (closed forms) -> base DiT to a plateau -> g1 -> raw-frames control: sweep, seed 0, g2 -> the other
contenders' sweeps -> untrained control -> every contender x seed, trained to a plateau and evaluated.
A gate that fails raises ``GateFailed`` after recording itself: nothing after it runs.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from histenc.files import atomic_path
from histenc.lora import LoRA
from histenc.train.frame_query import DiTTrainer
from histenc.weights import load_weights, save_weights

from . import closed_form, queries as qs
from .setup import ENCODERS, RAW, TRAINED, UNTRAINED, make_data, make_dit, make_source, param_groups, patchifier
from .training import Plan, advance, base_plan, load_params, read_status

G1_TOLERANCE_DB = 0.5
G2_MIN_DB = 25.0
SCALES = (1, 2, 4)  # the base DiT learns full, 2x and 4x downsampled latents


class GateFailed(AssertionError):
    pass


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")


class Bench:
    def __init__(self, cfg, work: Path, log=print):
        self.cfg, self.work, self.log = cfg, Path(work), log
        self.work.mkdir(parents=True, exist_ok=True)
        self.data = make_data(cfg)
        self.queries = qs.held_out_queries(cfg)
        g = torch.Generator().manual_seed(cfg.data_seed + 11)
        n = max(1, cfg.val_examples // cfg.batch)
        self.val_batches = [qs.query_batch(self.data.val, cfg, g, cfg.batch) for _ in range(n)]
        self.base_val = [
            (s, qs.section_batch(self.data.val, cfg, g, cfg.base_batch, s)) for s in SCALES for _ in range(4)
        ]

    # ---- results on disk -----------------------------------------------------------------------
    def path(self, *parts) -> Path:
        return self.work.joinpath(*parts)

    def read(self, name: str):
        p = self.path(name)
        return json.loads(p.read_text()) if p.is_file() else None

    def write(self, name: str, value) -> None:
        p = self.path(name)
        p.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(p) as tmp:
            Path(tmp).write_text(json.dumps(value, indent=1))

    def gate(self, name: str, failed: list[str], detail: dict) -> None:
        self.write(f"{name}.json", {**detail, "passed": not failed, "failed": failed})
        self.recorded(name)

    def recorded(self, name: str) -> bool:
        """Whether gate ``name`` has been evaluated; a recorded failure raises again, so nothing runs past it."""
        result = self.read(f"{name}.json")
        if result is not None and not result["passed"]:
            raise GateFailed(f"{name} failed: " + "; ".join(result["failed"]))
        return result is not None

    # ---- the stages ------------------------------------------------------------------------------
    def run(self, deadline: float) -> bool:
        """Advance every stage that fits before ``deadline``; True when everything is done."""
        steps = [self.g0, self.base, self.g1, lambda d: self.sweep(RAW, d), lambda d: self.train_eval(RAW, 0, d)]
        steps.append(self.g2)
        steps += [lambda d, n=n: self.sweep(n, d) for n in ENCODERS]
        steps.append(self.untrained)
        steps += [lambda d, n=n, s=s: self.train_eval(n, s, d) for s in self.cfg.seeds for n in TRAINED]
        for step in steps:
            if time.monotonic() >= deadline or not step(deadline):
                return False
        return True

    def g0(self, deadline) -> bool:
        if not self.recorded("g0"):
            result = closed_form.g0(self.data, self.cfg, self.queries)
            self.gate("g0", closed_form.check_g0(result), result)
        return True

    def base_dit(self):
        dit = make_dit(self.cfg, seed=0)
        tensors, _ = load_weights(self.path("base", "dit.safetensors"), {"format": "histenc.bench_base"})
        dit.load_state_dict(tensors, strict=True)
        return dit.requires_grad_(False)

    def base(self, deadline) -> bool:
        if self.path("base", "dit.safetensors").is_file():
            return True
        cfg, dit = self.cfg, make_dit(self.cfg, seed=0)
        params = dict(dit.named_parameters())

        def loss(g):
            b = qs.section_batch(
                self.data.train, cfg, g, cfg.base_batch, SCALES[int(torch.randint(0, 3, (1,), generator=g))]
            )
            return F.mse_loss(qs.velocity(dit, b["x_t"], b["timestep"], b["text"], b["times"]), b["target"])

        @torch.no_grad()
        def val():
            return sum(
                float(F.mse_loss(qs.velocity(dit, b["x_t"], b["timestep"], b["text"], b["times"]), b["target"]))
                for _, b in self.base_val
            ) / len(self.base_val)

        plan = base_plan(cfg)
        identity = {"stage": "base", "config": cfg.to_json(), "lr": cfg.base_lr}
        status = advance(
            self.path("base"), params, lambda n: "dit", {"dit": cfg.base_lr}, loss, val, plan, deadline, identity
        )
        self.log(f"base DiT: step {status['step']}, {status.get('reason') or 'running'}")
        if status["done"]:
            save_weights(
                self.path("base", "dit.safetensors"),
                {k: v.detach().contiguous() for k, v in dit.state_dict().items()},
                {"format": "histenc.bench_base", "version": 1, "steps": status["step"], "reason": status["reason"]},
            )
        return status["done"]

    def g1(self, deadline) -> bool:
        if self.recorded("g1"):
            return True
        dit, failed, rows = self.base_dit(), [], {}
        for scale in SCALES:
            floor, dit_db = self._no_context_scores(dit, scale)
            rows[f"{scale}x"] = {"floor_psnr": floor, "dit_onestep_psnr": dit_db}
            if dit_db < floor - G1_TOLERANCE_DB:
                failed.append(
                    f"at {scale}x the base DiT's one-step x0 without context is {dit_db:.2f} dB, more than "
                    f"{G1_TOLERANCE_DB} dB below the mean-frame floor {floor:.2f} dB"
                )
        rows["base_status"] = read_status(self.path("base"))
        rows["base_status"].pop("loss", None)
        self.gate("g1", failed, rows)
        return True

    @torch.no_grad()
    def _no_context_scores(self, dit, scale: int) -> tuple[float, float]:
        """(mean-frame floor, base DiT one-step x0 PSNR) on the held-out query frames at ``scale``x less resolution."""
        cfg, data = self.cfg, self.data
        down = lambda z: F.avg_pool3d(z, (1, scale, scale)) if scale > 1 else z  # noqa: E731
        mean = down(data.train).mean(dim=(0, 2), keepdim=True)  # the mean latent frame at this resolution
        floor, got = [], []
        for q in self.queries:
            truth_lat = down(data.test[q.video : q.video + 1, :, [q.start + i for i in q.omega]])
            truth = data.codec.decode(truth_lat).clamp(0, 1)
            g = torch.Generator().manual_seed(q.seed)
            noise = torch.randn(truth_lat.shape, generator=g)
            times = torch.tensor(q.omega, dtype=torch.float32) - cfg.history_frames
            v = qs.velocity(dit, noise, torch.tensor([1000.0]), qs.text_for(cfg, 1), times)
            floor.append(qs.psnr(data.codec.decode(mean.expand_as(truth_lat)), truth))
            got.append(qs.psnr(data.codec.decode(noise - v), truth))
        return sum(floor) / len(floor), sum(got) / len(got)

    # ---- contenders ------------------------------------------------------------------------------
    def trainer(self, name: str, seed: int):
        dit = self.base_dit()
        source = make_source(self.cfg, name, dit, self.data.codec, seed)
        lora = None if name == UNTRAINED else LoRA(dit, self.cfg.rank, self.cfg.rank, "all", "all", seed=seed).attach()
        return DiTTrainer(dit, source, lora)

    def _train(self, name: str, seed: int, folder: Path, plan: Plan, scale: float, deadline) -> dict:
        cfg, trainer = self.cfg, self.trainer(name, seed)
        groups = param_groups(trainer)
        group_of = {id(p): grp for grp, ps in groups.items() for p in ps}
        params = dict(trainer.named_parameters())
        lrs = {grp: lr * scale for grp, lr in cfg.group_lr}

        def loss(g):
            return trainer(qs.query_batch(self.data.train, cfg, g, cfg.batch))

        @torch.no_grad()
        def val():
            return sum(float(trainer(b)) for b in self.val_batches) / len(self.val_batches)

        identity = {
            "name": name,
            "seed": seed,
            "scale": scale,
            "plan": list(plan.__dict__.values()),
            "cfg": cfg.to_json(),
        }
        status = advance(folder, params, lambda n: group_of[id(params[n])], lrs, loss, val, plan, deadline, identity)
        return {"status": status, "trainer": trainer, "params": params}

    def sweep(self, name: str, deadline) -> bool:
        if self.read(f"sweep/{slug(name)}.json") is not None:
            return True
        cfg, rows = self.cfg, {}
        for scale in cfg.sweep_scales:
            plan = Plan(cfg.sweep_steps, cfg.sweep_steps, cfg.patience, cfg.min_gain, seed=500, stop_at_plateau=False)
            out = self._train(name, 0, self.path("sweep", slug(name), f"{scale:.3f}"), plan, scale, deadline)
            if not out["status"]["done"]:
                return False
            rows[f"{scale:.3f}"] = out["status"]["val"][-1]
        best = min(rows, key=rows.get)
        self.write(f"sweep/{slug(name)}.json", {"val_loss": rows, "chosen_scale": float(best)})
        self.log(f"sweep {name}: {rows} -> {best}")
        return True

    def train_eval(self, name: str, seed: int, deadline) -> bool:
        key = f"eval/{slug(name)}_s{seed}.json"
        if self.read(key) is not None:
            return True
        if not self.sweep(name, deadline):
            return False
        cfg = self.cfg
        scale = self.read(f"sweep/{slug(name)}.json")["chosen_scale"]
        plan = Plan(cfg.max_steps, cfg.eval_every, cfg.patience, cfg.min_gain, 1000 + seed, cooldown=cfg.cooldown)
        folder = self.path("runs", f"{slug(name)}_s{seed}")
        out = self._train(name, seed, folder, plan, scale, deadline)
        status = out["status"]
        self.log(f"{name} seed {seed}: step {status['step']}, {status.get('reason') or 'running'}")
        if not status["done"]:
            return False
        load_params(folder, out["params"])
        trainer = out["trainer"].eval()
        result = qs.evaluate(trainer.dit, trainer.source, self.data, cfg, self.queries, patchifier(trainer.dit))
        status = {k: v for k, v in status.items() if k != "loss"}
        self.write(key, {**result, "status": status, "scale": scale})
        return True

    def untrained(self, deadline) -> bool:
        key = f"eval/{slug(UNTRAINED)}.json"
        if self.read(key) is None:
            trainer = self.trainer(UNTRAINED, 0)
            result = qs.evaluate(
                trainer.dit, trainer.source, self.data, self.cfg, self.queries, patchifier(trainer.dit)
            )
            self.write(key, result)
        return True

    def g2(self, deadline) -> bool:
        if self.recorded("g2"):
            return True
        raw = self.read(f"eval/{slug(RAW)}_s0.json")
        got = sum(raw["psnr_sampled"]) / len(raw["psnr_sampled"])
        failed = (
            [] if got >= G2_MIN_DB else [f"the raw-frames control reaches {got:.2f} dB sampled, below {G2_MIN_DB} dB"]
        )
        self.gate("g2", failed, {"raw_seed0_sampled_psnr": got, "threshold": G2_MIN_DB})
        return True

    def evals(self) -> dict[str, dict[int, dict]]:
        out: dict[str, dict[int, dict]] = {}
        for name in TRAINED:
            for seed in self.cfg.seeds:
                r = self.read(f"eval/{slug(name)}_s{seed}.json")
                if r is not None:
                    out.setdefault(name, {})[seed] = r
        r = self.read(f"eval/{slug(UNTRAINED)}.json")
        if r is not None:
            out[UNTRAINED] = {seed: r for seed in self.cfg.seeds}  # no training: the same for every seed
        return out
