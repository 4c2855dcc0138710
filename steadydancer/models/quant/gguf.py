"""GGUF DiT weights (MCG-NJU/SteadyDancer-GGUF, ComfyUI-GGUF layout), dequantised per layer on the fly.

File layout (city96/ComfyUI-GGUF ``tools/convert.py``, then ``llama-quantize`` with ``lcpp.patch``,
then ``tools/fix_5d_tensors.py``): tensor names are the official ones (a ``model.diffusion_model.``
/ ``model.`` prefix is stripped by the converter; we strip it too); shapes are stored innermost
first (reversed). Three shape forms occur and all are read:

- true 5-D F32 tensors with no metadata: the Conv3d weights (patch embeddings, TMCM), which the
  converter sets aside and ``fix_5d_tensors.py`` adds back after quantisation (Wan's files);
- leading size-1 dimensions dropped: llama-quantize stores a tensor with ggml's ``n_dims``, which
  ignores trailing (in ggml order) size-1 dims, and the patch restores them for ``.modulation``
  only, so SteadyDancer's ``condition_embedding_align.norm1/norm2`` [1, 128, 1, 1] arrive as
  (128, 1, 1); a stored shape that equals the model's with its leading 1s dropped is reshaped;
- flattened with the real shape in ``comfy.gguf.orig_shape.<name>`` (the converter's reshape for
  other architectures, and our own writer's layout for >4-D tensors).

Quantised linear weights inside the transformer blocks stay in their GGML blocks on the device
(``GGUFLinear``) and are dequantised by torch code when the layer runs; every other tensor
(quantised pose-module and embedding weights included) is dequantised once at load time into
the compute dtype.

Torch dequantisers: Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K (and F32/F16/BF16).
Other GGML types fall back to the ``gguf`` package's numpy dequantiser (on the CPU, slower).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from steadydancer.errors import InputError
from steadydancer.models.quant.fp8 import strip_prefix

ORIG_SHAPE_FIELD = "comfy.gguf.orig_shape."
QK_K = 256


def _gguf():
    try:
        import gguf
    except ImportError:
        raise InputError("--gguf: the 'gguf' package is not installed (pip install gguf)") from None
    return gguf


# ---- torch dequantisers: blocks [n, type_size] uint8 -> [n, block_size] float32 -------------------

def _f16(b: torch.Tensor) -> torch.Tensor:
    """Little-endian float16 from byte pairs [..., 2k] -> [..., k] float32."""
    return b.contiguous().view(torch.float16).float()


def _nibbles(qs: torch.Tensor) -> torch.Tensor:
    """[n, m] bytes -> [n, 2m]: all low nibbles, then all high nibbles (GGML order)."""
    return torch.cat([qs & 0x0F, qs >> 4], dim=-1)


def _bits(packed: torch.Tensor, count: int) -> torch.Tensor:
    """[n, 4] bytes read as one little-endian uint32 -> [n, count] bits, lowest first."""
    word = packed.to(torch.int64)
    word = word[:, 0] | (word[:, 1] << 8) | (word[:, 2] << 16) | (word[:, 3] << 24)
    shifts = torch.arange(count, device=packed.device)
    return ((word[:, None] >> shifts) & 1).to(torch.uint8)


def _q8_0(b):
    return _f16(b[:, :2]) * b[:, 2:].contiguous().view(torch.int8).float()


def _q4_0(b):
    return _f16(b[:, :2]) * (_nibbles(b[:, 2:]).float() - 8)


def _q4_1(b):
    return _f16(b[:, :2]) * _nibbles(b[:, 4:]).float() + _f16(b[:, 2:4])


def _q5_0(b):
    q = _nibbles(b[:, 6:]) | (_bits(b[:, 2:6], 32) << 4)
    return _f16(b[:, :2]) * (q.float() - 16)


def _q5_1(b):
    q = _nibbles(b[:, 8:]) | (_bits(b[:, 4:8], 32) << 4)
    return _f16(b[:, :2]) * q.float() + _f16(b[:, 2:4])


def _k_scale_min(scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The 12 packed bytes of Q4_K/Q5_K -> 8 six-bit scales and 8 six-bit mins."""
    d, m, md = scales[:, 0:4], scales[:, 4:8], scales[:, 8:12]
    sc = torch.cat([d & 0x3F, (md & 0x0F) | ((d >> 2) & 0x30)], dim=-1)
    mn = torch.cat([m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)], dim=-1)
    return sc.float(), mn.float()


def _split_pairs_of_32(q: torch.Tensor, groups: int) -> torch.Tensor:
    """[n, groups/2 * 32] bytes -> [n, groups, 32] values: low nibbles then high per 32-byte chunk."""
    n = q.shape[0]
    q = q.reshape(n, groups // 2, 1, 32) >> torch.tensor([0, 4], device=q.device, dtype=torch.uint8).reshape(1, 1, 2, 1)
    return (q & 0x0F).reshape(n, groups, 32)


def _q4_k(b):
    n = b.shape[0]
    d, dmin = _f16(b[:, 0:2]), _f16(b[:, 2:4])
    sc, mn = _k_scale_min(b[:, 4:16])
    q = _split_pairs_of_32(b[:, 16:], 8).float()
    return ((d * sc)[..., None] * q - (dmin * mn)[..., None]).reshape(n, QK_K)


def _q5_k(b):
    n = b.shape[0]
    d, dmin = _f16(b[:, 0:2]), _f16(b[:, 2:4])
    sc, mn = _k_scale_min(b[:, 4:16])
    qh = b[:, 16:48].reshape(n, 1, 32) >> torch.arange(8, device=b.device, dtype=torch.uint8).reshape(1, 8, 1)
    q = _split_pairs_of_32(b[:, 48:], 8) | ((qh & 1) << 4)
    return ((d * sc)[..., None] * q.float() - (dmin * mn)[..., None]).reshape(n, QK_K)


def _q6_k(b):
    n = b.shape[0]
    ql, qh, scales, d = b[:, :128], b[:, 128:192], b[:, 192:208], _f16(b[:, 208:210])
    low = ql.reshape(n, 2, 1, 64) >> torch.tensor([0, 4], device=b.device, dtype=torch.uint8).reshape(1, 1, 2, 1)
    low = (low & 0x0F).reshape(n, 8, 32)
    high = qh.reshape(n, 2, 1, 32) >> torch.tensor([0, 2, 4, 6], device=b.device, dtype=torch.uint8).reshape(1, 1, 4, 1)
    high = (high & 0x03).reshape(n, 8, 32)
    q = ((low | (high << 4)).to(torch.int16) - 32).reshape(n, 16, 16).float()
    scale = d * scales.contiguous().view(torch.int8).float()
    return (scale[..., None] * q).reshape(n, QK_K)


def _q2_k(b):
    n = b.shape[0]
    scales, qs, d, dmin = b[:, :16], b[:, 16:80], _f16(b[:, 80:82]), _f16(b[:, 82:84])
    dl = d * (scales & 0x0F).float()
    ml = dmin * (scales >> 4).float()
    q = qs.reshape(n, 2, 1, 32) >> torch.tensor([0, 2, 4, 6], device=b.device, dtype=torch.uint8).reshape(1, 1, 4, 1)
    q = (q & 3).reshape(n, 16, 16).float()
    return (dl[..., None] * q - ml[..., None]).reshape(n, QK_K)


def _q3_k(b):
    n = b.shape[0]
    hmask, qs, scales, d = b[:, :32], b[:, 32:96], b[:, 96:108], _f16(b[:, 108:110])
    low = scales[:, :8].reshape(n, 1, 8) >> torch.tensor([0, 4], device=b.device, dtype=torch.uint8).reshape(1, 2, 1)
    high = scales[:, 8:].reshape(n, 1, 4) >> torch.tensor([0, 2, 4, 6], device=b.device, dtype=torch.uint8).reshape(1, 4, 1)
    sc = ((low.reshape(n, 16) & 0x0F) | ((high.reshape(n, 16) & 0x03) << 4)).to(torch.int16) - 32
    dl = d * sc.float()
    ql = qs.reshape(n, 2, 1, 32) >> torch.tensor([0, 2, 4, 6], device=b.device, dtype=torch.uint8).reshape(1, 1, 4, 1)
    ql = (ql & 3).reshape(n, 16, 16).to(torch.int16)
    qh = hmask.reshape(n, 1, 32) >> torch.arange(8, device=b.device, dtype=torch.uint8).reshape(1, 8, 1)
    qh = ((qh & 1) ^ 1).reshape(n, 16, 16).to(torch.int16)      # a clear high bit means minus 4
    return (dl[..., None] * (ql - (qh << 2)).float()).reshape(n, QK_K)


_TORCH_DEQUANT = {"Q8_0": _q8_0, "Q4_0": _q4_0, "Q4_1": _q4_1, "Q5_0": _q5_0, "Q5_1": _q5_1,
                  "Q2_K": _q2_k, "Q3_K": _q3_k, "Q4_K": _q4_k, "Q5_K": _q5_k, "Q6_K": _q6_k}
_PLAIN = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def dequantize(raw: torch.Tensor, qtype_name: str, shape: tuple[int, ...],
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """GGML bytes (uint8, any shape, on any device) of type ``qtype_name`` -> tensor ``shape`` in ``dtype``."""
    raw = raw.reshape(-1)
    if qtype_name in _PLAIN:
        return raw.view(_PLAIN[qtype_name]).reshape(shape).to(dtype)
    gguf = _gguf()
    qtype = gguf.GGMLQuantizationType[qtype_name]
    block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
    if qtype_name in _TORCH_DEQUANT:
        blocks = raw.reshape(-1, type_size)
        return _TORCH_DEQUANT[qtype_name](blocks).reshape(shape).to(dtype)
    values = gguf.quants.dequantize(raw.cpu().numpy().reshape(-1, type_size), qtype)
    return torch.from_numpy(np.ascontiguousarray(values)).reshape(shape).to(raw.device, dtype)


class GGUFLinear(nn.Module):
    """A linear layer whose weight [out, in] stays in GGML blocks (uint8 ``weight``) until it runs.

    forward(x [..., in]) -> [..., out] in x's dtype: the weight is dequantised (float32 math,
    rounded once to x's dtype) for this call only.
    """

    def __init__(self, in_features: int, out_features: int, qtype_name: str, raw: torch.Tensor,
                 bias: torch.Tensor | None) -> None:
        super().__init__()
        self.in_features, self.out_features, self.qtype_name = in_features, out_features, qtype_name
        self.weight = nn.Parameter(raw, requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)

    def dequantized_weight(self, dtype: torch.dtype) -> torch.Tensor:
        return dequantize(self.weight, self.qtype_name, (self.out_features, self.in_features), dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.dequantized_weight(x.dtype), bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, qtype={self.qtype_name}"


def _field_ints(field) -> tuple[int, ...]:
    """The integers of an array metadata field (``ReaderField.contents`` is missing in gguf 0.10)."""
    return tuple(int(field.parts[index][0]) for index in field.data)


def _open_reader(path: Path):
    gguf = _gguf()
    if not path.is_file():
        raise InputError(f"--gguf: file not found: {path}")
    try:
        return gguf.GGUFReader(str(path))
    except Exception as exc:  # the reader raises ValueError/struct errors on foreign files
        raise InputError(f"--gguf {path}: not a readable GGUF file ({exc})") from None


def _stored_shapes(reader) -> dict[str, tuple[int, ...]]:
    """The file's tensor name -> torch-order shape (``orig_shape`` metadata applied)."""
    shapes = {}
    for tensor in reader.tensors:
        field = reader.get_field(ORIG_SHAPE_FIELD + tensor.name)
        shapes[tensor.name] = (_field_ints(field) if field is not None
                               else tuple(int(v) for v in reversed(tensor.shape.tolist())))
    return shapes


def gguf_file_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Official tensor name -> stored torch-order shape of a GGUF DiT (to infer its architecture)."""
    return {strip_prefix(name): shape for name, shape in _stored_shapes(_open_reader(Path(path))).items()}


def _without_leading_ones(shape: tuple[int, ...]) -> tuple[int, ...]:
    start = 0
    while start < len(shape) - 1 and shape[start] == 1:
        start += 1
    return tuple(shape[start:])


def load_gguf(model: nn.Module, path: str | Path, device: torch.device | str = "cpu",
              dtype: torch.dtype = torch.bfloat16, keep_quantized_under: str = "blocks.") -> nn.Module:
    """Load a ComfyUI-GGUF DiT file into ``model`` (built on the meta device or anywhere).

    Quantised weights of ``nn.Linear`` layers whose names start with ``keep_quantized_under``
    become GGUFLinear (bytes moved to ``device`` as stored); all else is dequantised to ``dtype``
    on ``device``. One tensor is read at a time. Raises InputError naming the file for a file
    that is not GGUF or does not fit the model.
    """
    from steadydancer.models.loading import assign_tensor

    path = Path(path)
    reader = _open_reader(path)
    device = torch.device(device)
    expected = dict(model.state_dict(keep_vars=True))
    stored_shapes = _stored_shapes(reader)
    tensors = {strip_prefix(t.name): t for t in reader.tensors}
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        detail = "; ".join(part for part in (f"missing {missing[:3]}" if missing else "",
                                             f"unexpected {unexpected[:3]}" if unexpected else "") if part)
        raise InputError(f"--gguf {path}: not a SteadyDancer DiT for this model ({detail})")
    for name, tensor in tensors.items():
        shape = stored_shapes[tensor.name]
        target = tuple(expected[name].shape)
        if shape != target:
            if _without_leading_ones(shape) != _without_leading_ones(target):
                raise InputError(f"--gguf {path}: {tensor.name} has shape {shape}, the model expects {target}")
            shape = target   # size-1 dimensions dropped by llama-quantize
        qtype_name = tensor.tensor_type.name
        raw = torch.from_numpy(np.array(tensor.data, copy=True)).view(torch.uint8).reshape(-1)
        module_name, _, leaf = name.rpartition(".")
        module = model.get_submodule(module_name) if module_name else model
        keep = (qtype_name not in _PLAIN and leaf == "weight" and isinstance(module, nn.Linear)
                and module_name.startswith(keep_quantized_under))
        if keep:
            parent_name, _, child = module_name.rpartition(".")
            bias = module.bias
            if bias is not None and bias.is_meta:
                bias = torch.zeros(bias.shape, dtype=dtype, device=device)    # loaded later
            setattr(model.get_submodule(parent_name), child,
                    GGUFLinear(module.in_features, module.out_features, qtype_name, raw.to(device), bias))
            continue
        assign_tensor(module, leaf, dequantize(raw, qtype_name, shape, torch.float32).to(device, dtype))
    return model.eval().requires_grad_(False)


def save_gguf(model: nn.Module, path: str | Path, qtype_name: str = "Q8_0",
              quantize_under: str = "blocks.") -> None:
    """Write ``model`` as a ComfyUI-GGUF style file: block linear weights in ``qtype_name``
    (a type the gguf package can quantise: Q8_0, Q4_0, Q4_1, Q5_0, Q5_1), the rest in F32."""
    gguf = _gguf()
    from steadydancer.fileio import atomic_path

    qtype = gguf.GGMLQuantizationType[qtype_name]
    linears = {n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.startswith(quantize_under)}
    with atomic_path(Path(path)) as tmp:
        writer = gguf.GGUFWriter(str(tmp), arch="wan")
        for name, value in model.state_dict().items():
            array = value.detach().float().cpu().numpy()
            if array.ndim > 4:
                writer.add_array(ORIG_SHAPE_FIELD + name, list(array.shape))
                array = array.reshape(array.shape[0], -1)
            if name.rpartition(".")[0] in linears and name.endswith(".weight"):
                writer.add_tensor(name, gguf.quants.quantize(array, qtype), raw_dtype=qtype)
            else:
                writer.add_tensor(name, array)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
