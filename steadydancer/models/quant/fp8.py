"""FP8 (e4m3) weight storage with per-tensor scales, computed in bf16 (or FP8 matmuls on Hopper).

File layouts read by :func:`load_fp8_scaled` (what Kijai's WanVideoWrapper and ComfyUI accept):

- ComfyUI / Kijai ``*_fp8_e4m3fn_scaled`` (e.g. ``Wan21_SteadyDancer_fp8_e4m3fn_scaled_KJ``): the
  official tensor names, optionally under ``model.diffusion_model.``, ``diffusion_model.`` or
  ``model.``; a quantised layer has ``<name>.weight`` in float8_e4m3fn and ``<name>.scale_weight``
  (float32, one number or one per output row) with ``W = weight * scale_weight``; an empty
  ``scaled_fp8`` marker; everything else in a 16- or 32-bit dtype.
- the other scale spelling ``<name>.weight_scale`` (Kijai's loader renames it to ``scale_weight``),
  and ComfyUI's newer layout, which adds a ``<name>.comfy_quant`` uint8 tensor holding JSON
  (``{"format": "float8_e4m3fn"}``) per layer; only the float8 formats are read.
- unscaled fp8 files (float8 weights, no scales: scale 1) and float8 tensors that cannot carry a
  ``<module>.scale_weight`` (the FAAU's ``in_proj_weight``).
- parameter-level scales, as Kijai's quantiser names them (``key.replace("weight", "scale_weight")``,
  ComfyUI-WanVideoWrapper ``nodes_model_loading.py`` @ ee982da): the FAAU's
  ``condition_embedding_align.cross_attn.in_proj_weight`` gets ``...cross_attn.in_proj_scale_weight``
  (or ``...in_proj_weight_scale``); such a tensor is dequantised with its scale on load.
- ComfyUI's header-level description ``__metadata__["_quantization_metadata"]`` (JSON
  ``{"layers": {layer: {"format": ...}}}``, turned into ``.comfy_quant`` markers by
  ``comfy/utils.py::convert_old_quants`` @ 2ba5cc8): read like the markers, so that an nvfp4 file is
  refused by its format rather than by its unexpected ``weight_scale_2`` tensors.
``scale_input`` / ``input_scale`` tensors are ignored (inputs are scaled dynamically).

Only the ``nn.Linear`` layers inside the transformer blocks stay FP8 (``FP8Linear``): every
other float8 tensor (pose modules, embeddings, head, convolutions) is dequantised once on load
into the compute dtype, so that no float8 tensor reaches a plain module.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from steadydancer.errors import InputError

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = float(torch.finfo(FP8_DTYPE).max)  # 448
# Longest first. "model." alone: Kijai's loader strips it too (nodes_model_loading.py).
PREFIXES = ("model.diffusion_model.", "diffusion_model.", "model.")
MARKER_KEYS = ("scaled_fp8",)
FLOAT8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
# Spellings of a per-layer scale -> ours (Kijai: .weight_scale -> .scale_weight; ComfyUI: input_scale).
SCALE_SPELLINGS = {".weight_scale": ".scale_weight", ".input_scale": ".scale_input"}
COMFY_QUANT_SUFFIX = ".comfy_quant"
COMFY_FLOAT8_FORMATS = ("float8_e4m3fn", "float8_e5m2")
COMFY_HEADER_METADATA_KEY = "_quantization_metadata"
# Parameter-level scale spellings (a parameter named "<p>_weight", not a module's "weight"):
# Kijai: "<p>_scale_weight"; the ".weight_scale" family: "<p>_weight_scale"
PARAMETER_SCALE_SUFFIXES = ("_scale_weight", "_weight_scale")


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
    capability >= 8.9) the input is quantised (per tensor, or per row for per-row weight scales
    on capability >= 9.0) and ``torch._scaled_mm`` runs in FP8.
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

    # FP8 tensor-core accumulation in the fast mode (what FP8 inference stacks run; a little less
    # exact than the promoted accumulation)
    fast_accum = True
    # float32 elements of the temporary used while quantising activations (256 MiB): the FFN input
    # at 81 frames is 52,992 x 13,824, and one float32 copy of it alone would be 2.9 GB
    quant_chunk_elements = 2 ** 26

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        if self.fp8_matmul and x.is_cuda and self.fp8_matmul_scaling(x.device) is not None:
            return self._fp8_forward(x, bias)
        return F.linear(x, self.dequantized_weight(x.dtype), bias)

    def fp8_matmul_scaling(self, device: torch.device) -> str | None:
        """How ``torch._scaled_mm`` scales this layer on ``device``: "tensor" (per-tensor weight
        scale), "row" (per-row weight scale: per-row activation scales too; CUDA capability >= 9.0,
        torch >= 2.5), or None (dequantised bf16 matmul: in/out features not multiples of 16, or
        per-row scales on an 8.9 card)."""
        if self.in_features % 16 or self.out_features % 16:   # _scaled_mm's only shape rule (K and N)
            return None
        if self.scale_weight.numel() == 1:
            return "tensor"
        capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else (0, 0)
        return "row" if capability >= (9, 0) else None

    def quantize_input(self, rows: torch.Tensor, per_row: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """rows [M, K] (any float dtype) -> (FP8 [M, K], float32 scale [M, 1] or []) with rows ~= fp8 * scale.

        Each value is divided in float32 by the very scale ``_scaled_mm`` multiplies back and rounded
        once to FP8; the float32 temporary covers ``quant_chunk_elements`` at a time.
        """
        if per_row:
            low, high = torch.aminmax(rows, dim=1, keepdim=True)
        else:
            low, high = torch.aminmax(rows)
        scale = torch.maximum(high.float(), -low.float()).clamp(min=1e-12) / FP8_MAX
        out = torch.empty(rows.shape, dtype=FP8_DTYPE, device=rows.device)
        step = max(1, self.quant_chunk_elements // max(1, rows.shape[1]))
        for start in range(0, rows.shape[0], step):
            chunk = rows[start:start + step].float()
            chunk.div_(scale[start:start + step] if per_row else scale).clamp_(-FP8_MAX, FP8_MAX)
            out[start:start + step].copy_(chunk)
        return out, scale

    def _fp8_forward(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """x [..., in] -> [..., out] in x's dtype through ``torch._scaled_mm`` (any row count)."""
        per_row = self.fp8_matmul_scaling(x.device) == "row"
        rows = x.reshape(-1, self.in_features)
        x_fp8, x_scale = self.quantize_input(rows, per_row)
        weight_scale = self.scale_weight.float()
        if per_row:  # row-wise _scaled_mm: bf16 output, scales [M, 1] and [1, N]
            out_dtype, weight_scale = torch.bfloat16, weight_scale.reshape(1, -1)
        else:
            out_dtype = x.dtype if x.dtype in (torch.bfloat16, torch.float16) else torch.bfloat16
            weight_scale = weight_scale.reshape(())
        out = torch._scaled_mm(x_fp8, self.weight.t(), scale_a=x_scale, scale_b=weight_scale, bias=None,
                               out_dtype=out_dtype, use_fast_accum=self.fast_accum)
        if isinstance(out, tuple):  # torch < 2.5 returned (out, amax)
            out = out[0]
        out = out.to(x.dtype)
        if bias is not None:
            out.add_(bias)
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
    """A tensor name without the ComfyUI ``model.diffusion_model.``/``diffusion_model.``/``model.``
    prefix (shared by the FP8 and GGUF loaders)."""
    for prefix in PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


def canonical_name(key: str) -> str:
    """A file's tensor name in our spelling: prefix stripped, scale suffixes renamed."""
    key = strip_prefix(key)
    for spelling, ours in SCALE_SPELLINGS.items():
        if key.endswith(spelling):
            return key[:-len(spelling)] + ours
    return key


def parameter_scale_target(name: str) -> str | None:
    """The parameter a parameter-level scale belongs to (``a.in_proj_scale_weight`` ->
    ``a.in_proj_weight``), or None for any other name (module-level ``.scale_weight`` included)."""
    module_name, _, leaf = name.rpartition(".")
    for suffix in PARAMETER_SCALE_SUFFIXES:
        if leaf.endswith(suffix) and len(leaf) > len(suffix):
            target = leaf[:-len(suffix)] + "_weight"
            return f"{module_name}.{target}" if module_name else target
    return None


def read_safetensors_metadata(path: Path) -> dict[str, str]:
    """The ``__metadata__`` string map of a .safetensors header ({} when absent)."""
    import json
    import struct

    try:
        with open(path, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(length))
    except (OSError, struct.error, ValueError) as exc:
        raise InputError(f"{path}: not a readable .safetensors file ({exc})") from None
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    return metadata if isinstance(metadata, dict) else {}


def header_quant_formats(path: Path) -> dict[str, str]:
    """Layer -> format from ComfyUI's ``_quantization_metadata`` header entry ({} when absent)."""
    import json

    raw = read_safetensors_metadata(path).get(COMFY_HEADER_METADATA_KEY)
    if not raw:
        return {}
    try:
        layers = json.loads(raw)["layers"]
        # a layer's entry is {"format": ...}; some writers store the bare format string
        return {str(layer): str(conf["format"] if isinstance(conf, dict) else conf)
                for layer, conf in layers.items()}
    except (ValueError, KeyError, TypeError, AttributeError):
        raise InputError(f"{path}: the header's {COMFY_HEADER_METADATA_KEY} is not ComfyUI's "
                         f"quantisation description (JSON with 'layers')") from None


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


def _comfy_quant_format(raw: torch.Tensor, path: Path, file_key: str) -> str:
    """The ``format`` of a ``.comfy_quant`` tensor (uint8 bytes of a JSON object)."""
    import json

    try:
        text = bytes(raw.to(torch.uint8).reshape(-1).tolist()).rstrip(b"\x00").decode("utf-8")
        return str(json.loads(text)["format"])
    except (ValueError, KeyError, TypeError):
        raise InputError(f"{path}: {file_key} is not a ComfyUI quantisation descriptor (JSON with a "
                         f"'format')") from None


class Fp8FileLayout:
    """What an fp8 .safetensors file holds, by our tensor names (see the module docstring).

    ``keys``: our name -> the file's name, for every tensor a model parameter takes (weights,
    biases, ``<layer>.scale_weight``); ``ignored``: file names read by nobody (markers, input
    scales, ComfyUI descriptors); ``entries``: the file's header.
    """

    def __init__(self, path: Path) -> None:
        from steadydancer.models.loading import _SAFETENSORS_DTYPES, read_safetensors_header

        self.path = path
        self.entries = read_safetensors_header(path)
        self.keys: dict[str, str] = {}
        self.ignored: list[str] = []
        self.float8: set[str] = set()       # our names of the float8 tensors
        # our parameter name -> the file's name of its parameter-level scale (Kijai's in_proj_scale_weight)
        self.parameter_scales: dict[str, str] = {}
        for layer, fmt in header_quant_formats(path).items():
            if fmt not in COMFY_FLOAT8_FORMATS:
                raise InputError(f"{path}: the header's {COMFY_HEADER_METADATA_KEY} says {layer} is "
                                 f"{fmt!r}; only the float8 formats {', '.join(COMFY_FLOAT8_FORMATS)} "
                                 f"are supported")
        descriptors = []
        for file_key, entry in self.entries.items():
            name = canonical_name(file_key)
            if name in MARKER_KEYS or name.endswith(".scale_input"):
                self.ignored.append(file_key)
            elif parameter_scale_target(strip_prefix(file_key)) is not None:
                target = parameter_scale_target(strip_prefix(file_key))
                if target in self.parameter_scales:
                    raise InputError(f"{path}: {self.parameter_scales[target]} and {file_key} are the same scale")
                self.parameter_scales[target] = file_key
            elif name.endswith(COMFY_QUANT_SUFFIX):
                self.ignored.append(file_key)
                descriptors.append(file_key)
            else:
                if name in self.keys:
                    raise InputError(f"{path}: {self.keys[name]} and {file_key} are the same tensor")
                self.keys[name] = file_key
                if _SAFETENSORS_DTYPES[entry.dtype] in FLOAT8_DTYPES:
                    self.float8.add(name)
        if descriptors:
            from steadydancer.models.loading import read_safetensors_tensor

            with open(path, "rb", buffering=0) as handle:
                for file_key in descriptors:
                    fmt = _comfy_quant_format(read_safetensors_tensor(handle, self.entries[file_key]), path, file_key)
                    if fmt not in COMFY_FLOAT8_FORMATS:
                        raise InputError(f"{path}: {file_key} says format {fmt!r}; only the float8 formats "
                                         f"{', '.join(COMFY_FLOAT8_FORMATS)} are supported")

    @property
    def scaled(self) -> set[str]:
        """Module names that have a ``scale_weight``."""
        return {k[:-len(".scale_weight")] for k in self.keys if k.endswith(".scale_weight")}

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Our name -> torch-order shape of every model tensor (scales left out)."""
        return {name: self.entries[key].shape for name, key in self.keys.items()
                if not name.endswith(".scale_weight")}


def fp8_file_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Official tensor name -> shape of an fp8 .safetensors DiT (to infer its architecture)."""
    return Fp8FileLayout(Path(path)).shapes()


def load_fp8_scaled(model: nn.Module, path: str | Path, device: torch.device | str = "cpu",
                    dtype: torch.dtype = torch.bfloat16, fp8_matmul: bool = False,
                    keep_fp8_under: str = "blocks.") -> nn.Module:
    """Load an fp8 .safetensors DiT (any layout of the module docstring) into ``model``
    (built on the meta device or anywhere).

    ``nn.Linear`` layers under ``keep_fp8_under`` whose weight is float8_e4m3fn become FP8Linear
    (weights stay FP8 on ``device``; no scale in the file = scale 1); every other tensor,
    float8 ones included, is streamed to ``device`` in ``dtype`` (float8 ones multiplied by their
    scale first). One tensor at a time is read, so host memory stays near one tensor. Raises
    InputError naming the file for missing or unexpected names, shapes and scale sizes.
    """
    from steadydancer.models.loading import read_safetensors_tensor

    path = Path(path)
    if not path.is_file():
        raise InputError(f"--dit_fp8_file: file not found: {path}")
    device = torch.device(device)
    if fp8_matmul:
        check_fp8_matmul_supported(device)
    layout = Fp8FileLayout(path)
    keys, scaled = layout.keys, layout.scaled
    fp8_modules: set[str] = set()
    for name in sorted(scaled | {k.rpartition(".")[0] for k in layout.float8 if k.endswith(".weight")}):
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise InputError(f"{path}: {keys.get(name + '.scale_weight', keys.get(name + '.weight'))} "
                             f"names no layer of the model") from None
        if not isinstance(getattr(module, "weight", None), torch.Tensor):
            raise InputError(f"{path}: {name} is scaled or float8 but the model's {name} has no weight")
        weight_key = keys.get(name + ".weight")
        stays_fp8 = (isinstance(module, (nn.Linear, FP8Linear)) and name.startswith(keep_fp8_under)
                     and weight_key is not None and layout.entries[weight_key].dtype == "F8_E4M3")
        if stays_fp8:
            parent_name, _, child_name = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child_name, FP8Linear(module.in_features, module.out_features,
                                                  module.bias is not None, device="meta",
                                                  compute_dtype=dtype, fp8_matmul=fp8_matmul))
            fp8_modules.add(name)
    expected = dict(model.state_dict(keep_vars=True))
    # scales of layers dequantised on load are read with their weight, not assigned
    folded = {f"{name}.scale_weight" for name in scaled - fp8_modules}
    unexpected = sorted(set(keys) - set(expected) - folded)
    missing = sorted(set(expected) - set(keys) - {f"{name}.scale_weight" for name in fp8_modules})
    unexpected += sorted(layout.parameter_scales[name] for name in layout.parameter_scales
                         if name not in expected or name not in keys)
    if unexpected or missing:
        detail = "; ".join(part for part in (f"unexpected {unexpected[:3]}" if unexpected else "",
                                             f"missing {missing[:3]}" if missing else "") if part)
        raise InputError(f"{path}: not a SteadyDancer DiT fp8 file for this model ({detail})")
    # plain reads, one tensor at a time (as load_dit): a memory map would keep every page touched
    # resident until the file closes
    with open(path, "rb", buffering=0) as handle:
        for key, file_key in keys.items():
            if key in folded:
                continue
            tensor = read_safetensors_tensor(handle, layout.entries[file_key])
            module_name, _, leaf = key.rpartition(".")
            if key.endswith(".scale_weight"):      # an FP8Linear's own scale
                tensor = _checked_scale(tensor, model.get_submodule(module_name).out_features, path, file_key)
                _set_tensor(model, key, (tensor.reshape(()) if tensor.numel() == 1 else tensor).to(device))
                continue
            target = expected[key]
            if tensor.shape != target.shape:
                raise InputError(f"{path}: {file_key} has shape {tuple(tensor.shape)}, the model "
                                 f"expects {tuple(target.shape)}")
            if module_name in fp8_modules and leaf == "weight":
                _set_tensor(model, key, tensor.to(device))
                continue
            if leaf == "weight" and module_name in scaled:      # W = weight x scale, whatever its dtype
                scale_key = keys[f"{module_name}.scale_weight"]
                scale = _checked_scale(read_safetensors_tensor(handle, layout.entries[scale_key]),
                                       tensor.shape[0], path, scale_key)
                if scale.numel() > 1:  # one scale per output row / channel
                    scale = scale.reshape(-1, *([1] * (tensor.dim() - 1)))
                tensor = tensor.float() * scale
            elif key in layout.parameter_scales:     # Kijai's in_proj_scale_weight: one number or per row
                scale_key = layout.parameter_scales[key]
                scale = _checked_scale(read_safetensors_tensor(handle, layout.entries[scale_key]),
                                       tensor.shape[0], path, scale_key)
                tensor = tensor.float() * scale.reshape(-1, *([1] * (tensor.dim() - 1)))
            if tensor.is_floating_point():
                tensor = tensor.to(dtype)
            _set_tensor(model, key, tensor.to(device))
    # FP8Linear layers whose file had no scale (unscaled fp8) keep scale 1
    for name in fp8_modules - scaled:
        _set_tensor(model, f"{name}.scale_weight", torch.ones((), dtype=torch.float32, device=device))
    return model.eval().requires_grad_(False)
