"""Headless training: ``python -m histenc.train CONFIG.json``, alone or under ``torchrun`` (DDP).

Under torchrun (WORLD_SIZE > 1) every rank builds the same model, context source and LoRA from the
config seed, the trainable parts are wrapped in DistributedDataParallel (gloo on CPU, NCCL on CUDA),
each rank draws its own batch from the shared step seed plus its rank, and gradients are averaged
by DDP, so all ranks hold identical weights after every step. Rank 0 writes into ``out_dir``; rank
r > 0 keeps its own checkpoint and outputs in ``out_dir/rank{r}`` so each rank resumes itself.

Training itself is ``histenc.train.trainer.run_training``, as in the nodes; this module only builds the
model, data and objective from the config.

Outputs: ``history_encoder.safetensors`` (Load History Encoder reads it), ``framepack.safetensors``,
``extension.safetensors`` (Video Extension Context reads it), ``lora.safetensors`` (stock
LoraLoaderModelOnly keys), plus the loop's checkpoint and loss CSV / PNG.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

import torch

from .config import TrainConfig, load_config
from .loop import TrainSettings
from .trainer import AutoregressiveObjective, ExtensionObjective, FrameQueryObjective, LoRASpec, Objective, run_training


def distributed_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) when run alone."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def pick_device(cfg: TrainConfig, local_rank: int) -> torch.device:
    if cfg.device == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    return torch.device(cfg.device)


def build_model(cfg: TrainConfig, device: torch.device):
    spec = dict(cfg.model)
    kind = spec.pop("kind")
    if kind == "factory":
        module, _, attr = spec.pop("factory").partition(":")
        dit = getattr(importlib.import_module(module), attr)(**spec)
    else:
        from .toy_dit import WanModel

        weights = spec.pop("weights", None)
        torch.manual_seed(cfg.seed)
        dit = WanModel(**spec)
        if weights:
            from safetensors.torch import load_file

            sd = {
                k.removeprefix("model.diffusion_model.").removeprefix("diffusion_model."): v
                for k, v in load_file(weights).items()
            }
            missing, unexpected = dit.load_state_dict(sd, strict=False)
            if missing or unexpected:
                first = (missing or unexpected)[0]
                raise ValueError(
                    f"model.weights {weights} does not fit the toy Wan DiT of this config (first "
                    f"mismatch: {first}); match dim, ffn_dim, num_layers and text_dim to the file."
                )
    return dit.to(device).requires_grad_(False)


def build_clips(cfg: TrainConfig):
    from .frame_query import Clip

    spec = dict(cfg.data)
    if spec.pop("kind") == "procedural":
        from . import procedural
        from .toy_dit import PixelLatents

        text_dim = int(cfg.model.get("text_dim", 4096))
        videos = procedural.generate_set(
            int(spec.get("videos", 8)),
            seed=int(spec.get("seed", 1000)),
            frames=int(spec.get("frames", 48)),
            size=int(spec.get("size", 32)),
            objects=int(spec.get("objects", 3)),
            visit=(3, 5),
            gap=(0, 2),
        )
        latent_map = PixelLatents(16, seed=cfg.seed)
        return [Clip(latent_map.encode(v.frames), [(0.0, torch.zeros(1, 1, text_dim))]) for v in videos]
    from .dataset import CachedDataset

    data = CachedDataset(spec["path"])
    mean = torch.tensor(spec["latent_mean"]).view(1, -1, 1, 1, 1) if spec.get("latent_mean") else 0.0
    std = torch.tensor(spec["latent_std"]).view(1, -1, 1, 1, 1) if spec.get("latent_std") else 1.0
    clips = []
    for i in range(len(data)):
        item = data[i]
        latents = item["latents"].float()
        latents = latents if latents.ndim == 5 else latents.unsqueeze(0)
        prompts = [(start, cond.float()) for start, cond in item["latent_prompts"]]  # the clip's own fps
        clips.append(Clip((latents - mean) / std, prompts))
    return clips


def build_source(cfg: TrainConfig, dit, device):
    from ..dit.wan import WanPatchifier

    patch = WanPatchifier(dit, device, torch.float32)
    spec = dict(cfg.context)
    kind = spec.pop("kind", "encoder")
    weights = spec.pop("weights", None)
    torch.manual_seed(cfg.seed)
    if kind == "encoder":
        from ..encoder.model import HistoryEncoder
        from ..encoder.io import load_encoder

        source = load_encoder(weights, dit=patch) if weights else HistoryEncoder.from_dit(patch, **spec)
    else:
        from ..framepack.packing import FramePackContext

        source = FramePackContext.load(weights, dit=patch) if weights else FramePackContext.from_dit(patch, **spec)
    if cfg.codebook:
        from ..framepack.codebook import DiscreteHistory, HistoryCodebook

        source = DiscreteHistory(source, HistoryCodebook.load(cfg.codebook, channels=patch.in_channels))
    return source


def build_lora(cfg: TrainConfig) -> LoRASpec | None:
    if not cfg.lora:
        return None
    spec = {"alpha": cfg.lora.get("rank", 16), **cfg.lora}
    if cfg.objective == "extension":  # the stage's layout unless the config names one
        targets, blocks = cfg.extension_settings().lora_layout()
        spec = {"targets": targets, "blocks": blocks, **spec}
    return LoRASpec(
        int(spec["rank"]), float(spec["alpha"]), spec.get("targets", "all"), spec.get("blocks", "all"), seed=cfg.seed
    )


def build_projection(cfg: TrainConfig, dit, device):
    """The extension objective's condition projection: from ``extension.weights``, else new (extension stage)."""
    from ..extension import ExtensionProjection, load_extension

    weights = cfg.extension.get("weights")
    if weights:
        return load_extension(weights, int(dit.dim), int(dit.out_dim), tuple(dit.patch_size)).to(device)
    if cfg.extension_settings().stage == "causal":
        return None
    torch.manual_seed(cfg.seed)
    return ExtensionProjection(int(dit.out_dim), int(dit.dim), tuple(dit.patch_size)).to(device)


def build_objective(cfg: TrainConfig, dit, clips, device) -> Objective:
    """The config's objective with its context source (frame query, autoregressive) or projection (extension)."""
    if cfg.objective == "extension":
        return ExtensionObjective(build_projection(cfg, dit, device), clips, cfg.extension_settings())
    source = build_source(cfg, dit, device)
    if cfg.objective == "frame_query":
        return FrameQueryObjective(source, clips, cfg.frame_query_settings())
    return AutoregressiveObjective(source, clips, cfg.autoregressive_settings())


def run(cfg: TrainConfig) -> list[Path]:
    rank, world, local_rank = distributed_env()
    device = pick_device(cfg, local_rank)
    out = Path(cfg.out_dir) if rank == 0 else Path(cfg.out_dir) / f"rank{rank}"
    wrap = None
    if world > 1:
        import torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel

        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        ids = [device.index] if device.type == "cuda" else None
        wrap = lambda m: DistributedDataParallel(m, device_ids=ids)  # noqa: E731
    dit = build_model(cfg, device)
    objective = build_objective(cfg, dit, build_clips(cfg), device)
    settings = TrainSettings(
        steps=cfg.steps,
        lr=cfg.lr,
        seed=cfg.seed,
        checkpoint_every=cfg.checkpoint_every,
        extra={"config": cfg.identity(), "world_size": world},
    )

    def progress(step: int, steps: int, loss: float) -> None:
        if rank == 0 and (step % max(1, steps // 20) == 0 or step == steps):
            print(f"step {step}/{steps} loss {loss:.5f}", flush=True)

    job = run_training(
        dit,
        objective,
        build_lora(cfg),
        settings,
        out,
        progress=progress,
        lora_file=out / "lora.safetensors",
        module_file=out / f"{objective.stem}.safetensors",
        record=lambda result: settings.identity(),
        gradient_checkpointing=cfg.gradient_checkpointing,
        wrap=wrap,
        rank=rank,
    )
    result = job.result
    if rank == 0:
        print(
            f"trained {result.step} steps (resumed from {result.resumed_from}); wrote "
            + ", ".join(str(p) for p in job.files + [result.csv, result.png]),
            flush=True,
        )
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
    return job.files


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print(
            "usage: python -m histenc.train CONFIG.json   (or torchrun --nproc_per_node N -m histenc.train CONFIG.json)"
        )
        return 2
    try:
        run(load_config(argv[0]))
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
