"""Attention kernels: SageAttention, flash-attn 3, flash-attn 2 or torch SDPA, whichever applies.

Every caller uses the [B, L, heads, head_dim] layout (the one the flash kernels take natively).
The backend is picked per call: flash kernels need a CUDA tensor in float16/bfloat16 and a
head_dim of at most 256; anything else (CPU, float32) goes to torch SDPA. flash-attn 3 builds
compile only some head sizes (64, 128 and 256 in every release; Dao-AILab/flash-attention #1290),
so auto mode gives it only those and other sizes (the parity models' 32) to flash-attn 2 or SDPA;
a head size a flash build still refuses at run time is remembered and sent to the next backend.

Force a backend with the environment variable ``STEADYDANCER_ATTENTION`` (auto, sage, flash3,
flash2, sdpa), ``--attention`` or with :func:`set_attention_backend` / :func:`attention_backend`.
A forced backend that is not installed or not applicable raises instead of silently falling
back, so a benchmark never measures something other than what it asked for.

SageAttention (thu-ml/SageAttention, the ``sageattention`` package; ``sageattn(q, k, v,
tensor_layout="NHD")`` picks its kernel by the GPU's compute capability) quantises Q and K to INT8
and is not exact: auto mode tries it first only when it is installed and applies (a CUDA
capability >= 8.0, fp16/bf16, head_dim 64, 96 or 128); otherwise :func:`sage_refusal` says why in
one line and auto mode goes on to flash-attn 3, flash-attn 2, SDPA.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Iterator

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

BACKENDS = ("auto", "sage", "flash3", "flash2", "sdpa")
ENV_VAR = "STEADYDANCER_ATTENTION"

try:  # flash-attn 3 (Hopper) installs this module
    import flash_attn_interface as _fa3
except ImportError:  # pragma: no cover - depends on the machine
    _fa3 = None

try:
    import flash_attn as _fa2
except ImportError:  # pragma: no cover - depends on the machine
    _fa2 = None

try:  # SageAttention (optional; thu-ml/SageAttention)
    import sageattention as _sage
except ImportError:  # pragma: no cover - depends on the machine
    _sage = None

# Head sizes SageAttention's kernels take (the DiT's is 128); its kernels need Ampere or newer.
SAGE_HEAD_SIZES = frozenset({64, 96, 128})
SAGE_MIN_CAPABILITY = (8, 0)

_forced: str | None = None

# Head sizes every flash-attn 3 build compiles; others (96, 192, ...) depend on the build.
FA3_HEAD_SIZES = frozenset({64, 128, 256})
# (backend, head_dim, dtype) a flash kernel refused at run time in auto mode: never tried again.
_refused: set[tuple[str, int, torch.dtype]] = set()


def available_backends() -> list[str]:
    """Backends importable on this machine, best first (SDPA is always there)."""
    return [name for name, mod in (("sage", _sage), ("flash3", _fa3), ("flash2", _fa2)) if mod is not None] + ["sdpa"]


def sage_refusal(device: torch.device | str, dtype: torch.dtype | None = None, head_dim: int | None = None) -> str | None:
    """Why SageAttention cannot run here (one line), or None when it can. ``dtype``/``head_dim``:
    also check a query's (None: the device alone)."""
    device = torch.device(device)
    if _sage is None:
        return "the sageattention package is not installed (pip install sageattention)"
    if device.type != "cuda" or not torch.cuda.is_available():
        return f"SageAttention needs an NVIDIA GPU; the device is {device.type}"
    capability = torch.cuda.get_device_capability(device)
    if capability < SAGE_MIN_CAPABILITY:
        return (f"SageAttention needs CUDA capability >= {SAGE_MIN_CAPABILITY[0]}.{SAGE_MIN_CAPABILITY[1]}; "
                f"{torch.cuda.get_device_name(device)} has {capability[0]}.{capability[1]}")
    if dtype is not None and dtype not in (torch.float16, torch.bfloat16):
        return f"SageAttention takes fp16/bf16 tensors, not {dtype}"
    if head_dim is not None and head_dim not in SAGE_HEAD_SIZES:
        return f"SageAttention takes head_dim {sorted(SAGE_HEAD_SIZES)}, not {head_dim}"
    return None


def set_attention_backend(name: str | None) -> None:
    """Force a backend for later calls (None or "auto": pick per call; overrides the env var)."""
    if name is not None and name not in BACKENDS:
        raise ValueError(f"attention backend {name!r}: expected one of {', '.join(BACKENDS)}")
    global _forced
    _forced = None if name in (None, "auto") else name


@contextlib.contextmanager
def attention_backend(name: str | None) -> Iterator[None]:
    """Use ``name`` inside the block, then restore the previous choice."""
    global _forced
    previous = _forced
    set_attention_backend(name)
    try:
        yield
    finally:
        _forced = previous


def _requested_backend() -> str:
    if _forced is not None:
        return _forced
    name = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if name not in BACKENDS:
        raise ValueError(f"{ENV_VAR}={name!r}: expected one of {', '.join(BACKENDS)}")
    return name


def _flash_applicable(q: torch.Tensor) -> bool:
    return q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and q.shape[-1] <= 256


def _auto_candidates(q: torch.Tensor) -> list[str]:
    """Backends auto mode tries for a query like ``q``, best first (SDPA last, always)."""
    names = []
    if _sage is not None and q.is_cuda and sage_refusal(q.device, q.dtype, q.shape[-1]) is None:
        names.append("sage")
    if _flash_applicable(q):
        head_dim = q.shape[-1]
        if _fa3 is not None and head_dim in FA3_HEAD_SIZES:
            names.append("flash3")
        if _fa2 is not None:
            names.append("flash2")
    names = [n for n in names if (n, q.shape[-1], q.dtype) not in _refused]
    return names + ["sdpa"]


def select_backend(q: torch.Tensor) -> str:
    """The backend :func:`attention` will use first for a query like ``q``."""
    name = _requested_backend()
    if name == "auto":
        return _auto_candidates(q)[0]
    if name == "sage":
        reason = sage_refusal(q.device, q.dtype, q.shape[-1])
        if reason is not None:
            raise RuntimeError(f"attention backend sage was forced but {reason}")
    if name in ("flash3", "flash2"):
        module = _fa3 if name == "flash3" else _fa2
        if module is None:
            raise RuntimeError(f"attention backend {name} was forced but its package is not installed")
        if not _flash_applicable(q):
            raise RuntimeError(f"attention backend {name} was forced but needs CUDA fp16/bf16 tensors "
                               f"with head_dim <= 256 (got {q.device.type} {q.dtype}, head_dim {q.shape[-1]})")
    return name


def _run_backend(backend: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    if backend == "sage":   # [B, L, heads, head_dim] is SageAttention's "NHD" layout
        return _sage.sageattn(q, k.to(q.dtype), v.to(q.dtype), tensor_layout="NHD", is_causal=False)
    if backend == "flash3":
        out = _fa3.flash_attn_func(q, k.to(q.dtype), v.to(q.dtype))
        # some flash-attn 3 releases return (out, softmax_lse)
        return out[0] if isinstance(out, tuple) else out
    if backend == "flash2":
        return _fa2.flash_attn_func(q, k.to(q.dtype), v.to(q.dtype))
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.to(q.dtype).transpose(1, 2),
                                         v.to(q.dtype).transpose(1, 2))
    return out.transpose(1, 2)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Softmax attention without mask, scale 1/sqrt(head_dim).

    q: [B, Lq, heads, head_dim]; k, v: [B, Lk, heads, head_dim] -> [B, Lq, heads, head_dim]
    in the dtype of q.
    """
    if _requested_backend() != "auto":
        return _run_backend(select_backend(q), q, k, v)   # forced: its own error, never another kernel
    candidates = _auto_candidates(q)
    for backend in candidates[:-1]:
        try:
            return _run_backend(backend, q, k, v)
        except torch.OutOfMemoryError:
            raise                     # memory, not the kernel: the next backend would need more
        except RuntimeError as exc:   # e.g. "FlashAttention forward only supports head dimension ..."
            _refused.add((backend, q.shape[-1], q.dtype))
            log.warning("attention: %s refused head_dim %d %s (%s); using %s from now on", backend,
                        q.shape[-1], q.dtype, str(exc).splitlines()[0][:200],
                        _auto_candidates(q)[0])
    return _run_backend(candidates[-1], q, k, v)
