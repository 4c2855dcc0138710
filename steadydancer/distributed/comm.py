"""Collectives for sequence parallelism that work on NCCL (GPU) and on gloo (CPU).

Tensors follow the attention layout ``[B, L, heads, head_dim]``.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def pad_sequence_to_multiple(x: torch.Tensor, multiple: int, dim: int = 1) -> tuple[torch.Tensor, int]:
    """Zero-pad ``x`` along ``dim`` to a multiple of ``multiple``; returns (padded, number added)."""
    length = x.shape[dim]
    pad = (-length) % multiple
    if pad == 0:
        return x, 0
    shape = list(x.shape)
    shape[dim] = pad
    return torch.cat([x, x.new_zeros(shape)], dim=dim), pad


def _all_to_all_first_dim(chunks: torch.Tensor, group) -> torch.Tensor:
    """``out[j] = chunk i of rank j`` for ``chunks`` of shape [G, ...] on rank i of ``group``.

    Uses ``all_to_all_single`` (NCCL; gloo in recent torch) and falls back to an all-gather
    (more memory, same result) where a CPU backend lacks it. An NCCL error is raised as is:
    starting another collective on a failed communicator would hang every rank.
    """
    chunks = chunks.contiguous()
    out = torch.empty_like(chunks)
    try:
        dist.all_to_all_single(out, chunks, group=group)
    except (RuntimeError, NotImplementedError):
        if dist.get_backend(group) == "nccl":
            raise
        out = _all_to_all_by_all_gather(chunks, group)
    return out


def _all_to_all_by_all_gather(chunks: torch.Tensor, group) -> torch.Tensor:
    """Same result as :func:`_all_to_all_first_dim`, built from ``all_gather`` only."""
    size = dist.get_world_size(group)
    me = dist.get_rank(group)
    gathered = [torch.empty_like(chunks) for _ in range(size)]
    dist.all_gather(gathered, chunks.contiguous(), group=group)
    return torch.stack([g[me] for g in gathered])


def heads_to_sequence(x: torch.Tensor, group) -> torch.Tensor:
    """Ulysses forward exchange: [B, L, H, D] (local sequence, all heads) ->
    [B, G*L, H/G, D] (the group's sequence in rank order, this rank's share of heads)."""
    size = dist.get_world_size(group)
    b, length, heads, dim = x.shape
    chunks = x.reshape(b, length, size, heads // size, dim).permute(2, 0, 1, 3, 4)
    out = _all_to_all_first_dim(chunks, group)  # [G (source rank = sequence chunk), B, L, H/G, D]
    return out.permute(1, 0, 2, 3, 4).reshape(b, size * length, heads // size, dim)


def sequence_to_heads(x: torch.Tensor, group) -> torch.Tensor:
    """Inverse of :func:`heads_to_sequence`: [B, G*L, H/G, D] -> [B, L, H, D]."""
    size = dist.get_world_size(group)
    b, total, heads_local, dim = x.shape
    length = total // size
    chunks = x.reshape(b, size, length, heads_local, dim).permute(1, 0, 2, 3, 4)
    out = _all_to_all_first_dim(chunks, group)  # [G (source rank = head slice), B, L, H/G, D]
    return out.permute(1, 2, 0, 3, 4).reshape(b, length, size * heads_local, dim)


def gather_sequence(x: torch.Tensor, group=None, dim: int = 1) -> torch.Tensor:
    """All-gather equal sequence chunks along ``dim`` in rank order (every rank gets all)."""
    size = dist.get_world_size(group)
    if size == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(size)]
    dist.all_gather(parts, x.contiguous(), group=group)
    return torch.cat(parts, dim=dim)


def start_ring_pass(x: torch.Tensor, ring_ranks: list[int], ring_rank: int, group):
    """Send ``x`` to the next rank of the ring and receive the previous rank's tensor.

    Returns (received buffer, requests); wait on the requests before reading the buffer.
    """
    size = len(ring_ranks)
    send_to = ring_ranks[(ring_rank + 1) % size]
    recv_from = ring_ranks[(ring_rank - 1) % size]
    buffer = torch.empty_like(x)
    ops = [dist.P2POp(dist.isend, x.contiguous(), send_to, group=group),
           dist.P2POp(dist.irecv, buffer, recv_from, group=group)]
    return buffer, dist.batch_isend_irecv(ops)


__all__ = ["pad_sequence_to_multiple", "heads_to_sequence", "sequence_to_heads", "gather_sequence",
           "start_ring_pass"]
