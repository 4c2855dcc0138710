"""Sequence-parallel self-attention: Ulysses (all-to-all over heads) x ring (K/V blocks passed
around, partial results merged by log-sum-exp).

Every rank holds one equal chunk of the token sequence, which was zero-padded at its end to a
multiple of the parallel degree. Padded key positions are cut off before any softmax, so padding
never changes a real token's output; outputs at padded query positions are meaningless and are
dropped by the caller.

Two implementations behind one call:
- pure torch (any backend: NCCL on GPU, gloo on CPU), always available; each ring block through
  torch's flash-attention kernel with its log-sum-exp (an exact math path where it does not apply);
- xDiT's ``xFuserLongContextAttention`` (flash-attn kernels), used on CUDA when xfuser is
  importable and the sequence needed no padding (xfuser cannot mask padded keys).
"""

from __future__ import annotations

import logging
import math
from typing import Callable

import torch
import torch.nn.functional as F

from .comm import heads_to_sequence, sequence_to_heads, start_ring_pass
from .groups import SequenceParallelGroups

log = logging.getLogger(__name__)

AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

# Bound on the number of attention-score elements materialised at once by the math path
# (2**27 float32 = 512 MiB); heads are processed in slices to stay under it.
_MAX_SCORE_ELEMENTS = 2**27


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Plain softmax attention, q [B, Lq, H, D], k/v [B, Lk, H, D] -> [B, Lq, H, D]."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


# Set when the fused kernel failed once on this machine: the math path is used from then on.
_fused_lse_broken = False


def _fused_attention_with_lse(q: torch.Tensor, k: torch.Tensor,
                              v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """torch's flash-attention kernel, which also returns the log-sum-exp (CUDA: bf16/fp16; CPU:
    float32/bf16/fp16), or None where it does not apply. Same layout and result as the math path."""
    global _fused_lse_broken
    dim = q.shape[-1]
    allowed = (torch.float16, torch.bfloat16) if q.is_cuda else (torch.float16, torch.bfloat16, torch.float32)
    if _fused_lse_broken or q.dtype not in allowed or dim % 8 or dim > 256 or q.device.type not in ("cuda", "cpu"):
        return None
    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))  # [B, H, L, D]
    try:
        if q.is_cuda:
            out, lse = torch.ops.aten._scaled_dot_product_flash_attention(qt, kt, vt, 0.0, False, False)[:2]
        else:
            out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(qt, kt, vt, 0.0, False)
    except torch.OutOfMemoryError:
        # a RuntimeError too, but says nothing about the kernel: latching would make every later
        # ring block take the math path, which needs more memory and is 10-100x slower
        raise
    except (RuntimeError, NotImplementedError) as exc:  # e.g. a GPU or build without the kernel
        _fused_lse_broken = True
        log.warning("ring attention: the fused kernel failed (%s); using the exact math path", exc)
        return None
    lse = lse[..., :q.shape[1]]  # some kernels pad the row count of the log-sum-exp
    return out.transpose(1, 2).float(), lse.transpose(1, 2).float()


def attention_with_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention that also returns the log-sum-exp of the scores.

    q [B, Lq, H, D], k/v [B, Lk, H, D] -> (out [B, Lq, H, D], lse [B, Lq, H]), both in float32
    (float64 for float64 inputs), scale 1/sqrt(D) as in SDPA and flash-attn. torch's
    flash-attention kernel where it applies (memory linear in the length), else a math path that
    materialises the scores in bounded slices.
    """
    fused = _fused_attention_with_lse(q, k, v)
    if fused is not None:
        return fused
    return _math_attention_with_lse(q, k, v)


def _math_attention_with_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`attention_with_lse` by explicit scores, in float32 (float64 for float64 inputs)."""
    compute = torch.float64 if q.dtype == torch.float64 else torch.float32
    b, lq, heads, dim = q.shape
    lk = k.shape[1]
    scale = 1.0 / math.sqrt(dim)
    # slices of heads, and of query rows when one head alone is over the bound (each query row's
    # softmax is independent, so slicing is exact)
    rows = max(1, _MAX_SCORE_ELEMENTS // max(1, b * lk))  # query rows of one head under the bound
    step = max(1, rows // lq)
    row_step = min(lq, rows)
    outs, lses = [], []
    for h0 in range(0, heads, step):
        kh = k[:, :, h0:h0 + step].transpose(1, 2).to(compute)  # [B, h, Lk, D]
        vh = v[:, :, h0:h0 + step].transpose(1, 2).to(compute)
        head_outs, head_lses = [], []
        for r0 in range(0, lq, row_step):
            qh = q[:, r0:r0 + row_step, h0:h0 + step].transpose(1, 2).to(compute)  # [B, h, r, D]
            scores = torch.matmul(qh, kh.transpose(-1, -2)) * scale  # [B, h, r, Lk]
            lse = torch.logsumexp(scores, dim=-1)  # [B, h, r]
            probs = torch.exp(scores - lse.unsqueeze(-1))
            head_outs.append(torch.matmul(probs, vh).transpose(1, 2))  # [B, r, h, D]
            head_lses.append(lse.transpose(1, 2))  # [B, r, h]
        outs.append(torch.cat(head_outs, dim=1))
        lses.append(torch.cat(head_lses, dim=1))
    return torch.cat(outs, dim=2), torch.cat(lses, dim=2)


def merge_partial_attention(out: torch.Tensor | None, lse: torch.Tensor | None,
                            block_out: torch.Tensor, block_lse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Combine two softmax-attention results over disjoint key sets (log-sum-exp weighting)."""
    if out is None:
        return block_out, block_lse
    new_lse = torch.logaddexp(lse, block_lse)
    out = out * torch.exp(lse - new_lse).unsqueeze(-1) + block_out * torch.exp(block_lse - new_lse).unsqueeze(-1)
    return out, new_lse


def _valid_prefix(valid_length: int, block_index: int, block_length: int) -> int:
    """How many keys of sequence block ``block_index`` are real (padding sits at the very end)."""
    return max(0, min(block_length, valid_length - block_index * block_length))


def ring_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, groups: SequenceParallelGroups,
                   valid_length: int) -> torch.Tensor:
    """Attention of this rank's ring block of queries against all ring blocks of keys/values.

    q/k/v [B, Lb, h, D] hold ring block ``groups.ring_rank`` (Lb tokens); ``valid_length`` counts
    the real tokens of the whole (ring) sequence. K/V travel around the ring while the current
    block is being computed.
    """
    size, me = groups.ring_size, groups.ring_rank
    block_length = q.shape[1]
    kv = torch.stack([k, v]).contiguous()
    out = lse = None
    for step in range(size):
        if step < size - 1:
            incoming, requests = start_ring_pass(kv, groups.ring_ranks, me, groups.ring_group)
        source = (me - step) % size
        valid = _valid_prefix(valid_length, source, block_length)
        if valid > 0:
            block_out, block_lse = attention_with_lse(q, kv[0, :, :valid], kv[1, :, :valid])
            out, lse = merge_partial_attention(out, lse, block_out, block_lse)
        if step < size - 1:
            for request in requests:
                request.wait()
            kv = incoming
    assert out is not None, "the first ring block always holds real tokens"
    return out.to(q.dtype)


def _xfuser_attention_or_none() -> object | None:
    """xDiT's attention module, or None when xfuser is missing or cannot build it here (e.g.
    yunchang's process groups not set up, or its flash-attn build missing)."""
    try:
        from xfuser.core.long_ctx_attention import xFuserLongContextAttention
        return xFuserLongContextAttention()
    except Exception as exc:  # noqa: BLE001 - any failure of an optional backend means "not here"
        if not isinstance(exc, ImportError):
            log.warning("xfuser attention unavailable (%s: %s); using the torch implementation",
                        type(exc).__name__, str(exc).splitlines()[0][:200] if str(exc) else "")
        return None


class SequenceParallelAttention:
    """Callable ``(q, k, v) -> out`` on local sequence chunks [B, L/W, H, D], as the DiT's
    self-attention sees them under sequence parallelism.

    ``valid_length`` (the number of real tokens in the whole, padded sequence) must be set
    before each forward. ``local_attention`` runs when one rank ends up with the whole sequence
    for its heads (Ulysses only); the DiT's own attention backend is passed here so that the
    numbers match the single-process model.
    """

    def __init__(self, groups: SequenceParallelGroups, local_attention: AttentionFn | None = None,
                 backend: str = "auto") -> None:
        if backend not in ("auto", "torch", "xfuser"):
            raise ValueError(f"backend must be auto, torch or xfuser, not {backend!r}")
        self.groups = groups
        self.local_attention = local_attention or sdpa_attention
        self.valid_length: int | None = None
        self._xfuser = None
        if backend in ("auto", "xfuser") and torch.cuda.is_available():
            self._xfuser = _xfuser_attention_or_none()
            if self._xfuser is None and backend == "xfuser":
                raise RuntimeError("backend 'xfuser' asked for but xfuser is not importable or could not be built here")
        self.backend = "xfuser" if self._xfuser is not None else "torch"

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        groups = self.groups
        chunk = q.shape[1]
        padded_length = chunk * groups.degree
        valid_length = padded_length if self.valid_length is None else self.valid_length
        if self._xfuser is not None and q.is_cuda and valid_length == padded_length:
            # xfuser's kernels run in half precision
            dtype = q.dtype if q.dtype in (torch.float16, torch.bfloat16) else torch.bfloat16
            out = self._xfuser(None, query=q.to(dtype), key=k.to(dtype), value=v.to(dtype))
            return out.to(q.dtype)
        if groups.ulysses_size > 1:
            if q.shape[2] % groups.ulysses_size:
                raise ValueError(f"{q.shape[2]} heads do not split over ulysses_size {groups.ulysses_size}")
            q, k, v = (heads_to_sequence(t, groups.ulysses_group) for t in (q, k, v))
        if groups.ring_size > 1:
            # the ring sequence is the whole sequence; this rank's block starts at ring_rank * block
            out = ring_attention(q, k, v, groups, valid_length)
        else:
            valid = min(valid_length, q.shape[1])
            out = self.local_attention(q[:, :valid], k[:, :valid], v[:, :valid])
            if valid < q.shape[1]:
                out = torch.cat([out, out.new_zeros(out.shape[0], q.shape[1] - valid, *out.shape[2:])], dim=1)
        if groups.ulysses_size > 1:
            out = sequence_to_heads(out, groups.ulysses_group)
        return out
