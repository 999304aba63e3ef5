"""A generic training loop: flow-matching helpers, AdamW, crash-safe checkpoints, loss curve.

Every objective (plain LoRA, frame-query pretraining, AR finetuning) is a pair of callables:

    batches(step, generator) -> batch     all randomness (data order, noise, timesteps) comes from ``generator``
    loss_fn(batch, step) -> loss          a scalar tensor

The loop owns the generator and checkpoints it with the parameters and the optimizer, so a run
of 5 steps resumed to 10 is bit-identical on CPU to one run of 10. The checkpoint, loss CSV and
plot are written atomically (histenc.files), so a crash mid-save never replaces a good file; a
checkpoint made with other settings is refused by name of the first setting that differs. When a
step fails (an interrupt, out of memory), the last completed step is saved first.
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from ..files import atomic_path
from ..weights import load_weights, save_weights

CHECKPOINT_FORMAT = "histenc.train_checkpoint"
CHECKPOINT_VERSION = 1
CHECKPOINT_NAME, CSV_NAME, PNG_NAME = "checkpoint.safetensors", "loss.csv", "loss.png"
NOT_IDENTITY = ("steps", "checkpoint_every")  # may change between a run and its resumption


@dataclass(frozen=True)
class TrainSettings:
    steps: int
    lr: float
    seed: int = 0
    checkpoint_every: int = 50
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # 0 turns clipping off
    bf16: bool = True  # autocast to bfloat16 when the parameters live on CUDA
    extra: Mapping[str, Any] = field(default_factory=dict)  # objective settings a resume must match (rank, data, ...)

    def __post_init__(self):
        if int(self.steps) < 1:
            raise ValueError(f"training steps is {self.steps}; use 1 or more.")
        if not float(self.lr) > 0:
            raise ValueError(f"learning rate is {self.lr}; use a positive value such as 1e-4.")
        if int(self.checkpoint_every) < 1:
            raise ValueError(f"checkpoint_every is {self.checkpoint_every}; use 1 or more steps.")

    def identity(self) -> dict[str, Any]:
        d = asdict(self)
        extra = d.pop("extra")
        for k in NOT_IDENTITY:
            d.pop(k)
        d.update({k: extra[k] for k in sorted(extra)})
        return d


@dataclass
class TrainResult:
    step: int
    losses: list[float]
    resumed_from: int
    checkpoint: Path
    csv: Path
    png: Path


# --- flow matching ------------------------------------------------------------------------------
def logit_normal_timesteps(
    n: int, generator: torch.Generator, mean: float = 0.0, std: float = 1.0, shift: float = 1.0
) -> torch.Tensor:
    """t in (0, 1) (1 = pure noise): sigmoid of N(mean, std), then the rectified-flow shift s*t / (1 + (s-1)*t)."""
    if not shift > 0:
        raise ValueError(f"timestep shift is {shift}; use a positive value (1 = no shift, 3-8 for video).")
    u = torch.sigmoid(mean + std * torch.randn(n, generator=generator))
    return shift * u / (1 + (shift - 1) * u)


def noisy_pair(x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_t, velocity target) of rectified flow: x_t = (1 - t) x0 + t noise, v = noise - x0."""
    tt = t.reshape(-1, *([1] * (x0.ndim - 1))).to(x0)
    return (1 - tt) * x0 + tt * noise, noise - x0


# --- memory helpers -----------------------------------------------------------------------------
def checkpoint_modules(modules) -> Callable[[], None]:
    """Gradient checkpointing on each module's forward (activations recomputed in backward); returns undo."""
    from torch.utils.checkpoint import checkpoint

    undo = []
    for m in modules:
        original = m.forward

        def wrapped(*args, _f=original, **kwargs):
            if torch.is_grad_enabled():
                return checkpoint(_f, *args, use_reentrant=False, **kwargs)
            return _f(*args, **kwargs)

        undo.append((m, m.__dict__.get("forward")))  # a forward set on the instance before comes back
        m.forward = wrapped

    def restore():
        for m, own in undo:
            if own is not None:
                m.forward = own
            elif "forward" in m.__dict__:
                del m.forward

    return restore


def _autocast(params: Mapping[str, torch.Tensor], bf16: bool):
    device = next(iter(params.values())).device
    if bf16 and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


# --- checkpoints --------------------------------------------------------------------------------
def _save(out: Path, params, optimizer, generator, losses, step, settings) -> Path:
    tensors = {f"param.{k}": v.detach() for k, v in params.items()}
    names = list(params)
    for i, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            tensors[f"optim.{names[i]}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    tensors["rng"] = generator.get_state()
    tensors["losses"] = torch.tensor(losses[:step], dtype=torch.float64)
    meta = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "step": step,
        "settings": settings.identity(),
        "params": {k: list(v.shape) for k, v in params.items()},
    }
    path = save_weights(out / CHECKPOINT_NAME, tensors, meta)
    write_loss_csv(out / CSV_NAME, losses[:step])
    return path


def _resume(path: Path, params, optimizer, generator, settings) -> tuple[int, list[float]]:
    tensors, meta = load_weights(path, expect={"format": CHECKPOINT_FORMAT})
    found, wanted = meta.get("settings", {}), settings.identity()
    for key in sorted(set(found) | set(wanted)):
        if found.get(key) != wanted.get(key):
            raise ValueError(
                f"the checkpoint in {path.parent} was made with {key} {found.get(key)!r} but this run uses "
                f"{key} {wanted.get(key)!r}; use the same settings to resume, or start a new run under another "
                "name or folder."
            )
    shapes = {k: list(v.shape) for k, v in params.items()}
    if meta.get("params") != shapes:
        raise ValueError(
            f"the checkpoint in {path.parent} holds other trainable parameters than this run "
            "(different layers or sizes); pick another output folder."
        )
    with torch.no_grad():
        for k, p in params.items():
            p.copy_(tensors[f"param.{k}"])
    state = {}
    for i, k in enumerate(params):
        entry = {key[len(f"optim.{k}.") :]: v for key, v in tensors.items() if key.startswith(f"optim.{k}.")}
        if entry:
            state[i] = {key: (v.to(params[k].device) if v.ndim else v) for key, v in entry.items()}
    sd = optimizer.state_dict()
    sd["state"] = state
    optimizer.load_state_dict(sd)
    generator.set_state(tensors["rng"])
    return int(meta["step"]), tensors["losses"].tolist()


def write_loss_csv(path: Path, losses: list[float]) -> Path:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "loss"])
        w.writerows((i + 1, repr(float(v))) for i, v in enumerate(losses))
    return path


def render_loss_plot(losses: list[float], width: int = 640, height: int = 320, title: str = "training loss"):
    """Pillow image of the loss per step (thin) and its running mean (thick)."""
    from ..analysis.chart import Canvas, value_range

    canvas = Canvas(width, height)
    left, right, top, bottom = 64, width - 16, 24, height - 28
    n = len(losses)
    axes = canvas.axes((left, top, right, bottom), (0, max(n - 1, 1)), value_range(losses, flat_pad=0.5))
    axes.frame()
    canvas.text((left, 6), f"{title}  ({n} steps)")
    steps = [i for i, v in enumerate(losses) if math.isfinite(v)]
    finite = [losses[i] for i in steps]
    if not finite:
        canvas.text((left + 8, top + 8), "no finite loss yet")
        return canvas.image
    window = max(1, n // 20)
    smooth = [
        sum(finite[max(0, i - window + 1) : i + 1]) / len(finite[max(0, i - window + 1) : i + 1])
        for i in range(len(finite))
    ]
    axes.series(finite, (150, 180, 230), xs=steps, dot=False)
    axes.series(smooth, (20, 60, 160), width=2, xs=steps)
    axes.value_labels()
    axes.x_labels([(0, "1"), (max(n - 1, 1), f"{n}")], bottom + 6)
    canvas.text(((left + right) // 2 - 12, bottom + 6), "step")
    return canvas.image


def save_loss_plot(path: Path, losses: list[float]) -> Path:
    with atomic_path(path) as tmp:
        render_loss_plot(losses).save(tmp, format="PNG")
    return path


# --- the loop -----------------------------------------------------------------------------------
def train(
    params: Mapping[str, nn.Parameter],
    loss_fn: Callable[[Any, int], torch.Tensor],
    batches: Callable[[int, torch.Generator], Any],
    settings: TrainSettings,
    out_dir: str | os.PathLike,
    on_step: Callable[[int, float], None] | None = None,
    resume: bool = True,
) -> TrainResult:
    """Run steps (resuming from ``out_dir`` when its checkpoint matches) up to ``settings.steps``.

    ``on_step(step, loss)`` runs after every completed step (progress bars, interrupt checks); if it
    or a step raises, the last completed step is checkpointed and the error goes on.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    params = dict(params)
    if not params:
        raise ValueError("no trainable parameters were given; attach a LoRA or an encoder before training.")
    optimizer = torch.optim.AdamW(list(params.values()), lr=settings.lr, weight_decay=settings.weight_decay)
    generator = torch.Generator().manual_seed(int(settings.seed))
    step, losses = 0, []
    if resume and (out / CHECKPOINT_NAME).is_file():
        step, losses = _resume(out / CHECKPOINT_NAME, params, optimizer, generator, settings)
    start = step
    save = lambda: _save(out, params, optimizer, generator, losses, step, settings)  # noqa: E731
    in_update = False
    try:
        while step < settings.steps:
            rng = generator.get_state()
            try:
                optimizer.zero_grad(set_to_none=True)
                batch = batches(step, generator)
                with _autocast(params, settings.bf16):
                    loss = loss_fn(batch, step)
                loss.float().backward()
                if settings.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(list(params.values()), settings.grad_clip)
                in_update = True
                optimizer.step()
                in_update = False
            except BaseException:
                generator.set_state(rng)  # the failed step never happened
                raise
            step += 1
            losses.append(float(loss.detach()))
            if step % settings.checkpoint_every == 0 or step == settings.steps:
                save()
            if on_step is not None:
                on_step(step, losses[-1])
    except torch.cuda.OutOfMemoryError:
        if not in_update:
            save()
        raise ValueError(
            f"out of memory at training step {step + 1}; lower the dataset's frames or resolution, the LoRA rank, "
            "or turn on gradient checkpointing, then run again to resume from the saved checkpoint."
        ) from None
    except BaseException:
        if not in_update and step > start:
            save()
        raise
    if step == start and not (out / CHECKPOINT_NAME).is_file():
        save()
    save_loss_plot(out / PNG_NAME, losses[:step])
    write_loss_csv(out / CSV_NAME, losses[:step])
    return TrainResult(step, losses[:step], start, out / CHECKPOINT_NAME, out / CSV_NAME, out / PNG_NAME)
