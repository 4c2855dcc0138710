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
    # exactly the streamed tensors, up to each one's 256-byte alignment and the last page
    tensors = sum(1 for b in model.blocks[1:] for _ in list(b.parameters()) + list(b.buffers()))
    assert streamed_bytes <= nbytes <= streamed_bytes + 256 * tensors + 4096
    assert address % 4096 == 0
    for block in model.blocks[1:]:
        for p in block.parameters():
            assert address <= p.data_ptr() < address + nbytes and p.data_ptr() % 256 == 0
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


# ---- 4. flash-attn 3 gets only the head sizes its builds compile --------------------------------

class FakeFlash:
    """A flash-attn module stand-in: SDPA numbers, refusing head sizes outside ``head_sizes``."""

    def __init__(self, head_sizes=None, error: type[BaseException] = RuntimeError) -> None:
        self.head_sizes, self.error, self.calls = head_sizes, error, []

    def flash_attn_func(self, q, k, v):
        self.calls.append(q.shape[-1])
        if self.head_sizes is not None and q.shape[-1] not in self.head_sizes:
            raise self.error("FlashAttention forward only supports head dimension 64, 128 or 256")
        return torch.nn.functional.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)


@pytest.fixture
def fake_flash(monkeypatch):
    """Installs fake flash3/flash2 modules and lets bf16 CPU tensors count as flash-capable."""
    from steadydancer.models import attention as attn

    def install(fa3=None, fa2=None):
        monkeypatch.setattr(attn, "_fa3", fa3)
        monkeypatch.setattr(attn, "_fa2", fa2)
        monkeypatch.setattr(attn, "_flash_applicable", lambda q: q.dtype == torch.bfloat16)
        monkeypatch.setattr(attn, "_refused", set())
        monkeypatch.setattr(attn, "_forced", None)
        monkeypatch.delenv(attn.ENV_VAR, raising=False)
        return attn
    return install


def _qkv(head_dim: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, 6, 2, head_dim, generator=g).to(torch.bfloat16) for _ in range(3)]


def test_auto_attention_never_hands_flash3_a_head_size_its_builds_lack(fake_flash):
    fa3 = FakeFlash(head_sizes={64, 128, 256})
    attn = fake_flash(fa3=fa3)
    q, k, v = _qkv(32)                                    # the parity models' head size
    assert attn.select_backend(q) == "sdpa"
    want = attn._run_backend("sdpa", q, k, v)
    assert torch.equal(attn.attention(q, k, v), want) and fa3.calls == []
    fa2 = FakeFlash()
    attn = fake_flash(fa3=fa3, fa2=fa2)
    assert attn.select_backend(q) == "flash2"
    attn.attention(q, k, v)
    assert fa2.calls == [32] and fa3.calls == []
    q, k, v = _qkv(64)
    attn.attention(q, k, v)
    assert fa3.calls == [64]


def test_a_head_size_refused_at_run_time_goes_to_the_next_backend_once(fake_flash):
    fa3 = FakeFlash(head_sizes={64, 256})                 # a build without 128
    attn = fake_flash(fa3=fa3)
    q, k, v = _qkv(128)
    want = attn._run_backend("sdpa", q, k, v)
    assert torch.equal(attn.attention(q, k, v), want)
    assert torch.equal(attn.attention(q, k, v), want)
    assert fa3.calls == [128]                             # tried once, remembered
    assert attn.select_backend(q) == "sdpa"


def test_out_of_memory_in_a_flash_kernel_is_raised_not_remembered(fake_flash):
    fa3 = FakeFlash(head_sizes=set(), error=torch.OutOfMemoryError)
    attn = fake_flash(fa3=fa3)
    q, k, v = _qkv(64)
    for _ in range(2):
        with pytest.raises(torch.OutOfMemoryError):
            attn.attention(q, k, v)
    assert fa3.calls == [64, 64] and attn.select_backend(q) == "flash3"


# ---- 5. ring attention: an OOM in the fused kernel does not switch it off for good --------------

def test_ring_fused_kernel_out_of_memory_does_not_latch_the_math_path(monkeypatch):
    from steadydancer.distributed import attention as ring

    monkeypatch.setattr(ring, "_fused_lse_broken", False)
    real = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    failures = iter([torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")])

    class Ops:  # torch.ops.aten with the CPU kernel failing once
        @staticmethod
        def _scaled_dot_product_flash_attention_for_cpu(*args):
            error = next(failures, None)
            if error is not None:
                raise error
            return real(*args)

    monkeypatch.setattr(ring.torch.ops, "aten", Ops)
    q, k, v = (torch.randn(1, 5, 2, 16) for _ in range(3))
    with pytest.raises(torch.OutOfMemoryError):
        ring.attention_with_lse(q, k, v)
    assert ring._fused_lse_broken is False
    fused = ring._fused_attention_with_lse(q, k, v)        # the next block uses the kernel again
    assert fused is not None
    out, lse = ring._math_attention_with_lse(q, k, v)
    assert torch.allclose(fused[0], out, atol=1e-5) and torch.allclose(fused[1], lse, atol=1e-5)


def test_ring_fused_kernel_other_failures_still_fall_back(monkeypatch):
    from steadydancer.distributed import attention as ring

    monkeypatch.setattr(ring, "_fused_lse_broken", False)

    class Ops:
        @staticmethod
        def _scaled_dot_product_flash_attention_for_cpu(*args):
            raise RuntimeError("no kernel image is available for execution on the device")

    monkeypatch.setattr(ring.torch.ops, "aten", Ops)
    q, k, v = (torch.randn(1, 5, 2, 16) for _ in range(3))
    out, lse = ring.attention_with_lse(q, k, v)
    assert ring._fused_lse_broken is True and out.shape == q.shape


# ---- 6. xfuser built inside the guard -------------------------------------------------------------

def test_xfuser_that_cannot_be_built_means_torch_attention(monkeypatch):
    import sys
    import types

    from steadydancer.distributed import attention as ring

    class Unbuildable:
        def __init__(self):
            raise RuntimeError("yunchang: sequence parallel process groups are not initialised")

    module = types.ModuleType("xfuser.core.long_ctx_attention")
    module.xFuserLongContextAttention = Unbuildable
    for name in ("xfuser", "xfuser.core"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "xfuser.core.long_ctx_attention", module)
    assert ring._xfuser_attention_or_none() is None


# ---- 3. FP8 matmuls: tuple results, no row padding, fast accumulation, per-row scales ------------

def _fp8_layer(in_features: int = 64, out_features: int = 48, per_row: bool = False, seed: int = 0):
    from steadydancer.models.quant.fp8 import FP8Linear

    torch.manual_seed(seed)
    linear = nn.Linear(in_features, out_features).to(torch.bfloat16)
    layer = FP8Linear.from_linear(linear, fp8_matmul=True)
    if per_row:  # as a per-row-scale file loads: one float32 scale per output row
        weight = linear.weight.float()
        scale = weight.abs().amax(dim=1).clamp(min=1e-12) / 448.0
        layer.weight.data = (weight / scale[:, None]).clamp(-448, 448).to(torch.float8_e4m3fn)
        layer.scale_weight.data = scale
    return layer, linear


def _row_wise_scaled_mm_on_cpu(a, b, scale_a, scale_b, out_dtype, **_ignored):
    """What row-wise ``_scaled_mm`` computes (scales [M, 1] and [1, N]), in float32 on the CPU.

    torch 2.11 (the device image) runs only per-tensor scales on the CPU (an internal assert in
    aten/native/Blas.cpp); row-wise CPU support came after its branch cut. Row-wise calls are
    therefore emulated here on every torch version, so the test checks our arguments, not the op."""
    assert scale_a.shape == (a.shape[0], 1) and scale_b.shape == (1, b.shape[1])
    assert a.dtype == b.dtype == torch.float8_e4m3fn and b.stride(0) == 1    # column-major weight
    return ((a.float() * scale_a) @ (b.float() * scale_b)).to(out_dtype)


def _recording_scaled_mm(monkeypatch, as_tuple: bool = False) -> list[dict]:
    """torch._scaled_mm replaced by the real op (CPU has one, per-tensor scales only on torch 2.11)
    that records its arguments and, like torch < 2.5, optionally returns (out, amax)."""
    real, calls = torch._scaled_mm, []

    def scaled_mm(a, b, **kwargs):
        calls.append({"a_shape": tuple(a.shape), **{k: v for k, v in kwargs.items()
                                                    if k in ("use_fast_accum", "out_dtype")},
                      "scale_a": tuple(kwargs["scale_a"].shape), "scale_b": tuple(kwargs["scale_b"].shape)})
        per_tensor = kwargs["scale_a"].numel() == 1 and kwargs["scale_b"].numel() == 1
        out = real(a, b, **kwargs) if per_tensor or a.is_cuda else _row_wise_scaled_mm_on_cpu(a, b, **kwargs)
        return (out, out.float().abs().amax()) if as_tuple else out

    monkeypatch.setattr(torch, "_scaled_mm", scaled_mm)
    return calls


@pytest.mark.parametrize("as_tuple", [False, True])
def test_fp8_forward_takes_any_row_count_and_either_result_form(monkeypatch, as_tuple: bool):
    layer, linear = _fp8_layer()
    calls = _recording_scaled_mm(monkeypatch, as_tuple=as_tuple)
    x = torch.randn(37, 64).to(torch.bfloat16)             # 37 rows: not a multiple of 16
    out = layer._fp8_forward(x, layer.bias.to(x.dtype))
    assert out.shape == (37, 48) and out.dtype == torch.bfloat16
    assert calls == [{"a_shape": (37, 64), "use_fast_accum": True, "out_dtype": torch.bfloat16,
                      "scale_a": (), "scale_b": ()}]          # no padding rows, fast accumulation
    want = torch.nn.functional.linear(x.float(), layer.dequantized_weight(torch.float32), layer.bias.float())
    assert ((out.float() - want).norm() / want.norm()).item() < 0.06


def test_fp8_forward_with_per_row_weight_scales_scales_rows(monkeypatch):
    layer, _ = _fp8_layer(per_row=True)
    calls = _recording_scaled_mm(monkeypatch)
    x = torch.randn(2, 9, 64).to(torch.bfloat16)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert layer.fp8_matmul_scaling(torch.device("cuda")) == "row"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 9))
    assert layer.fp8_matmul_scaling(torch.device("cuda")) is None      # row-wise needs sm90
    monkeypatch.setattr(layer, "fp8_matmul_scaling", lambda device: "row")
    out = layer._fp8_forward(x, None)
    assert calls[0]["scale_a"] == (18, 1) and calls[0]["scale_b"] == (1, 48) and out.shape == (2, 9, 48)
    want = torch.nn.functional.linear(x.float(), layer.dequantized_weight(torch.float32))
    assert ((out.float() - want).norm() / want.norm()).item() < 0.06


def test_fp8_input_quantisation_in_chunks_equals_one_pass():
    layer, _ = _fp8_layer()
    rows = (torch.randn(50, 64) * torch.logspace(-2, 2, 50)[:, None]).to(torch.bfloat16)
    for per_row in (False, True):
        whole_q, whole_s = layer.quantize_input(rows, per_row)
        layer.quant_chunk_elements = 64 * 7                   # 7 rows per float32 temporary
        chunked_q, chunked_s = layer.quantize_input(rows, per_row)
        del layer.quant_chunk_elements
        assert torch.equal(whole_q.view(torch.uint8), chunked_q.view(torch.uint8))
        assert torch.equal(whole_s, chunked_s)
        # the reference: divide in float32 by the scale, round once
        expect = (rows.float() / whole_s).clamp(-448, 448).to(torch.float8_e4m3fn)
        assert torch.equal(whole_q.view(torch.uint8), expect.view(torch.uint8))
        assert whole_s.shape == ((50, 1) if per_row else ())


@needs_cuda
@pytest.mark.skipif(CUDA and torch.cuda.get_device_capability() < (8, 9), reason="needs FP8 tensor cores")
@pytest.mark.parametrize("per_row", [False, True])
def test_fp8_matmul_on_cuda_is_close_to_the_dequantised_layer(per_row: bool):
    layer, _ = _fp8_layer(256, 512, per_row=per_row)
    layer = layer.cuda()
    if per_row and layer.fp8_matmul_scaling(torch.device("cuda")) is None:
        pytest.skip("row-wise FP8 matmuls need compute capability 9.0")
    x = torch.randn(3, 37, 256, device="cuda", dtype=torch.bfloat16)
    assert layer.fp8_matmul_scaling(x.device) == ("row" if per_row else "tensor")
    got = layer(x)
    want = torch.nn.functional.linear(x.float(), layer.dequantized_weight(torch.float32), layer.bias.float())
    assert got.shape == (3, 37, 512) and torch.isfinite(got).all()
    assert ((got.float() - want).norm() / want.norm()).item() < 0.06


# ---- CUDA twins of the attention paths ---------------------------------------------------------

@needs_cuda
@pytest.mark.parametrize("head_dim", [32, 64, 128])
def test_cuda_auto_attention_matches_float32_for_every_head_size(head_dim: int):
    from steadydancer.models.attention import attention, attention_backend

    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(1, 300, 4, head_dim, device="cuda", generator=g) for _ in range(3))
    with attention_backend("auto"):
        got = attention(*(t.to(torch.bfloat16) for t in (q, k, v)))
    want = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2).double(), k.transpose(1, 2).double(), v.transpose(1, 2).double()).transpose(1, 2)
    assert ((got.double() - want).norm() / want.norm()).item() < 1e-2


@needs_cuda
def test_cuda_ring_fused_kernel_returns_the_math_result():
    from steadydancer.distributed import attention as ring

    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(1, 257, 4, 64, device="cuda", generator=g).to(torch.bfloat16) for _ in range(3))
    fused = ring._fused_attention_with_lse(q, k, v)
    assert fused is not None and not ring._fused_lse_broken
    out, lse = ring._math_attention_with_lse(q, k, v)
    assert ((fused[0] - out).norm() / out.norm()).item() < 1e-2
    assert (fused[1] - lse).abs().max().item() < 1e-2


# ---- the torch range --------------------------------------------------------------------------

def test_torch_floor_is_stated_the_same_everywhere_and_enforced():
    import re

    from conftest import REPO
    from steadydancer.distributed.fsdp import TORCH_FLOOR, check_torch_for_fsdp, torch_version
    from steadydancer.errors import InputError

    floor = ".".join(map(str, TORCH_FLOOR))
    pyproject = (REPO / "pyproject.toml").read_text()
    assert re.search(rf'"torch>={re.escape(floor)}"', pyproject)
    assert re.search(rf"^torch>={re.escape(floor)}\b", (REPO / "requirements.txt").read_text(), re.M)
    assert f"torch >= {floor}" in (REPO / "README.md").read_text()
    assert torch_version() >= TORCH_FLOOR                     # the torch these tests run on
    assert torch_version("2.11.0+cu130") == (2, 11)
    check_torch_for_fsdp("2.6.0")
    with pytest.raises(InputError, match=rf"need torch >= {re.escape(floor)} .*this is torch 2\.5\.1"):
        check_torch_for_fsdp("2.5.1+cu124")
