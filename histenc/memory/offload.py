"""Block swap: transformer blocks whose weights live in host memory, streamed in just before they run.

Why: a 14B DiT in fp8 is 14 GB of weights and a 6-12 GB card cannot hold it beside the activations
of a long context. Each block's weights are needed for a few milliseconds per step, so they can
live in pinned host memory and cross PCIe while the previous block computes.

Two roles are kept apart so the schedule is testable without a GPU:

- a ``Transfer`` knows *where* tensors live and *how* they move (``CudaTransfer``: pinned host
  memory, two reusable device buffers, copies on a side stream; ``RecordingTransfer``: a CPU
  stand-in that logs every move and poisons parked weights with NaN, so a block that ran without
  its weights shows it);
- ``BlockSwap`` decides *when*: block ``i`` is fetched (or was prefetched), the next block that has
  parked tensors is prefetched before block ``i``'s kernels are issued, block ``i``'s device copies
  are released right after them. At most two blocks are on the device at once.

"Parked" means "not on the compute device": ``BlockSwap.park`` parks blocks itself (plain torch,
training), or something else parked them first (ComfyUI's lowvram mode keeps offloaded layers in
its own pinned memory); either way the engine streams exactly what is parked. ``OnAccess`` is the
baseline without prefetch (weights copied when a layer is called, as FramePack's DynamicSwap does).

The blocks of a ComfyUI DiT, in execution order, come from ``histenc.dit.info.dit_blocks`` (``model_blocks``
here): Wan's ``blocks``, HunyuanVideo's ``double_blocks`` then ``single_blocks``.

Training: under autograd a swapped block runs checkpointed (``torch.utils.checkpoint``, non-reentrant). Its
forward saves nothing of the block; backward recomputes it with the weights fetched again into fresh device
memory, held by stand-in tensors that the recomputed graph keeps until that block's gradients are done (swapping
``.data`` back would change what autograd saved). So gradients through swapped blocks are those of the unswapped
model and one block's weights are on the device at a time; the swapped blocks' own weights must be frozen (a
LoRA trains beside them), and prefetch is off while gradients are recorded (backward runs blocks in reverse).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Callable, Iterable, Protocol, Sequence

import torch
from torch import nn

ALIGN = 256  # bytes; device views start on this boundary so any dtype can view them


def model_blocks(dm) -> list[nn.Module]:
    """The DiT's transformer blocks in execution order, for ``BlockSwap(model_blocks(dm), ...)`` on any family."""
    from ..dit.info import dit_blocks

    return [b for _, b in dit_blocks(dm)]


def block_tensors(block: nn.Module) -> list[torch.Tensor]:
    """Parameters and buffers of a block, each once (shared weights are moved once)."""
    seen, out = set(), []
    for t in list(block.parameters()) + list(block.buffers()):
        if id(t) not in seen and t.numel() > 0:
            seen.add(id(t))
            out.append(t)
    return out


def nbytes(t: torch.Tensor) -> int:
    """Bytes of storage: ``Tensor.nbytes`` is right for quantised weights (fp8 with scales, GGUF blocks, 0.33's
    QuantizedTensor), where ``numel() * element_size()`` counts the dequantised dtype."""
    return int(t.nbytes)


@dataclass
class Fetch:
    """Device copies of one block's parked tensors, on their way or arrived."""

    tag: int
    targets: list[torch.Tensor]  # the block's parameters / buffers
    copies: list[torch.Tensor]  # their device copies, same order
    bytes: int
    handle: object = None  # transfer-specific (CUDA event, slot)
    homes: list[torch.Tensor] = field(default_factory=list)  # the targets' host tensors while swapped in


class Transfer(Protocol):
    """Where parked tensors live and how they reach the compute device."""

    def park(self, t: torch.Tensor) -> torch.Tensor:
        """The tensor's home while its block is not running (pinned host memory)."""
        ...

    def parked(self, t: torch.Tensor) -> bool: ...

    def restore(self, t: torch.Tensor) -> torch.Tensor:
        """A parked tensor brought back to the compute device for good."""
        ...

    def fetch(self, tag: int, targets: list[torch.Tensor], fresh: bool = False) -> Fetch:
        """Start copying ``targets`` to the device; must not wait for the copies to finish. ``fresh``: into new
        memory that lives as long as the copies are referenced (autograd keeps them), not into reused buffers."""
        ...

    def ready(self, fetch: Fetch) -> None:
        """Make the compute stream wait until ``fetch`` has arrived."""
        ...

    def done(self, fetch: Fetch) -> None:
        """The block's kernels are issued; its copies may be overwritten once they finish."""
        ...

    def release(self) -> None:
        """Give back device buffers (between sampling runs)."""
        ...


class CudaTransfer:
    """Pinned host memory, two device slots used in turn, copies on a side stream.

    Two fixed slots instead of fresh allocations keep the swap's device memory at exactly two
    blocks no matter how far the host runs ahead, and let the side stream order itself after the
    compute that last read a slot (an event) instead of the host waiting for it.
    """

    def __init__(self, device, pin: bool = True):
        self.device = torch.device(device)
        if self.device.type != "cuda" or not torch.cuda.is_available():
            raise ValueError(
                f"block swap streams weights to a CUDA device, got {self.device}; "
                "run on a CUDA GPU or leave the model unswapped."
            )
        self.pin = pin
        self.stream = torch.cuda.Stream(self.device)
        self.slots: list[torch.Tensor | None] = [None, None]
        self.freed: list[torch.cuda.Event | None] = [None, None]
        self.turn = 0

    def park(self, t: torch.Tensor) -> torch.Tensor:
        host = t.detach().to("cpu", copy=True).contiguous()
        return host.pin_memory() if self.pin else host

    def parked(self, t: torch.Tensor) -> bool:
        return t.device != self.device

    def restore(self, t: torch.Tensor) -> torch.Tensor:
        return t.data.to(self.device)

    def fetch(self, tag: int, targets: list[torch.Tensor], fresh: bool = False) -> Fetch:
        if fresh:
            return self._fetch_fresh(tag, targets)
        slot, self.turn = self.turn, 1 - self.turn
        sizes = [math.ceil(nbytes(t) / ALIGN) * ALIGN for t in targets]
        need = sum(sizes)
        compute = torch.cuda.current_stream(self.device)
        if self.slots[slot] is None or self.slots[slot].numel() < need:
            self.slots[slot] = None
            self.slots[slot] = torch.empty(need, dtype=torch.uint8, device=self.device)
            self.stream.wait_stream(compute)  # fresh memory may still be read by earlier kernels
        copies, loose, offset = [], [], 0
        with torch.cuda.stream(self.stream):
            if self.freed[slot] is not None:
                self.stream.wait_event(self.freed[slot])
            for t, size in zip(targets, sizes):
                if type(t.data) is torch.Tensor:
                    view = self.slots[slot][offset : offset + nbytes(t)].view(t.dtype).view(t.shape)
                    view.copy_(t.data, non_blocking=True)
                else:  # tensor subclasses (quantized layouts) move as themselves
                    view = t.data.to(self.device, non_blocking=True)
                    loose.append(view)
                copies.append(view)
                offset += size
            arrived = torch.cuda.Event()
            arrived.record(self.stream)
        return Fetch(tag, targets, copies, sum(nbytes(t) for t in targets), (arrived, slot, loose))

    def _fetch_fresh(self, tag: int, targets: list[torch.Tensor]) -> Fetch:
        """Copies in new device memory on the side stream (kept alive for compute by ``ready``)."""
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.stream):
            copies = [t.data.to(self.device, non_blocking=True) for t in targets]
            arrived = torch.cuda.Event()
            arrived.record(self.stream)
        return Fetch(tag, targets, copies, sum(nbytes(t) for t in targets), (arrived, None, copies))

    def ready(self, fetch: Fetch) -> None:
        arrived, _, loose = fetch.handle
        compute = torch.cuda.current_stream(self.device)
        compute.wait_event(arrived)
        for c in loose:  # allocated on the side stream: keep it until compute has read it
            c.record_stream(compute)

    def done(self, fetch: Fetch) -> None:
        _, slot, _ = fetch.handle
        if slot is None:  # fresh memory: freed when its last reader is done with it
            return
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(self.device))
        self.freed[slot] = event

    def release(self) -> None:
        torch.cuda.current_stream(self.device).wait_stream(self.stream)
        self.slots, self.freed, self.turn = [None, None], [None, None], 0


class RecordingTransfer:
    """CPU stand-in for a device: logs every move; parked tensors hold NaN until fetched.

    ``log`` gets ("fetch" | "ready" | "done", tag); ``live`` is the set of tags whose copies exist
    (fetched, not yet done): what a GPU would hold at that moment.
    """

    def __init__(self):
        self.store: dict[int, torch.Tensor] = {}
        self.log: list[tuple[str, int]] = []
        self.live: set[int] = set()
        self.moved = 0

    def park(self, t: torch.Tensor) -> torch.Tensor:
        placeholder = torch.full_like(t.data, float("nan")) if t.is_floating_point() else torch.zeros_like(t.data)
        self.store[placeholder.data_ptr()] = t.detach().clone()
        return placeholder

    def parked(self, t: torch.Tensor) -> bool:
        return t.data_ptr() in self.store

    def restore(self, t: torch.Tensor) -> torch.Tensor:
        return self.store.pop(t.data_ptr())

    def fetch(self, tag: int, targets: list[torch.Tensor], fresh: bool = False) -> Fetch:
        self.log.append(("fetch", tag))
        self.live.add(tag)
        copies = [self.store[t.data_ptr()].clone() for t in targets]
        size = sum(nbytes(t) for t in targets)
        self.moved += size
        return Fetch(tag, targets, copies, size)

    def ready(self, fetch: Fetch) -> None:
        self.log.append(("ready", fetch.tag))

    def done(self, fetch: Fetch) -> None:
        self.log.append(("done", fetch.tag))
        self.live.discard(fetch.tag)

    def release(self) -> None:
        self.live.clear()


def park(modules: Iterable[nn.Module], transfer: Transfer) -> int:
    """Give every tensor of ``modules`` its home in the transfer's host memory; returns the bytes moved.

    Use it for the text / time embeddings or a context source's own modules as well: they run once
    per step or section, so a ``BlockSwap`` over them without prefetch fetches them on call.
    """
    total = 0
    for m in modules:
        for t in block_tensors(m):
            if not transfer.parked(t):
                t.data = transfer.park(t)
                total += nbytes(t)
    return total


def _owners(block: nn.Module) -> dict[int, list[tuple[dict, str]]]:
    """id(tensor) -> every (module's parameter / buffer table, name) that holds it inside ``block``."""
    out: dict[int, list[tuple[dict, str]]] = {}
    for m in block.modules():
        for table in (m._parameters, m._buffers):
            for name, t in table.items():
                if t is not None:
                    out.setdefault(id(t), []).append((table, name))
    return out


@dataclass
class SwapStats:
    fetched_bytes: int = 0
    fetches: int = 0
    prefetch_hits: int = 0
    per_block: dict[int, int] = field(default_factory=dict)


class BlockSwap:
    """Streams the parked tensors of ``blocks`` through a ``Transfer`` around each block's call.

    ``swap`` lists the blocks that may hold parked tensors (default: all). ``prefetch`` starts the
    next such block's copies before the current block's kernels are issued.
    """

    def __init__(
        self, blocks: Sequence[nn.Module], transfer: Transfer, swap: Iterable[int] | None = None, prefetch: bool = True
    ):
        self.blocks = list(blocks)
        n = len(self.blocks)
        self.swap = sorted(set(range(n) if swap is None else (int(i) for i in swap)))
        bad = [i for i in self.swap if not 0 <= i < n]
        if bad:
            raise ValueError(
                f"blocks to swap {bad} are outside this model's {n} blocks (0..{n - 1}); pick at most {n} blocks."
            )
        self.transfer = transfer
        self.prefetch = prefetch
        self.pending: Fetch | None = None
        self.stats = SwapStats()
        self._originals: dict[int, Callable] = {}
        self._parked: dict[int, list[torch.Tensor]] = {}  # residency is fixed while a run lasts

    # ----- where weights live
    def park(self, indices: Iterable[int] | None = None) -> int:
        """Move the tensors of ``indices`` (default: ``swap``) to the transfer's home; returns bytes parked."""
        self._parked.clear()
        return park([self.blocks[i] for i in (self.swap if indices is None else indices)], self.transfer)

    def unpark(self) -> None:
        """Bring every parked tensor of the swapped blocks back to the compute device for good."""
        self.release()
        for i in self.swap:
            for t in block_tensors(self.blocks[i]):
                if self.transfer.parked(t):
                    t.data = self.transfer.restore(t)

    def parked(self, i: int) -> list[torch.Tensor]:
        if i not in self._parked:
            self._parked[i] = [t for t in block_tensors(self.blocks[i]) if self.transfer.parked(t)]
        return self._parked[i]

    def parked_bytes(self) -> int:
        return sum(nbytes(t) for i in self.swap for t in self.parked(i))

    def next_swapped(self, i: int) -> int | None:
        """The block after ``i`` in run order (wrapping to the next step) that has parked tensors."""
        later = [j for j in self.swap if j > i] + [j for j in self.swap if j <= i]
        for j in later:
            if j != i and self.parked(j):
                return j
        return None

    # ----- when they move
    def _start(self, i: int, fresh: bool = False) -> Fetch | None:
        targets = self.parked(i)
        if not targets:
            return None
        return self.transfer.fetch(i, targets, fresh=fresh)

    def run(self, i: int, fn: Callable, *args, **kwargs):
        """Call ``fn`` (block ``i``'s forward) with its parked tensors swapped for device copies; under autograd
        checkpointed, with the weights fetched again for backward (see the module docstring)."""
        if torch.is_grad_enabled() and i in self.swap and self.parked(i):
            from torch.utils.checkpoint import checkpoint

            self.discard_pending()
            return checkpoint(self._fresh_run, i, fn, *args, use_reentrant=False, **kwargs)
        fetch = None
        if i in self.swap:
            if self.pending is not None and self.pending.tag == i:
                fetch, self.pending = self.pending, None
                self.stats.prefetch_hits += 1
            else:
                self.discard_pending()
                fetch = self._start(i)
        if self.prefetch and i in self.swap:
            j = self.next_swapped(i)
            if j is not None and (self.pending is None or self.pending.tag != j):
                self.discard_pending()
                self.pending = self._start(j)
        return self._swapped(fetch, i, fn, *args, **kwargs)

    def _fresh_run(self, i: int, fn: Callable, *args, **kwargs):
        """Block ``i`` with its weights in fresh device memory, as tensors of their own: what a checkpointed block
        runs, in forward and again in backward. The block's modules hold the copies in place of their parameters
        and buffers for the call, so what autograd saves of them (the tensors themselves, for frozen weights)
        stays the fetched numbers after the originals went home."""
        trained = [t for t in self.parked(i) if t.requires_grad]
        if trained:
            raise ValueError(
                f"block {i} is swapped and trains {len(trained)} of its own tensors, whose gradients the swap "
                "cannot carry; keep the swapped blocks frozen (train a LoRA beside them) or swap fewer blocks."
            )
        fetch = self._start(i, fresh=True)
        if fetch is None:
            return fn(*args, **kwargs)
        self.transfer.ready(fetch)
        slots = _owners(self.blocks[i])
        held = []
        for t, c in zip(fetch.targets, fetch.copies):
            stand_in = nn.Parameter(c, requires_grad=False) if isinstance(t, nn.Parameter) else c
            for table, name in slots[id(t)]:
                held.append((table, name, t))
                table[name] = stand_in
        try:
            return fn(*args, **kwargs)
        finally:
            for table, name, t in held:
                table[name] = t
            self.transfer.done(fetch)
            self.stats.fetched_bytes += fetch.bytes
            self.stats.fetches += 1
            self.stats.per_block[i] = fetch.bytes

    def _swapped(self, fetch: Fetch | None, i: int, fn: Callable, *args, **kwargs):
        if fetch is None:
            return fn(*args, **kwargs)
        self.transfer.ready(fetch)
        fetch.homes = [t.data for t in fetch.targets]
        for t, c in zip(fetch.targets, fetch.copies):
            t.data = c
        try:
            return fn(*args, **kwargs)
        finally:
            for t, h in zip(fetch.targets, fetch.homes):
                t.data = h
            self.transfer.done(fetch)
            self.stats.fetched_bytes += fetch.bytes
            self.stats.fetches += 1
            self.stats.per_block[i] = fetch.bytes

    def discard_pending(self) -> None:
        if self.pending is not None:
            self.transfer.done(self.pending)
            self.pending = None

    def release(self) -> None:
        """Drop a prefetch left over from the last step, the transfer's device buffers and what was parked."""
        self.discard_pending()
        self.transfer.release()
        self._parked.clear()

    # ----- plain torch installation (ComfyUI installs ``wrap`` through object patches instead)
    def wrap(self, i: int, forward: Callable) -> Callable:
        return functools.partial(self.run, i, forward)

    def install(self) -> "BlockSwap":
        for i, block in enumerate(self.blocks):
            if i in self.swap and i not in self._originals:
                own = block.__dict__.get("forward")  # a forward set on the instance (an object patch) comes back
                self._originals[i] = (block.forward, own)
                block.forward = self.wrap(i, block.forward)
        return self

    def uninstall(self) -> None:
        for i, (_, own) in self._originals.items():
            if own is None:
                del self.blocks[i].forward
            else:
                self.blocks[i].forward = own
        self._originals.clear()
        self.release()


class OnAccess:
    """Baseline without prefetch: each layer's parked weights are fetched when the layer is called.

    The same transfer as ``BlockSwap`` moves them, so a comparison isolates the schedule: here
    every copy is waited for right away and nothing overlaps the previous layer's compute.
    """

    def __init__(self, blocks: Sequence[nn.Module], transfer: Transfer):
        self.transfer = transfer
        self.handles = []
        self.moved = 0
        self._live: dict[int, Fetch] = {}
        layer = 0
        for block in blocks:
            for m in block.modules():
                own = [t for t in list(m.parameters(recurse=False)) + list(m.buffers(recurse=False)) if t.numel()]
                if own:
                    self.handles.append(m.register_forward_pre_hook(functools.partial(self._bring, layer, own)))
                    self.handles.append(m.register_forward_hook(functools.partial(self._return, layer)))
                    layer += 1

    def _bring(self, layer, own, module, args):
        targets = [t for t in own if self.transfer.parked(t)]
        if not targets:
            return
        fetch = self.transfer.fetch(layer, targets)
        self.transfer.ready(fetch)
        fetch.homes = [t.data for t in targets]
        for t, c in zip(targets, fetch.copies):
            t.data = c
        self._live[layer] = fetch
        self.moved += fetch.bytes

    def _return(self, layer, module, args, output):
        fetch = self._live.pop(layer, None)
        if fetch is not None:
            for t, h in zip(fetch.targets, fetch.homes):
                t.data = h
            self.transfer.done(fetch)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()
        self.transfer.release()
