"""The generic training loop: learning, bit-exact resume, refusals, crash-safe checkpoints, curves."""

import csv

import pytest
import torch
from PIL import Image

import histenc.weights
from histenc.train.loop import (
    CHECKPOINT_NAME,
    TrainSettings,
    checkpoint_modules,
    logit_normal_timesteps,
    noisy_pair,
    train,
)
from histenc.weights import load_weights


def problem(seed=0):
    """Fit a tiny velocity model v = W x_t on flow-matching pairs of fixed data."""
    g = torch.Generator().manual_seed(seed)
    data = torch.randn(16, 6, generator=g)
    w = torch.nn.Parameter(torch.zeros(6, 6))
    b = torch.nn.Parameter(torch.zeros(6))

    def batches(step, gen):
        idx = torch.randint(0, 16, (4,), generator=gen)
        t = logit_normal_timesteps(4, gen, shift=2.0)
        return noisy_pair(data[idx], t, torch.randn(4, 6, generator=gen))

    def loss_fn(batch, step):
        x_t, target = batch
        return torch.nn.functional.mse_loss(x_t @ w.T + b, target)

    return {"w": w, "b": b}, loss_fn, batches


def regression(seed=0):
    """A learnable linear map y = A x, with inputs drawn from the loop's generator."""
    a = torch.randn(6, 6, generator=torch.Generator().manual_seed(seed))
    w = torch.nn.Parameter(torch.zeros(6, 6))

    def batches(step, gen):
        x = torch.randn(8, 6, generator=gen)
        return x, x @ a.T

    return {"w": w}, lambda batch, step: torch.nn.functional.mse_loss(batch[0] @ w.T, batch[1]), batches


def test_timesteps_are_shifted_logit_normal():
    g = torch.Generator().manual_seed(0)
    plain = logit_normal_timesteps(20000, g)
    shifted = logit_normal_timesteps(20000, torch.Generator().manual_seed(0), shift=3.0)
    assert 0 < float(plain.min()) and float(plain.max()) < 1
    assert abs(float(plain.median()) - 0.5) < 0.02  # sigmoid(N(0, 1)) is symmetric about 0.5
    assert abs(float(shifted.median()) - 0.75) < 0.02  # shift 3 maps 0.5 to 3*0.5 / (1 + 2*0.5)
    with pytest.raises(ValueError, match="shift is 0"):
        logit_normal_timesteps(2, g, shift=0)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="learning rate is 0"):
        TrainSettings(steps=5, lr=0)
    with pytest.raises(ValueError, match="training steps is 0"):
        TrainSettings(steps=0, lr=1e-3)


def test_loss_goes_down_and_curves_are_written(tmp_path):
    params, loss_fn, batches = regression()
    seen = []
    result = train(
        params,
        loss_fn,
        batches,
        TrainSettings(steps=60, lr=3e-2, checkpoint_every=20),
        tmp_path,
        on_step=lambda s, l: seen.append(s),
    )
    assert seen == list(range(1, 61)) and result.step == 60
    assert sum(result.losses[-10:]) < 0.1 * sum(result.losses[:10])
    rows = list(csv.reader(open(result.csv)))
    assert rows[0] == ["step", "loss"] and len(rows) == 61 and float(rows[-1][1]) == result.losses[-1]
    assert Image.open(result.png).size == (640, 320)


def test_five_plus_five_with_resume_equals_ten(tmp_path):
    params, loss_fn, batches = problem()
    train(params, loss_fn, batches, TrainSettings(steps=10, lr=1e-2, checkpoint_every=3), tmp_path / "once")
    once = {k: v.detach().clone() for k, v in params.items()}

    params, loss_fn, batches = problem()
    first = train(params, loss_fn, batches, TrainSettings(steps=5, lr=1e-2, checkpoint_every=3), tmp_path / "twice")
    params, loss_fn, batches = problem()  # a fresh process: new parameters, state only from disk
    second = train(params, loss_fn, batches, TrainSettings(steps=10, lr=1e-2, checkpoint_every=3), tmp_path / "twice")
    assert (first.step, second.resumed_from, second.step) == (5, 5, 10)
    for k in once:
        assert torch.equal(params[k], once[k]), k
    ref = train(*problem(), TrainSettings(steps=10, lr=1e-2), tmp_path / "ref")
    assert second.losses == ref.losses


def test_resume_with_other_settings_is_refused_by_name(tmp_path):
    train(*problem(), TrainSettings(steps=2, lr=1e-2, extra={"rank": 4}), tmp_path)
    with pytest.raises(ValueError, match="made with lr 0.01 but this run uses lr 0.02"):
        train(*problem(), TrainSettings(steps=4, lr=2e-2, extra={"rank": 4}), tmp_path)
    with pytest.raises(ValueError, match="made with rank 4 but this run uses rank 8"):
        train(*problem(), TrainSettings(steps=4, lr=1e-2, extra={"rank": 8}), tmp_path)


class Stop(Exception):
    pass


@pytest.mark.parametrize("where", ["after_step", "mid_step"])
def test_interrupt_saves_last_completed_step_and_resume_is_exact(tmp_path, where):
    settings = TrainSettings(steps=8, lr=1e-2, checkpoint_every=100)
    ref = train(*problem(), settings, tmp_path / "ref")
    params, loss_fn, batches = problem()

    def stop_after_3(step, loss):
        if step == 3:
            raise Stop()

    def loss_stopping_in_step_4(batch, step):  # the batch (and its randomness) is drawn, then the step dies
        if step == 3:
            raise Stop()
        return loss_fn(batch, step)

    with pytest.raises(Stop):
        if where == "after_step":
            train(params, loss_fn, batches, settings, tmp_path / "run", on_step=stop_after_3)
        else:
            train(params, loss_stopping_in_step_4, batches, settings, tmp_path / "run")
    _, meta = load_weights(tmp_path / "run" / CHECKPOINT_NAME)
    assert meta["step"] == 3
    again = train(*problem(), settings, tmp_path / "run")
    assert again.resumed_from == 3 and again.losses == ref.losses


def test_a_failed_save_never_replaces_a_good_checkpoint(tmp_path, monkeypatch):
    train(*problem(), TrainSettings(steps=2, lr=1e-2, checkpoint_every=1), tmp_path)
    good = (tmp_path / CHECKPOINT_NAME).read_bytes()

    def half_write(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"\x00" * 17)
        raise OSError("disk full")

    monkeypatch.setattr(histenc.weights, "save_file", half_write)
    with pytest.raises(OSError, match="disk full"):
        train(*problem(), TrainSettings(steps=4, lr=1e-2, checkpoint_every=1), tmp_path)
    assert (tmp_path / CHECKPOINT_NAME).read_bytes() == good
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 8))
    x = torch.randn(3, 8)
    net(x).square().sum().backward()
    plain = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    undo = checkpoint_modules([net[0], net[2]])
    net(x).square().sum().backward()
    for a, p in zip(plain, net.parameters()):
        torch.testing.assert_close(p.grad, a)
    undo()
    assert "forward" not in net[0].__dict__
