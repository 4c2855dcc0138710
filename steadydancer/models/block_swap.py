"""Block swap: keep K transformer blocks on the accelerator and stream the others from host memory.

The streamed blocks live in one host allocation (a ``HostArena``; pinned on CUDA), each block's
tensors packed into one flat view per dtype.
Two device "slots" of the size of the largest streamed block receive them: while block i computes
in one slot, block i+1 is copied into the other on a side CUDA stream, so the copy hides behind
the compute. Events order the two streams: a copy waits until the slot's previous occupant has
finished computing, and a block's compute waits until its copy has landed.

Weights are copied bit for bit, so the output equals the all-resident model exactly. Works on any
``nn.ModuleList`` of blocks (forward hooks do the swapping; the blocks' code is untouched). On a
CPU device there are no streams: the same slot copies run synchronously (a no-op-equivalent path
used by the tests). Apply quantisation and LoRA merging before enabling the swap: the swap takes
a snapshot of the blocks' tensors.
"""

from __future__ import annotations

import contextlib
import logging
import weakref
from dataclasses import dataclass, field

import torch
from torch import nn

from steadydancer.errors import InputError

log = logging.getLogger(__name__)

__all__ = ["BlockSwap", "enable_block_swap", "check_blocks_on_gpu", "SyncStreams", "CudaStreams", "HostArena",
           "CudaHostPinner"]

_PAGE = 4096
# Every tensor of a streamed block starts at a multiple of 256 bytes in the arena and in the slots,
# as the GPU allocator's own tensors do: the kernels (and their choice by alignment) are those of
# the resident model, so the output stays bit-identical.
_ALIGN = 256


def check_blocks_on_gpu(blocks_on_gpu: int, num_blocks: int, flag: str = "--blocks_on_gpu") -> None:
    """Raise InputError unless 0 <= blocks_on_gpu <= num_blocks."""
    if not isinstance(blocks_on_gpu, int) or not 0 <= blocks_on_gpu <= num_blocks:
        raise InputError(f"{flag}: expected a whole number from 0 to {num_blocks} "
                         f"(the model has {num_blocks} blocks), got {blocks_on_gpu!r}")


@dataclass
class _Entry:
    """One tensor of a streamed block: where it sits inside its dtype's flat buffer."""
    module: nn.Module
    name: str
    is_param: bool
    dtype: torch.dtype
    offset: int
    shape: torch.Size


@dataclass
class _StreamedBlock:
    entries: list[_Entry]
    host: dict[torch.dtype, torch.Tensor]           # flat host buffers (pinned on CUDA)
    slot: int | None = None                          # slot currently holding a copy
    ready: object = None                             # event: copy finished (CUDA only)


@dataclass
class _Slot:
    buffers: dict[torch.dtype, torch.Tensor] = field(default_factory=dict)
    holder: int | None = None                        # streamed index whose copy is in it
    free: object = None                              # event: last compute using it finished


def _set_tensor(entry: _Entry, tensor: torch.Tensor) -> None:
    if entry.is_param:
        getattr(entry.module, entry.name).data = tensor
    else:
        entry.module._buffers[entry.name] = tensor


class CudaHostPinner:
    """Pins an existing host range with ``cudaHostRegister`` and unpins it with ``cudaHostUnregister``.

    Used instead of PyTorch's pinned allocator (``pin_memory=True``), which rounds every request up
    to a power of two and keeps freed pinned blocks cached for the life of the process: a 0.75 GiB
    block would pin 1 GiB, for good. A registered range pins exactly its pages and is returned by
    ``unregister``.
    """

    def register(self, address: int, nbytes: int) -> bool:
        """Pin ``nbytes`` at ``address``; False (nothing pinned) when the driver refuses."""
        cudart = torch.cuda.cudart()
        result = cudart.cudaHostRegister(address, nbytes, 0)
        if _cuda_ok(cudart, result):
            return True
        log.warning("block swap: cudaHostRegister of %.2f GiB failed (%s); the streamed blocks stay in "
                    "pageable memory (copies are then synchronous)", nbytes / 2 ** 30, result)
        return False

    def unregister(self, address: int) -> None:
        cudart = torch.cuda.cudart()
        result = cudart.cudaHostUnregister(address)
        if not _cuda_ok(cudart, result):
            log.warning("block swap: cudaHostUnregister failed (%s)", result)


def _cuda_ok(cudart, result) -> bool:
    try:
        return result == cudart.cudaError.success or int(result) == 0
    except (AttributeError, TypeError, ValueError):
        return False


class HostArena:
    """One page-aligned host allocation of ``nbytes`` that typed views are cut from.

    Its pages are committed only as the views are written, so filling it block by block while the
    source blocks are freed keeps host memory near one model. ``pin()`` then registers the whole
    range once with ``pinner`` (exactly ``nbytes`` rounded up to a page); ``release()`` (or garbage
    collection of the arena) unregisters it.
    """

    def __init__(self, nbytes: int, pinner: CudaHostPinner | None = None) -> None:
        self.nbytes = int(nbytes)
        self.pinned_bytes = 0
        self._pinner = pinner
        raw = torch.empty(self.nbytes + 2 * _PAGE, dtype=torch.uint8)
        start = (-raw.data_ptr()) % _PAGE
        self.buffer = raw[start:start + self.nbytes]
        self._finalizer = None

    def view(self, byte_offset: int, numel: int, dtype: torch.dtype) -> torch.Tensor:
        """A 1-D ``dtype`` tensor of ``numel`` elements at ``byte_offset`` (a multiple of the element size)."""
        size = numel * torch.empty((), dtype=dtype).element_size()
        return self.buffer[byte_offset:byte_offset + size].view(dtype)

    def pin(self) -> bool:
        """Pin the whole arena (once); True when its pages are pinned."""
        if self._pinner is None or self.pinned_bytes or self.nbytes == 0:
            return bool(self.pinned_bytes)
        address = self.buffer.data_ptr()
        length = -(-self.nbytes // _PAGE) * _PAGE       # the range lies inside the allocation
        if self._pinner.register(address, length):
            self.pinned_bytes = length
            # unpin when the arena goes away without release(); holding the buffer keeps the
            # memory alive until the pages are unregistered
            self._finalizer = weakref.finalize(self, _unpin, self._pinner, address, self.buffer)
            self._finalizer.atexit = False   # at exit the pages go with the process; no CUDA calls then
        return bool(self.pinned_bytes)

    def release(self) -> None:
        """Unpin the pages (the memory itself is freed when the last view goes)."""
        if self._finalizer is not None:
            self._finalizer()
            self._finalizer = None
        self.pinned_bytes = 0


def _unpin(pinner: CudaHostPinner, address: int, buffer: torch.Tensor) -> None:
    pinner.unregister(address)


class SyncStreams:
    """Stream operations of the swap on a device without streams: copies run synchronously."""

    pinner: CudaHostPinner | None = None   # how the host arena is pinned (None: not pinned)
    non_blocking = False

    def copying(self):
        """Context in which the slot copies are issued."""
        return contextlib.nullcontext()

    def copy_waits_for(self, event) -> None:
        """The copy stream waits for ``event`` (a slot's last compute)."""

    def copy_done(self):
        """An event marking the copies issued so far; None without streams."""
        return None

    def compute_waits_for(self, event) -> None:
        """The compute stream waits for ``event`` (a block's copy)."""

    def compute_done(self):
        """An event marking the compute issued so far; None without streams."""
        return None

    def drain(self) -> None:
        """The compute stream waits for every copy issued."""

    def synchronize(self) -> None:
        """The host waits for every copy issued (before host memory is unpinned)."""


class CudaStreams(SyncStreams):
    """A side CUDA stream for the copies, ordered against the compute stream by events."""

    non_blocking = True

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.copy_stream = torch.cuda.Stream(device)
        self.pinner = CudaHostPinner()

    def copying(self):
        return torch.cuda.stream(self.copy_stream)

    def copy_waits_for(self, event) -> None:
        if event is not None:
            self.copy_stream.wait_event(event)

    def copy_done(self):
        event = torch.cuda.Event()
        event.record(self.copy_stream)
        return event

    def compute_waits_for(self, event) -> None:
        if event is not None:
            torch.cuda.current_stream(self.device).wait_event(event)

    def compute_done(self):
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(self.device))
        return event

    def drain(self) -> None:
        torch.cuda.current_stream(self.device).wait_stream(self.copy_stream)

    def synchronize(self) -> None:
        self.copy_stream.synchronize()


class BlockSwap:
    """Keeps ``blocks[:blocks_on_gpu]`` on ``device`` and streams ``blocks[blocks_on_gpu:]``.

    Use ``enable_block_swap`` to build one; ``remove()`` puts every block back on the device
    (or leaves them on the host with ``to_device=False``) and detaches the hooks.
    """

    def __init__(self, blocks: nn.ModuleList, blocks_on_gpu: int, device: torch.device | str,
                 prefetch: bool = True, streams: SyncStreams | None = None) -> None:
        check_blocks_on_gpu(blocks_on_gpu, len(blocks))
        self.device = torch.device(device)
        self.blocks = blocks
        self.blocks_on_gpu = blocks_on_gpu
        self.prefetch = prefetch
        if streams is None:
            streams = CudaStreams(self.device) if self.device.type == "cuda" else SyncStreams()
        self.streams = streams
        self.bytes_copied = 0                            # host -> device traffic, for the benchmark
        self._hooks: list = []

        for block in blocks[:blocks_on_gpu]:
            block.to(self.device)
        streamed_blocks = list(blocks[blocks_on_gpu:])
        layouts = [self._layout(block) for block in streamed_blocks]
        # one host allocation for every streamed block, filled block by block (each source block
        # is freed as soon as it is copied), then pinned once
        self.arena = HostArena(sum(size for _, _, size in layouts), self.streams.pinner)
        self.streamed: list[_StreamedBlock] = []
        base = 0
        for entries, segments, size in layouts:
            self.streamed.append(self._pack(entries, segments, base))
            base += size
        self.arena.pin()
        self.slots: list[_Slot] = []
        if self.streamed:
            sizes: dict[torch.dtype, int] = {}
            for sb in self.streamed:
                for dtype, flat in sb.host.items():
                    sizes[dtype] = max(sizes.get(dtype, 0), flat.numel())
            num_slots = min(2, len(self.streamed))
            for _ in range(num_slots):
                self.slots.append(_Slot({d: torch.empty(n, dtype=d, device=self.device)
                                         for d, n in sizes.items()}))
        for index, block in enumerate(blocks[blocks_on_gpu:]):
            self._hooks.append(block.register_forward_pre_hook(self._make_pre_hook(index)))
            self._hooks.append(block.register_forward_hook(self._make_post_hook(index)))

    # ---- packing -------------------------------------------------------------------------
    @staticmethod
    def _layout(block: nn.Module) -> tuple[list[_Entry], dict[torch.dtype, tuple[int, int]], int]:
        """A block's tensors laid out in flat per-dtype segments, each tensor 256-byte aligned:
        (entries, {dtype: (byte offset in the block's span, elements)}, span bytes, a multiple of 256)."""
        entries: list[_Entry] = []
        totals: dict[torch.dtype, int] = {}
        for module in block.modules():
            named = [(n, p, True) for n, p in module._parameters.items() if p is not None]
            named += [(n, b, False) for n, b in module._buffers.items() if b is not None]
            for name, tensor, is_param in named:
                step = max(1, _ALIGN // tensor.element_size())       # elements per alignment unit
                offset = -(-totals.get(tensor.dtype, 0) // step) * step
                entries.append(_Entry(module, name, is_param, tensor.dtype, offset, tensor.shape))
                totals[tensor.dtype] = offset + tensor.numel()
        segments: dict[torch.dtype, tuple[int, int]] = {}
        span = 0
        for dtype, numel in totals.items():
            segments[dtype] = (span, numel)
            span += -(-numel * torch.empty((), dtype=dtype).element_size() // _ALIGN) * _ALIGN
        return entries, segments, span

    def _pack(self, entries: list[_Entry], segments: dict[torch.dtype, tuple[int, int]], base: int) -> _StreamedBlock:
        """Copy one block's tensors into its span of the arena (at byte ``base``) and point the
        block at those views, dropping the original storage."""
        host = {dtype: self.arena.view(base + offset, numel, dtype) for dtype, (offset, numel) in segments.items()}
        for entry in entries:
            source = getattr(entry.module, entry.name)
            view = host[entry.dtype][entry.offset:entry.offset + source.numel()].view(entry.shape)
            view.copy_(source.detach())
            _set_tensor(entry, view)                     # drops the original storage
        return _StreamedBlock(entries, host)

    def _views(self, sb: _StreamedBlock, buffers: dict[torch.dtype, torch.Tensor]) -> None:
        for entry in sb.entries:
            size = entry.shape.numel()
            _set_tensor(entry, buffers[entry.dtype][entry.offset:entry.offset + size].view(entry.shape))

    # ---- copying -------------------------------------------------------------------------
    def _load(self, index: int, avoid_slot: int | None) -> None:
        """Start copying streamed block ``index`` into a slot other than ``avoid_slot``."""
        sb = self.streamed[index]
        if sb.slot is not None:
            return                                       # still in its slot from earlier
        candidates = [s for s in range(len(self.slots)) if s != avoid_slot] or [0]
        # prefer an empty slot, else the first allowed one (with prefetch that is the one slot not
        # holding the block about to run; the copy below waits until its last compute is done)
        slot_id = next((s for s in candidates if self.slots[s].holder is None), candidates[0])
        slot = self.slots[slot_id]
        if slot.holder is not None:
            self.streamed[slot.holder].slot = None
        slot.holder = index
        sb.slot = slot_id
        with self.streams.copying():
            # the slot's previous occupant must have finished computing before it is overwritten
            self.streams.copy_waits_for(slot.free)
            for dtype, flat in sb.host.items():
                slot.buffers[dtype][:flat.numel()].copy_(flat, non_blocking=self.streams.non_blocking)
            sb.ready = self.streams.copy_done()
        self.bytes_copied += sum(flat.numel() * flat.element_size() for flat in sb.host.values())

    def _make_pre_hook(self, index: int):
        def pre_hook(module: nn.Module, args):
            sb = self.streamed[index]
            self._load(index, avoid_slot=None)
            self.streams.compute_waits_for(sb.ready)
            self._views(sb, self.slots[sb.slot].buffers)
            if self.prefetch and len(self.streamed) > 1:
                # the next streamed block (wrapping round to the first for the next forward)
                self._load((index + 1) % len(self.streamed), avoid_slot=sb.slot)
            return None
        return pre_hook

    def _make_post_hook(self, index: int):
        def post_hook(module: nn.Module, args, output):
            sb = self.streamed[index]
            slot = self.slots[sb.slot]
            slot.free = self.streams.compute_done()
            self._views(sb, sb.host)                      # point the block back at host memory
            return None
        return post_hook

    # ---- teardown ------------------------------------------------------------------------
    def remove(self, to_device: bool = True) -> None:
        """Detach the hooks; blocks end on ``device`` (or stay on the host)."""
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        self.streams.drain()
        for sb in self.streamed:
            for entry in sb.entries:
                host_view = sb.host[entry.dtype][entry.offset:entry.offset + entry.shape.numel()]
                _set_tensor(entry, (host_view.to(self.device) if to_device else host_view.clone())
                            .view(entry.shape))
        self.streamed.clear()
        self.slots.clear()
        self.streams.synchronize()                       # no copy may still read the pinned pages
        self.arena.release()

    def host_bytes(self) -> int:
        """Bytes of the host arena holding the streamed blocks (pinned on CUDA: ``arena.pinned_bytes``)."""
        return self.arena.nbytes

    def device_bytes(self) -> int:
        """Bytes of weights held on the device: resident blocks plus the two slots."""
        resident = sum(t.numel() * t.element_size() for b in self.blocks[:self.blocks_on_gpu]
                       for t in list(b.parameters()) + list(b.buffers()))
        slots = sum(buf.numel() * buf.element_size() for s in self.slots for buf in s.buffers.values())
        return resident + slots


def enable_block_swap(model: nn.Module, blocks_on_gpu: int, device: torch.device | str,
                      blocks_attr: str = "blocks", prefetch: bool = True,
                      streams: SyncStreams | None = None) -> BlockSwap:
    """Move ``model`` to ``device`` except the blocks past the first ``blocks_on_gpu``.

    ``getattr(model, blocks_attr)`` must be an ``nn.ModuleList`` whose blocks run in order.
    Those past ``blocks_on_gpu`` are streamed in on use. Raises InputError for a count out of
    range. Returns the BlockSwap (keep it; ``.remove()`` undoes the swap).
    """
    blocks = getattr(model, blocks_attr, None)
    if not isinstance(blocks, nn.ModuleList):
        raise TypeError(f"model.{blocks_attr} is not an nn.ModuleList")
    check_blocks_on_gpu(blocks_on_gpu, len(blocks))
    device = torch.device(device)
    # everything outside the blocks goes to the device now; the blocks are handled by BlockSwap
    for name, child in model.named_children():
        if child is not blocks:
            child.to(device)
    for name, param in list(model._parameters.items()):
        if param is not None:
            param.data = param.data.to(device)
    for name, buf in list(model._buffers.items()):
        if buf is not None:
            model._buffers[name] = buf.to(device)
    return BlockSwap(blocks, blocks_on_gpu, device, prefetch=prefetch, streams=streams)
