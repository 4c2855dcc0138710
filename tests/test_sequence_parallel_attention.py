"""Ulysses / ring / hybrid sequence-parallel attention on gloo equals single-process attention,
also when the sequence length does not divide by the degree (padded keys must be masked)."""

from __future__ import annotations

import pytest
import torch

from steadydancer.distributed.attention import (SequenceParallelAttention, attention_with_lse,
                                                merge_partial_attention, sdpa_attention)
from steadydancer.distributed.comm import (_all_to_all_by_all_gather, gather_sequence, heads_to_sequence,
                                           pad_sequence_to_multiple, sequence_to_heads)
from steadydancer.distributed.groups import grid_ranks, make_sequence_parallel_groups
from steadydancer.distributed.testing import run_on_gloo

HEADS, HEAD_DIM = 4, 8


def _errors_for_grids(rank: int, world_size: int, grids: list[tuple[int, int]], lengths: list[int]) -> dict:
    """For each (ulysses, ring) grid and sequence length: max |sp - reference| on this rank."""
    errors = {}
    for ulysses, ring in grids:
        groups = make_sequence_parallel_groups(ulysses, ring)
        sp_attention = SequenceParallelAttention(groups, backend="torch")
        for length in lengths:
            gen = torch.Generator().manual_seed(length)
            q, k, v = (torch.randn(1, length, HEADS, HEAD_DIM, generator=gen) * 2 for _ in range(3))
            reference = sdpa_attention(q, k, v)
            # padding filled with large values: any leak into real tokens would show
            chunks = []
            for t in (q, k, v):
                padded, _ = pad_sequence_to_multiple(t, world_size)
                padded[:, length:] = 50.0
                chunks.append(padded.chunk(world_size, dim=1)[rank])
            sp_attention.valid_length = length
            out = gather_sequence(sp_attention(*chunks))[:, :length]
            errors[(ulysses, ring, length)] = (out - reference).abs().max().item()
    return errors


def _exchange_roundtrip(rank: int, world_size: int) -> dict:
    x = torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(rank))
    y = heads_to_sequence(x, None)
    back = sequence_to_heads(y, None)
    chunks = torch.arange(world_size * 3.0).reshape(world_size, 3) + 100 * rank
    fallback = _all_to_all_by_all_gather(chunks, None)
    return {"shape": tuple(y.shape), "roundtrip": (back - x).abs().max().item(),
            "fallback": fallback.tolist()}


def test_grid_layout_matches_xdit():
    ulysses, ring = grid_ranks(8, 2, 4)
    assert ulysses == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert ring == [[0, 2, 4, 6], [1, 3, 5, 7]]


def test_attention_with_lse_and_merge_equal_full_softmax():
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 5, 3, 4, generator=gen, dtype=torch.float64) for _ in range(3))
    full = sdpa_attention(q, k, v)
    out_a, lse_a = attention_with_lse(q, k[:, :2], v[:, :2])
    out_b, lse_b = attention_with_lse(q, k[:, 2:], v[:, 2:])
    merged, _ = merge_partial_attention(out_a, lse_a, out_b, lse_b)
    assert (merged - full).abs().max() < 1e-12


def _two_process_checks(rank: int, world_size: int) -> tuple[dict, dict]:
    return _exchange_roundtrip(rank, world_size), _errors_for_grids(rank, world_size, [(2, 1), (1, 2)], [12, 13])


def test_attention_with_lse_slices_heads_and_query_rows_exactly(monkeypatch):
    """Under a tiny score-element bound (one head alone over it) the sliced computation is exact."""
    import steadydancer.distributed.attention as attention_module

    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 37, 5, 8, dtype=torch.float64) for _ in range(3))
    want_out, want_lse = attention_with_lse(q, k, v)
    for bound in (1, 2 * 37 * 3, 2 * 37 * 37 * 2):
        monkeypatch.setattr(attention_module, "_MAX_SCORE_ELEMENTS", bound)
        out, lse = attention_with_lse(q, k, v)
        assert torch.allclose(out, want_out) and torch.allclose(lse, want_lse), bound


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 2e-6), (torch.bfloat16, 2e-2)])
def test_fused_kernel_with_lse_equals_the_math_path(dtype, tolerance):
    """The flash-attention kernel (what ring blocks use) gives the math path's output and
    log-sum-exp, and its blocks merge to the full softmax."""
    from steadydancer.distributed.attention import _fused_attention_with_lse, _math_attention_with_lse

    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 37, 3, 64, generator=gen).to(dtype) for _ in range(3))
    fused = _fused_attention_with_lse(q, k, v)
    assert fused is not None
    want_out, want_lse = _math_attention_with_lse(q, k, v)
    assert fused[0].dtype == fused[1].dtype == torch.float32
    assert fused[0].shape == want_out.shape and fused[1].shape == want_lse.shape == (2, 37, 3)
    assert (fused[0] - want_out).abs().max() < tolerance and (fused[1] - want_lse).abs().max() < tolerance
    merged, _ = merge_partial_attention(*attention_with_lse(q, k[:, :20], v[:, :20]),
                                        *attention_with_lse(q, k[:, 20:], v[:, 20:]))
    assert (merged - want_out).abs().max() < 2 * tolerance


def test_fused_kernel_failure_falls_back_to_the_math_path(monkeypatch, caplog):
    import steadydancer.distributed.attention as attention_module

    def broken(*args, **kwargs):
        raise RuntimeError("no kernel for this device")

    monkeypatch.setattr(attention_module, "_fused_lse_broken", False)
    monkeypatch.setattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", broken)
    q, k, v = (torch.randn(1, 9, 2, 16) for _ in range(3))
    out, lse = attention_with_lse(q, k, v)
    want_out, want_lse = attention_module._math_attention_with_lse(q, k, v)
    assert torch.equal(out, want_out) and torch.equal(lse, want_lse)
    assert attention_module._fused_lse_broken and "using the exact math path" in caplog.text


def test_two_processes_exchange_roundtrip_ulysses_and_ring_equal_single_process():
    for rank, (exchange, errors) in enumerate(run_on_gloo(_two_process_checks, 2)):
        assert exchange["shape"] == (2, 6, 2, 5)
        assert exchange["roundtrip"] == 0.0
        # out[j] = chunk `rank` of rank j
        assert exchange["fallback"] == [[3.0 * rank + i for i in range(3)], [100 + 3.0 * rank + i for i in range(3)]]
        assert len(errors) == 4
        for key, err in errors.items():
            assert err < 1e-5, (key, err)


def test_four_processes_hybrid_equal_single_process():
    # 5 tokens over 4 ranks: chunk 2, the last block holds only padding
    results = run_on_gloo(_errors_for_grids, 4, [(2, 2), (1, 4), (4, 1)], [16, 5])
    for errors in results:
        assert len(errors) == 6
        for key, err in errors.items():
            assert err < 1e-5, (key, err)

