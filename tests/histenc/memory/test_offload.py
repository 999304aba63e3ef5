"""Block swap schedule on CPU: a recording transfer stands in for the GPU and poisons parked weights."""

import pytest
import torch
from torch import nn

from histenc.memory.offload import BlockSwap, OnAccess, RecordingTransfer, block_tensors, park


class Block(nn.Module):
    """A residual MLP block that logs which blocks are 'on the device' while it computes."""

    def __init__(self, i, width, seen, transfer):
        super().__init__()
        self.i, self.seen, self.transfer = i, seen, transfer
        self.up = nn.Linear(width, 2 * width)
        self.down = nn.Linear(2 * width, width)
        self.scale = nn.Parameter(torch.full((width,), 0.5))

    def forward(self, x):
        if self.transfer is not None:
            self.seen.append((self.i, sorted(self.transfer.live)))
        return x + self.scale * self.down(torch.tanh(self.up(x)))


def stack(n=4, width=8, seed=0, transfer=None):
    torch.manual_seed(seed)
    seen = []
    blocks = nn.ModuleList(Block(i, width, seen, transfer) for i in range(n))
    return blocks, seen


def run(blocks, x):
    with torch.no_grad():
        for b in blocks:
            x = b(x)
    return x


def test_prefetch_schedule_keeps_two_blocks_and_fetches_the_next_before_computing():
    transfer = RecordingTransfer()
    blocks, seen = stack(transfer=transfer)
    x = torch.randn(3, 8)
    reference = run(stack()[0], x)
    swap = BlockSwap(blocks, transfer)
    assert swap.park() == sum(t.numel() * t.element_size() for b in blocks for t in block_tensors(b))
    swap.install()
    out = run(blocks, x)
    assert torch.equal(out, reference)
    assert transfer.log == [
        ("fetch", 0),
        ("fetch", 1),
        ("ready", 0),
        ("done", 0),
        ("fetch", 2),
        ("ready", 1),
        ("done", 1),
        ("fetch", 3),
        ("ready", 2),
        ("done", 2),
        ("fetch", 0),
        ("ready", 3),
        ("done", 3),  # block 0 of the next step arrives during the last block
    ]
    assert seen == [(0, [0, 1]), (1, [1, 2]), (2, [2, 3]), (3, [0, 3])]
    # second step: block 0 was prefetched, nothing is fetched twice
    transfer.log.clear()
    assert torch.equal(run(blocks, x), reference)
    assert transfer.log[:2] == [("fetch", 1), ("ready", 0)]
    assert swap.stats.prefetch_hits == 7
    # between blocks the weights are still parked: poisoned, so any use outside the swap would show
    assert torch.isnan(blocks[2].up.weight).all()
    swap.uninstall()
    assert transfer.live == set()


def test_only_swapped_blocks_move_and_resident_ones_never_fetch():
    transfer = RecordingTransfer()
    blocks, seen = stack(n=5, transfer=transfer)
    x = torch.randn(2, 8)
    reference = run(stack(n=5)[0], x)
    swap = BlockSwap(blocks, transfer, swap=[1, 3]).install()
    swap.park()
    assert torch.equal(run(blocks, x), reference)
    assert [e for e in transfer.log if e[0] == "fetch"] == [("fetch", 1), ("fetch", 3), ("fetch", 1)]
    assert seen == [(0, []), (1, [1, 3]), (2, [3]), (3, [1, 3]), (4, [1])]
    assert not torch.isnan(blocks[0].up.weight).any()


def test_without_prefetch_each_block_is_fetched_right_before_it_runs():
    transfer = RecordingTransfer()
    blocks, seen = stack(transfer=transfer)
    x = torch.randn(2, 8)
    reference = run(stack()[0], x)
    swap = BlockSwap(blocks, transfer, prefetch=False)
    swap.park()
    swap.install()
    assert torch.equal(run(blocks, x), reference)
    assert transfer.log == [(k, i) for i in range(4) for k in ("fetch", "ready", "done")]
    assert seen == [(i, [i]) for i in range(4)]


def test_out_of_order_call_drops_the_stale_prefetch_and_stays_correct():
    transfer = RecordingTransfer()
    blocks, _ = stack(transfer=transfer)
    ref_blocks = stack()[0]
    x = torch.randn(2, 8)
    swap = BlockSwap(blocks, transfer)
    swap.park()
    swap.install()
    with torch.no_grad():
        a = blocks[2](blocks[0](x))  # block 1 was prefetched but block 2 runs next
        b = ref_blocks[2](ref_blocks[0](x))
    assert torch.equal(a, b)
    assert ("done", 1) in transfer.log and transfer.log.index(("done", 1)) < transfer.log.index(("ready", 2))


def test_an_error_inside_a_block_puts_the_parked_weights_back():
    transfer = RecordingTransfer()
    blocks, _ = stack(transfer=transfer)
    swap = BlockSwap(blocks, transfer)
    swap.park()

    def boom(*args):
        assert not torch.isnan(blocks[0].up.weight).any()  # the block sees its real weights
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"), torch.no_grad():
        swap.run(0, boom, torch.zeros(1, 8))
    assert torch.isnan(blocks[0].up.weight).all()
    blocks.requires_grad_(False)
    with pytest.raises(RuntimeError, match="interrupted"):  # under autograd too (the checkpointed path)
        swap.run(0, boom, torch.zeros(1, 8, requires_grad=True))
    assert torch.isnan(blocks[0].up.weight).all() and blocks[0].up.weight is next(blocks[0].up.parameters())
    swap.release()
    assert transfer.live == set()


def test_blocks_outside_the_model_are_refused_in_one_sentence():
    blocks, _ = stack(n=3)
    with pytest.raises(ValueError, match=r"blocks to swap \[3, 7\] are outside this model's 3 blocks"):
        BlockSwap(blocks, RecordingTransfer(), swap=[0, 3, 7])


def test_on_access_baseline_fetches_every_layer_when_called_and_matches():
    transfer = RecordingTransfer()
    blocks, _ = stack(n=2)
    x = torch.randn(2, 8)
    reference = run(stack(n=2)[0], x)
    park(blocks, transfer)
    hooks = OnAccess(blocks, transfer)
    assert torch.equal(run(blocks, x), reference)
    # per block: its own scale (held for the whole block), then up, then down; every copy is waited
    # for as soon as it is started, nothing is fetched ahead
    one_block = lambda b, u, d: [
        ("fetch", b),
        ("ready", b),
        ("fetch", u),
        ("ready", u),
        ("done", u),  # noqa: E731
        ("fetch", d),
        ("ready", d),
        ("done", d),
        ("done", b),
    ]
    assert transfer.log == one_block(0, 1, 2) + one_block(3, 4, 5)
    assert hooks.moved == transfer.moved == sum(t.numel() * 4 for b in blocks for t in block_tensors(b))
    hooks.remove()


def test_gradients_through_swapped_blocks_equal_the_unswapped_model():
    """Under autograd a swapped block runs checkpointed and fetches its weights again for backward; parked
    weights hold NaN, so a backward that read them after they went home would show it."""

    def loss_and_grads(swap_some: bool):
        transfer = RecordingTransfer()
        blocks, seen = stack(n=4, transfer=transfer)
        blocks.requires_grad_(False)  # the blocks stay frozen, as under a LoRA; the input and a gain train
        gain = nn.Parameter(torch.tensor(1.5))
        x = torch.randn(3, 8, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
        swap = BlockSwap(blocks, transfer, swap=[1, 2] if swap_some else [], prefetch=True)
        swap.park()
        swap.install()
        try:
            y = x * gain
            for b in blocks:
                y = b(y)
            loss = (y**2).mean()
            loss.backward()
        finally:
            swap.uninstall()
            swap.unpark()
        return loss.detach(), x.grad, gain.grad, transfer, seen

    plain = loss_and_grads(False)
    swapped = loss_and_grads(True)
    for a, b in zip(plain[:3], swapped[:3]):
        assert torch.equal(a, b)
    transfer, seen = swapped[3], swapped[4]
    fetched = [tag for kind, tag in transfer.log if kind == "fetch"]
    assert fetched == [1, 2, 2, 1]  # forward in order, then again for backward in reverse; no prefetch
    assert not transfer.live and all(len(live) <= 1 for _, live in seen)  # one block's weights at a time


def test_a_swapped_block_that_trains_its_own_weights_is_refused_in_one_sentence():
    transfer = RecordingTransfer()
    blocks, _ = stack(n=2)
    swap = BlockSwap(blocks, transfer, swap=[1])
    swap.park()
    swap.install()
    try:
        with pytest.raises(ValueError, match="block 1 is swapped and trains 5 of its own tensors") as e:
            blocks[1](blocks[0](torch.randn(2, 8)))
        assert str(e.value).count(".") == 1
    finally:
        swap.uninstall()
        swap.unpark()
