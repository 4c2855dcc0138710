"""GPU code paths that the CPU can still check (issue 15), and their CUDA twins for scripts/gpu_check.sh.

Each CPU test stands in for the piece of the GPU stack that misbehaved: FSDP's root rule of torch
< 2.8 (emulated on this torch), the pinned-memory registration (a counting pinner), a flash-attn 3
build that refuses head size 32, a kernel that runs out of memory, ``torch._scaled_mm`` of torch
2.4 (which returned a tuple). The tests marked CUDA run only where a GPU is visible.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from memory_helpers import tiny_conditions, tiny_dit, tiny_latents
from steadydancer.distributed.testing import run_on_gloo
from steadydancer.models.block_swap import SyncStreams, enable_block_swap

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs CUDA")


# ---- 1. FSDP: the model is the root, so blocks reshard after their forward ----------------------

def _emulate_torch_before_2_8() -> None:
    """Make this torch's FSDP2 treat a root as torch < 2.8 did: never reshard after forward,
    whatever ``reshard_after_forward`` says (pytorch #154704 changed that in 2.8)."""
    from torch.distributed.fsdp._fully_shard._fsdp_state import FSDPState

    original = FSDPState._lazy_init

    def lazy_init(self) -> None:
        first = self._is_root is None
        original(self)
        if first and self._is_root:
            groups = getattr(self, "_fsdp_param_groups", None) or [getattr(self, "_fsdp_param_group", None)]
            for group in groups:
                if group is not None:
                    group.post_forward_mesh_info = None

    FSDPState._lazy_init = lazy_init


def _unsharded_after_forward(modules: list[nn.Module]) -> list[str]:
    """Names of parameters still gathered (not registered as sharded DTensors)."""
    from torch.distributed.tensor import DTensor

    return [f"{i}.{name}" for i, module in enumerate(modules) for name, p in module.named_parameters()
            if not isinstance(p, DTensor)]


def _fsdp_worker(rank: int, world_size: int) -> dict:
    from transformers import UMT5Config, UMT5EncoderModel

    from steadydancer.distributed.fsdp import shard_dit, shard_text_encoder
    from steadydancer.distributed.sequence_parallel import sequence_parallel_dit

    _emulate_torch_before_2_8()
    model = tiny_dit()
    cond, latents = tiny_conditions(), tiny_latents()
    t = torch.tensor([500.0])
    with torch.no_grad():
        single = model(latents, t, **cond.as_kwargs())
        shard_dit(model, "cpu")
        fsdp = model(latents, t, **cond.as_kwargs())
        dit_gathered = _unsharded_after_forward(list(model.blocks))
        both = sequence_parallel_dit(model, ulysses_size=2, ring_size=1, backend="torch")(
            latents, t, **cond.as_kwargs())
        sp_gathered = _unsharded_after_forward(list(model.blocks))

    torch.manual_seed(0)
    t5 = UMT5EncoderModel(UMT5Config(vocab_size=64, d_model=16, d_kv=4, d_ff=32, num_layers=2, num_heads=2,
                                     relative_attention_num_buckets=8)).eval()

    class Encoder:  # the two attributes shard_text_encoder uses
        model, device = t5, None

    ids = torch.randint(0, 64, (1, 7), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        t5_single = t5(input_ids=ids).last_hidden_state
        shard_text_encoder(Encoder, "cpu")
        t5_fsdp = t5(input_ids=ids).last_hidden_state
    return {"single": single, "fsdp": fsdp, "fsdp+sp": both, "dit_gathered": dit_gathered,
            "sp_gathered": sp_gathered, "t5_gathered": _unsharded_after_forward(list(t5.encoder.block)),
            "t5_err": ((t5_fsdp - t5_single).norm() / t5_single.norm()).item()}


def test_fsdp_blocks_are_sharded_again_after_a_forward_even_with_the_old_root_rule():
    for result in run_on_gloo(_fsdp_worker, 2):
        assert result["dit_gathered"] == [] and result["sp_gathered"] == [] and result["t5_gathered"] == []
        assert torch.allclose(result["fsdp"], result["single"], rtol=1e-5, atol=1e-6)
        assert torch.allclose(result["fsdp+sp"], result["single"], rtol=1e-4, atol=1e-5)
        assert result["t5_err"] < 1e-5


# ---- 2. block swap: one pinned arena of exactly the streamed bytes -----------------------------

class CountingPinner:
    """Stands in for cudaHostRegister/cudaHostUnregister: records every request."""

    def __init__(self) -> None:
        self.registered: list[tuple[int, int]] = []
        self.unregistered: list[int] = []

    def register(self, address: int, nbytes: int) -> bool:
        self.registered.append((address, nbytes))
        return True

    def unregister(self, address: int) -> None:
        self.unregistered.append(address)


class PinningSyncStreams(SyncStreams):
    def __init__(self, pinner: CountingPinner) -> None:
        self.pinner = pinner


def _tensor_bytes(blocks) -> int:
    return sum(t.numel() * t.element_size() for b in blocks for t in list(b.parameters()) + list(b.buffers()))


def test_block_swap_pins_one_arena_of_the_streamed_bytes_and_unpins_it():
    model = tiny_dit(num_layers=4)
    reference = copy.deepcopy(model)
    cond, latents, t = tiny_conditions(), tiny_latents(), torch.tensor([500.0])
    streamed_bytes = _tensor_bytes(model.blocks[1:])
    pinner = CountingPinner()
    with torch.no_grad():
        swap = enable_block_swap(model, 1, "cpu", streams=PinningSyncStreams(pinner))
        assert torch.equal(model(latents, t, **cond.as_kwargs()), reference(latents, t, **cond.as_kwargs()))
    assert len(pinner.registered) == 1                        # one request, not one per block
    address, nbytes = pinner.registered[0]
    # exactly the streamed tensors, up to 64-byte segment alignment and the last page
    assert streamed_bytes <= nbytes <= streamed_bytes + 64 * 3 * 8 + 4096
    assert address % 4096 == 0
    for block in model.blocks[1:]:
        for p in block.parameters():
            assert address <= p.data_ptr() < address + nbytes
    swap.remove()
    assert pinner.unregistered == [address]


def test_block_swap_arena_is_unpinned_when_the_model_goes_without_remove():
    pinner = CountingPinner()
    model = tiny_dit(num_layers=3)
    swap = enable_block_swap(model, 0, "cpu", streams=PinningSyncStreams(pinner))
    address = pinner.registered[0][0]
    del swap, model                     # the blocks' hooks held the swap, and the swap its arena
    import gc
    gc.collect()
    assert pinner.unregistered == [address]


@needs_cuda
def test_block_swap_cuda_arena_is_pinned_exactly_and_exact():
    model = tiny_dit(num_layers=4).to(torch.bfloat16)
    reference = copy.deepcopy(model).cuda()
    cond = tiny_conditions().to(device="cuda", dtype=torch.bfloat16)
    latents, t = tiny_latents().cuda().to(torch.bfloat16), torch.tensor([500.0], device="cuda")
    with torch.no_grad():
        swap = enable_block_swap(model, 1, "cuda")
        assert swap.arena.pinned_bytes >= swap.arena.nbytes and swap.arena.buffer.is_pinned()
        got = model(latents, t, **cond.as_kwargs())
        torch.cuda.synchronize()
        assert torch.equal(got, reference(latents, t, **cond.as_kwargs()))
    swap.remove()
    assert swap.arena.pinned_bytes == 0
