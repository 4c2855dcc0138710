"""Block swap must give exactly the all-resident output, on any ModuleList of blocks."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from steadydancer.errors import InputError
from steadydancer.models.block_swap import enable_block_swap


class ToyBlock(nn.Module):
    """A block with float32 and bfloat16 tensors and a buffer, like a quantised DiT block."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.lin = nn.Linear(dim, dim)
        self.gate = nn.Parameter(torch.randn(dim).to(torch.bfloat16))
        self.register_buffer("shift", torch.randn(dim))

    def forward(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return x + torch.tanh(self.lin(x)) * self.gate.float() * scale + self.shift


class ToyModel(nn.Module):
    def __init__(self, dim: int = 8, depth: int = 5) -> None:
        super().__init__()
        self.embed = nn.Linear(dim, dim)
        self.blocks = nn.ModuleList(ToyBlock(dim) for _ in range(depth))
        self.head = nn.Linear(dim, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        for block in self.blocks:
            x = block(x, scale=torch.tensor(0.5))
        return self.head(x)


@pytest.mark.parametrize("resident", [0, 1, 3, 4, 5])
def test_block_swap_is_exact(resident: int) -> None:
    torch.manual_seed(0)
    model = ToyModel()
    swapped = copy.deepcopy(model)
    x = torch.randn(2, 7, 8)
    with torch.no_grad():
        want = model(x)
        swap = enable_block_swap(swapped, resident, "cpu")
        got1, got2 = swapped(x), swapped(x)          # twice: slots are reused and wrapped round
    assert torch.equal(got1, want) and torch.equal(got2, want)
    streamed = 5 - resident
    assert len(swap.slots) == min(2, streamed)
    if streamed > 2:
        # every streamed block was copied in at least once per forward
        per_block = sum(t.numel() * t.element_size() for t in swapped.blocks[-1].parameters()) + 8 * 4
        assert swap.bytes_copied >= 2 * streamed * per_block
    swap.remove()
    with torch.no_grad():
        assert torch.equal(swapped(x), want)
    assert swapped.blocks[-1].lin.weight.data_ptr() != model.blocks[-1].lin.weight.data_ptr()


def test_streamed_blocks_point_at_host_buffers_between_calls() -> None:
    model = ToyModel()
    swap = enable_block_swap(model, 2, "cpu")
    flat = swap.streamed[0].host[torch.float32]
    weight = model.blocks[2].lin.weight
    start = flat.data_ptr()
    assert start <= weight.data_ptr() < start + flat.numel() * 4
    assert model.blocks[2].gate.dtype == torch.bfloat16 and model.blocks[2].shift.dtype == torch.float32


@pytest.mark.parametrize("count", [-1, 6, 2.5])
def test_block_count_out_of_range_is_one_clear_line(count) -> None:
    with pytest.raises(InputError, match=r"--blocks_on_gpu: expected a whole number from 0 to 5"):
        enable_block_swap(ToyModel(), count, "cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA for the side-stream path")
def test_block_swap_cuda_side_stream_is_exact() -> None:
    torch.manual_seed(0)
    model = ToyModel(dim=256, depth=7)
    reference = copy.deepcopy(model).cuda()
    x = torch.randn(2, 64, 256, device="cuda")
    with torch.no_grad():
        want = reference(x)
        swap = enable_block_swap(model, 2, "cuda")
        outs = [model(x) for _ in range(3)]
    torch.cuda.synchronize()
    assert all(torch.equal(o, want) for o in outs)
    assert swap.streamed[0].host[torch.float32].is_pinned()


class RecordingStreams:
    """Stands in for CudaStreams on the CPU: logs every wait and event in program order."""

    pinner = None
    non_blocking = False

    def __init__(self, log: list) -> None:
        self.log, self.count = log, 0

    def copying(self):
        import contextlib
        return contextlib.nullcontext()

    def _event(self, kind: str) -> int:
        self.count += 1
        self.log.append((kind, self.count))
        return self.count

    def copy_waits_for(self, event) -> None:
        self.log.append(("copy_wait", event))

    def copy_done(self):
        return self._event("copy_done")

    def compute_waits_for(self, event) -> None:
        self.log.append(("compute_wait", event))

    def compute_done(self):
        return self._event("compute_done")

    def drain(self) -> None:
        self.log.append(("drain", None))

    def synchronize(self) -> None:
        self.log.append(("synchronize", None))


@pytest.mark.parametrize("resident,depth", [(0, 5), (1, 5), (2, 7), (3, 5)])
def test_side_stream_protocol_orders_every_copy_and_compute(resident: int, depth: int) -> None:
    """With a logging stand-in for the CUDA streams: every streamed block's compute waits for the
    event of the copy that brought its weights, and every copy into a slot waits for an event
    recorded after the last compute that read that slot (so prefetching never races)."""
    torch.manual_seed(0)
    log: list = []
    model = ToyModel(depth=depth)
    for index, block in enumerate(model.blocks):
        # on an inner layer, so that it logs after the swap's own pre-hook has run
        block.lin.register_forward_pre_hook(lambda m, a, i=index: log.append(("compute", i)))
    swap = enable_block_swap(model, resident, "cpu", streams=RecordingStreams(log))
    original_load = swap._load

    def logged_load(index, avoid_slot):
        before = swap.streamed[index].ready
        original_load(index, avoid_slot)
        sb = swap.streamed[index]
        if sb.ready is not before:
            log.append(("copied", resident + index, sb.slot, sb.ready))
    swap._load = logged_load
    x = torch.randn(2, 3, 8)
    with torch.no_grad():
        for _ in range(3):
            model(x)

    last_copy: dict[int, tuple[int, int]] = {}        # block -> (slot, ready event) of its latest copy
    last_compute_on_slot: dict[int, int] = {}          # slot -> log position of its latest compute
    compute_waits: set[int] = set()
    for pos, entry in enumerate(log):
        kind = entry[0]
        if kind == "compute_wait":
            compute_waits.add(entry[1])
        elif kind == "copied":
            _, block, slot, ready = entry
            wait = log[pos - 2]                         # copy_wait, copy_done, copied
            assert wait[0] == "copy_wait"
            if slot in last_compute_on_slot:
                done = [i for i, e in enumerate(log) if e == ("compute_done", wait[1])]
                assert done and done[0] > last_compute_on_slot[slot], (block, slot)
            last_copy[block] = (slot, ready)
        elif kind == "compute" and entry[1] >= resident:
            slot, ready = last_copy[entry[1]]
            assert ready in compute_waits, entry
            last_compute_on_slot[slot] = pos
    assert sum(1 for e in log if e[0] == "copied") >= (depth - resident if depth - resident > 2 else 1)
