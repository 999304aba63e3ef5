"""Training that resumes in chunks and stops at a validation plateau, with one learning rate per group.

A run lives in a folder: ``checkpoint.safetensors`` (parameters, AdamW moments, the data
generator's state) and ``run.json`` (step, validation curve, whether and why it stopped). Every
call trains until its deadline or the run's end and saves, so a benchmark split into chunks of a
few minutes gives the same numbers as one long call (the generator is restored exactly). A run's
main phase ends at a plateau: ``patience`` validation checks in a row without a ``min_gain``
relative improvement on the best, or at ``max_steps`` (recorded as not plateaued). Then ``cooldown``
steps decay every group's learning rate linearly to zero, so the weights settle at the plateau
rather than wander around it at full step size.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from histenc.files import atomic_path
from histenc.weights import load_weights, save_weights

FORMAT = "histenc.bench_run"


@dataclass(frozen=True)
class Plan:
    max_steps: int
    eval_every: int
    patience: int
    min_gain: float
    seed: int
    stop_at_plateau: bool = True
    cooldown: int = 0


def base_plan(cfg) -> Plan:
    """How a benchmark's base DiT trains: to a plateau checked every two evaluation intervals, then a cooldown."""
    return Plan(
        cfg.base_max_steps,
        cfg.eval_every * 2,
        cfg.base_patience,
        cfg.min_gain,
        cfg.data_seed + 3,
        cooldown=cfg.base_cooldown,
    )


def read_status(folder: Path) -> dict:
    path = Path(folder) / "run.json"
    return json.loads(path.read_text()) if path.is_file() else {"step": 0, "val": [], "done": False, "reason": ""}


def _write_json(path: Path, value) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(value, indent=1))


def _save(folder: Path, params, optimizer, g: torch.Generator, status: dict, identity: dict) -> None:
    names = list(params)
    tensors = {f"param.{k}": v.detach().contiguous() for k, v in params.items()}
    for i, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            tensors[f"optim.{names[i]}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    tensors["rng"] = g.get_state()
    save_weights(folder / "checkpoint.safetensors", tensors, {"format": FORMAT, "version": 1, "identity": identity})
    _write_json(folder / "run.json", status)


def _resume(folder: Path, params, optimizer, g: torch.Generator, identity: dict) -> None:
    tensors, meta = load_weights(folder / "checkpoint.safetensors", {"format": FORMAT})
    if meta.get("identity") != json.loads(json.dumps(identity)):
        raise ValueError(f"the run in {folder} was made with other settings; delete the folder to start it again.")
    with torch.no_grad():
        for k, p in params.items():
            p.copy_(tensors[f"param.{k}"])
    sd = optimizer.state_dict()
    sd["state"] = {}
    for i, k in enumerate(params):
        entry = {key[len(f"optim.{k}.") :]: v for key, v in tensors.items() if key.startswith(f"optim.{k}.")}
        if entry:
            sd["state"][i] = entry
    optimizer.load_state_dict(sd)
    g.set_state(tensors["rng"])


def advance(
    folder: Path,
    params: dict[str, torch.nn.Parameter],
    group_of: Callable[[str], str],
    group_lr: dict[str, float],
    loss_fn: Callable[[torch.Generator], torch.Tensor],
    val_fn: Callable[[], float],
    plan: Plan,
    deadline: float,
    identity: dict,
    max_new_steps: int | None = None,
) -> dict:
    """Train the run in ``folder`` until ``deadline`` (time.monotonic), ``max_new_steps`` or its end; its status."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    status = read_status(folder)
    if status["done"]:
        return status
    names = list(params)
    groups: dict[str, list] = {}
    for n in names:
        groups.setdefault(group_of(n), []).append(n)
    order = [n for grp in groups.values() for n in grp]  # parameters in optimizer order
    params = {n: params[n] for n in order}
    optimizer = torch.optim.AdamW(
        [{"params": [params[n] for n in grp], "lr": group_lr[name]} for name, grp in groups.items()],
        weight_decay=0.0,
    )
    g = torch.Generator().manual_seed(int(plan.seed))
    if (folder / "checkpoint.safetensors").is_file():
        _resume(folder, params, optimizer, g, identity)
    for p in params.values():
        p.requires_grad_(True)
    step = status["step"]
    stop = step + max_new_steps if max_new_steps is not None else None
    base_lr = [grp["lr"] for grp in optimizer.param_groups]
    while time.monotonic() < deadline and (stop is None or step < stop):
        factor = 1.0
        if "cooldown_from" in status:
            factor = 1.0 - (step - status["cooldown_from"]) / plan.cooldown
        for grp, lr in zip(optimizer.param_groups, base_lr):
            grp["lr"] = lr * factor
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(g)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(params.values()), 1.0)
        optimizer.step()
        step += 1
        status["step"] = step
        status.setdefault("loss", []).append(round(float(loss.detach()), 6))
        cooled = "cooldown_from" in status and step >= status["cooldown_from"] + plan.cooldown
        if step % plan.eval_every == 0 or step == plan.max_steps or cooled:  # once at max, not every cooldown step
            val = float(val_fn())
            best = min(status["val"], default=float("inf"))
            status["val"].append(val)
            status["since_best"] = 0 if val < best * (1 - plan.min_gain) else status.get("since_best", 0) + 1
            if cooled:
                status.update(done=True, reason=status["reason"] + f", then {plan.cooldown} cooldown steps")
            elif "cooldown_from" not in status:
                if plan.stop_at_plateau and status["since_best"] >= plan.patience:
                    status["reason"] = f"validation plateau at step {step}"
                elif step >= plan.max_steps:
                    status["reason"] = f"max steps {plan.max_steps}" + (
                        " (not plateaued)" if plan.stop_at_plateau else ""
                    )
                if status["reason"]:
                    status["done"] = plan.cooldown == 0
                    if plan.cooldown:
                        status["cooldown_from"] = step
            _save(folder, params, optimizer, g, status, identity)
            if status["done"]:
                break
    else:
        _save(folder, params, optimizer, g, status, identity)
    for p in params.values():
        p.requires_grad_(False)
    return status


def load_params(folder: Path, params: dict[str, torch.nn.Parameter]) -> None:
    """Copy a run's trained parameters into ``params`` (for evaluation)."""
    tensors, _ = load_weights(Path(folder) / "checkpoint.safetensors", {"format": FORMAT})
    with torch.no_grad():
        for k, p in params.items():
            p.copy_(tensors[f"param.{k}"])
