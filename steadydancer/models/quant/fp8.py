"""FP8 (e4m3) weight storage with per-tensor scales, computed in bf16 (or FP8 matmuls on Hopper).

File layout (the ComfyUI / Kijai "fp8_e4m3fn_scaled" files, e.g.
``Wan21_SteadyDancer_fp8_e4m3fn_scaled.safetensors``): the official tensor names, optionally under
a ``model.diffusion_model.`` or ``diffusion_model.`` prefix; every quantised linear has
``<name>.weight`` in float8_e4m3fn and ``<name>.scale_weight`` (float32, one number, or one per
output row) with ``W = weight * scale_weight``; an empty ``scaled_fp8`` marker tensor; other tensors
(norms, modulation, embeddings, biases) in a 16- or 32-bit dtype. ``scale_input`` tensors, when
present, are ignored (inputs are scaled dynamically).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from steadydancer.errors import InputError

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8_DTYPE).max)  # 448
PREFIXES = ("model.diffusion_model.", "diffusion_model.")
MARKER_KEYS = ("scaled_fp8",)


def check_fp8_matmul_supported(device: torch.device | str) -> None:
    """Raise InputError unless ``device`` has FP8 tensor-core matmuls (CUDA capability >= 8.9)."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        raise InputError(f"--fp8_matmul: FP8 matmuls need an NVIDIA GPU of compute capability 8.9 or "
                         f"newer (Ada, Hopper); the device is {device.type}. Drop --fp8_matmul "
                         f"(FP8 weights still work, computed in bf16)")
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < (8, 9):
        raise InputError(f"--fp8_matmul: FP8 matmuls need compute capability 8.9 or newer; "
                         f"{torch.cuda.get_device_name(device)} has {major}.{minor}. Drop --fp8_matmul")


class FP8Linear(nn.Module):
    """A linear layer with an FP8 e4m3 weight [out, in] and a float32 scale (per tensor or per row).

    forward(x [..., in]) -> [..., out] in x's dtype. Default: the weight is dequantised to float32,
    scaled, rounded once to x's dtype and used by a normal matmul. With ``fp8_matmul`` (CUDA
    capability >= 8.9) the input is quantised per tensor and ``torch._scaled_mm`` runs in FP8.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 device: torch.device | str | None = None, compute_dtype: torch.dtype = torch.bfloat16,
                 fp8_matmul: bool = False) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.fp8_matmul = fp8_matmul
        self.weight = nn.Parameter(torch.empty(out_features, in_features, dtype=FP8_DTYPE, device=device),
                                   requires_grad=False)
        self.scale_weight = nn.Parameter(torch.ones((), dtype=torch.float32, device=device),
                                         requires_grad=False)
        self.bias = (nn.Parameter(torch.zeros(out_features, dtype=compute_dtype, device=device),
                                  requires_grad=False) if bias else None)

    @classmethod
    def from_linear(cls, linear: nn.Linear, fp8_matmul: bool = False) -> "FP8Linear":
        """Quantise ``linear`` with one per-tensor scale amax/448 (bias kept in its dtype)."""
        weight = linear.weight.detach().float()
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None,
                    device=weight.device, compute_dtype=linear.weight.dtype, fp8_matmul=fp8_matmul)
        scale = weight.abs().amax().clamp(min=1e-12) / FP8_MAX
        layer.weight.data = (weight / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
        layer.scale_weight.data = scale.reshape(())
        if linear.bias is not None:
            layer.bias.data = linear.bias.detach().clone()
        return layer

    def dequantized_weight(self, dtype: torch.dtype) -> torch.Tensor:
        """The weight as ``dtype`` [out, in] (scaled in float32, rounded once)."""
        scale = self.scale_weight.float()
        if scale.numel() == self.out_features and scale.numel() > 1:
            scale = scale.reshape(-1, 1)
        return (self.weight.float() * scale).to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        if (self.fp8_matmul and x.is_cuda and self.scale_weight.numel() == 1
                and self.in_features % 16 == 0 and self.out_features % 16 == 0):
            return self._fp8_forward(x, bias)
        return F.linear(x, self.dequantized_weight(x.dtype), bias)

    def _fp8_forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        count = rows.shape[0]
        if count % 16:  # the FP8 GEMM wants every dimension a multiple of 16
            rows = F.pad(rows, (0, 0, 0, 16 - count % 16))
        x_scale = rows.abs().amax().float().clamp(min=1e-12) / FP8_MAX
        # divide in float32 by the very scale _scaled_mm multiplies back (a bf16-rounded divisor
        # would bias every output by up to 2**-8)
        x_fp8 = (rows.float() / x_scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
        out_dtype = x.dtype if x.dtype in (torch.bfloat16, torch.float16) else torch.bfloat16
        out = torch._scaled_mm(x_fp8, self.weight.t(), scale_a=x_scale,
                               scale_b=self.scale_weight.float().reshape(()), bias=None, out_dtype=out_dtype)
        out = out[:count].to(x.dtype)
        if bias is not None:
            out = out + bias
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fp8_matmul={self.fp8_matmul}"


def _linears(model: nn.Module, under: str) -> list[tuple[nn.Module, str, nn.Linear]]:
    found = []
    for name, module in model.named_modules():
        if not (name.startswith(under) or name == under.rstrip(".")):
            continue
        for child_name, child in module.named_children():
            if type(child) is nn.Linear:
                found.append((module, child_name, child))
    return found


def quantize_model_fp8(model: nn.Module, under: str = "blocks.", fp8_matmul: bool = False) -> int:
    """Replace every ``nn.Linear`` whose name starts with ``under`` by an FP8Linear, in place.

    Returns the number of layers replaced. With ``fp8_matmul`` the device must support it
    (check_fp8_matmul_supported is called on the model's device).
    """
    if fp8_matmul:
        check_fp8_matmul_supported(next(model.parameters()).device)
    count = 0
    for parent, child_name, linear in _linears(model, under):
        setattr(parent, child_name, FP8Linear.from_linear(linear, fp8_matmul=fp8_matmul))
        count += 1
    return count


def set_fp8_matmul(model: nn.Module, enabled: bool) -> None:
    """Switch FP8 matmuls on or off for every FP8Linear of ``model``."""
    if enabled:
        check_fp8_matmul_supported(next(model.parameters()).device)
    for module in model.modules():
        if isinstance(module, FP8Linear):
            module.fp8_matmul = enabled


def save_fp8_scaled(model: nn.Module, path: str | Path) -> None:
    """Write ``model``'s state dict in the fp8_e4m3fn_scaled layout (no prefix, with the marker)."""
    from safetensors.torch import save_file

    from steadydancer.fileio import atomic_path

    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    state["scaled_fp8"] = torch.empty(0, dtype=FP8_DTYPE)
    with atomic_path(Path(path)) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})


def strip_prefix(key: str) -> str:
    """A tensor name without the ComfyUI ``model.diffusion_model.``/``diffusion_model.`` prefix
    (shared by the FP8 and GGUF loaders)."""
    for prefix in PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


def _set_tensor(model: nn.Module, key: str, tensor: torch.Tensor) -> None:
    from steadydancer.models.loading import assign_tensor

    module_name, _, leaf = key.rpartition(".")
    assign_tensor(model.get_submodule(module_name) if module_name else model, leaf, tensor)


def _checked_scale(scale: torch.Tensor, rows: int, path: Path, file_key: str) -> torch.Tensor:
    """A stored weight scale as float32 [1] or [rows]; InputError for any other size."""
    scale = scale.float().reshape(-1)
    if scale.numel() not in (1, rows):
        raise InputError(f"{path}: {file_key} has {scale.numel()} values, expected 1 or one per output "
                         f"row ({rows})")
    return scale


def load_fp8_scaled(model: nn.Module, path: str | Path, device: torch.device | str = "cpu",
                    dtype: torch.dtype = torch.bfloat16, fp8_matmul: bool = False) -> nn.Module:
    """Load an fp8_e4m3fn_scaled file into ``model`` (built on the meta device or anywhere).

    Linears with a ``.scale_weight`` in the file become FP8Linear (weights stay FP8 on ``device``);
    every other floating tensor is streamed to ``device`` in ``dtype``. One tensor at a time is read,
    so host memory stays near one tensor. Raises InputError naming the file for missing or
    unexpected names and shape mismatches.
    """
    from steadydancer.models.loading import read_safetensors_header, read_safetensors_tensor

    path = Path(path)
    if not path.is_file():
        raise InputError(f"--dit_fp8: file not found: {path}")
    device = torch.device(device)
    if fp8_matmul:
        check_fp8_matmul_supported(device)
    # plain reads, one tensor at a time (as load_dit): a memory map would keep every page touched
    # resident until the file closes
    entries = read_safetensors_header(path)
    with open(path, "rb", buffering=0) as handle:
        keys = {strip_prefix(k): k for k in entries if strip_prefix(k) not in MARKER_KEYS}
        scaled = {k[:-len(".scale_weight")] for k in keys if k.endswith(".scale_weight")}
        dequantize_on_load: set[str] = set()
        for name in sorted(scaled):
            try:
                linear = model.get_submodule(name)
            except AttributeError:
                raise InputError(f"{path}: {name}.scale_weight names no layer of the model") from None
            if not isinstance(linear, (nn.Linear, FP8Linear)):
                if not isinstance(getattr(linear, "weight", None), torch.Tensor):
                    raise InputError(f"{path}: {name}.scale_weight names a layer without a weight")
                dequantize_on_load.add(name)    # e.g. a scaled conv: dequantised once, kept in dtype
                continue
            parent_name, _, child_name = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child_name, FP8Linear(linear.in_features, linear.out_features,
                                                  linear.bias is not None, device="meta",
                                                  compute_dtype=dtype, fp8_matmul=fp8_matmul))
        expected = dict(model.state_dict(keep_vars=True))
        ignored = {k for k in keys if k.endswith(".scale_input")}
        ignored |= {f"{name}.scale_weight" for name in dequantize_on_load}
        unexpected = sorted(set(keys) - set(expected) - ignored)
        missing = sorted(set(expected) - set(keys))
        if unexpected or missing:
            detail = (f"unexpected {unexpected[:3]}" if unexpected else "") + \
                     (f"{'; ' if unexpected else ''}missing {missing[:3]}" if missing else "")
            raise InputError(f"{path}: not a SteadyDancer DiT fp8 file for this model ({detail})")
        for key, file_key in keys.items():
            if key in ignored:
                continue
            tensor = read_safetensors_tensor(handle, entries[file_key])
            target = expected[key]
            module_name = key.rpartition(".")[0]
            if module_name in dequantize_on_load and key.endswith(".weight"):
                scale = read_safetensors_tensor(handle, entries[keys[f"{module_name}.scale_weight"]])
                scale = _checked_scale(scale, tensor.shape[0], path, keys[f"{module_name}.scale_weight"])
                if scale.numel() > 1:  # one scale per output channel
                    scale = scale.reshape(-1, *([1] * (tensor.dim() - 1)))
                tensor = tensor.float() * scale
            if key.endswith(".scale_weight"):
                tensor = _checked_scale(tensor, model.get_submodule(module_name).out_features, path, file_key)
                tensor = tensor.reshape(()) if tensor.numel() == 1 else tensor
            elif tensor.shape != target.shape:
                raise InputError(f"{path}: {file_key} has shape {tuple(tensor.shape)}, the model "
                                 f"expects {tuple(target.shape)}")
            elif tensor.dtype != FP8_DTYPE and tensor.is_floating_point():
                tensor = tensor.to(dtype)
            _set_tensor(model, key, tensor.to(device))
    return model.eval().requires_grad_(False)
