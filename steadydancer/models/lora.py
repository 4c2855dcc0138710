"""LoRA files for the Wan 2.1 I2V 14B DiT (e.g. lightx2v step/guidance distillation), at a strength.

Accepted key layouts (any of the prefixes ``diffusion_model.``, ``model.diffusion_model.``,
``transformer.``, ``base_model.model.``):
  - PEFT:   ``blocks.N.self_attn.q.lora_A.weight`` / ``.lora_B.weight`` (``.weight`` optional)
  - LoRA:   ``blocks.N.self_attn.q.lora_down.weight`` / ``.lora_up.weight`` (+ ``.alpha``), and
            LoCon's ``.lora_mid.weight`` (LyCORIS's Tucker middle factor, [rank, rank, *kernel]),
            which lightx2v's loader also takes with its pair (``lightx2v/utils/lora_loader.py``
            @ 0d6b494, STANDARD pattern); it is composed into the down factor,
            ``down'[r, i, k] = sum_s mid[r, s, k] down[s, i]``, as ComfyUI's
            ``weight_adapter/lora.py`` does, so ``up @ down'`` is the layer's delta
  - kohya:  ``lora_unet_blocks_N_self_attn_q.lora_down.weight`` / ``.lora_up.weight`` / ``.alpha``
  - full deltas, as lightx2v ships them: ``<module>.diff`` (weight), ``<module>.diff_b`` and
    ``.lora_B.bias`` (bias), ``blocks.N.diff_m`` (the block's modulation), ``<module>.<param>.diff``
  - diffusers module names (``blocks.N.attn1.to_q``, ``attn2.add_k_proj``, ``ffn.net.0.proj``...)
    are mapped to the official ones.
The update is ``W += strength * (alpha / rank) * up @ down`` (alpha/rank = 1 without alpha).
Plain ``nn.Linear``/``nn.Conv3d`` weights are merged in float32 and rounded once to their dtype
(no cost per step); quantised layers (FP8, GGUF) keep their stored weights and add the low-rank
path at run time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from steadydancer.errors import InputError

__all__ = ["LoraWeights", "parse_lora_arg", "read_lora", "apply_lora"]

PREFIXES = ("model.diffusion_model.", "diffusion_model.", "base_model.model.", "transformer.", "model.")
# diffusers WanTransformer3DModel names -> official names, applied to the module path
DIFFUSERS_NAMES = [
    (r"\.attn1\.to_q$", ".self_attn.q"), (r"\.attn1\.to_k$", ".self_attn.k"),
    (r"\.attn1\.to_v$", ".self_attn.v"), (r"\.attn1\.to_out\.0$", ".self_attn.o"),
    (r"\.attn2\.to_q$", ".cross_attn.q"), (r"\.attn2\.to_k$", ".cross_attn.k"),
    (r"\.attn2\.to_v$", ".cross_attn.v"), (r"\.attn2\.to_out\.0$", ".cross_attn.o"),
    (r"\.attn2\.add_k_proj$", ".cross_attn.k_img"), (r"\.attn2\.add_v_proj$", ".cross_attn.v_img"),
    (r"\.ffn\.net\.0\.proj$", ".ffn.0"), (r"\.ffn\.net\.2$", ".ffn.2"),
]
SUFFIXES = {  # key ending -> role
    ".lora_A.weight": "down", ".lora_B.weight": "up", ".lora_A": "down", ".lora_B": "up",
    ".lora_down.weight": "down", ".lora_up.weight": "up", ".alpha": "alpha", ".lora_mid.weight": "mid",
    ".diff": "diff", ".diff_b": "diff_b", ".diff_m": "diff_m",
    ".lora_B.bias": "diff_b", ".lora_up.bias": "diff_b",
}


@dataclass
class LoraWeights:
    """The LoRA tensors aimed at one module (by its name in the model)."""
    down: torch.Tensor | None = None      # [rank, in, ...]
    up: torch.Tensor | None = None        # [out, rank, ...]
    mid: torch.Tensor | None = None       # LoCon/Tucker [rank, rank, *kernel]; folded into down on read
    alpha: float | None = None
    diff: torch.Tensor | None = None      # full weight delta
    diff_b: torch.Tensor | None = None    # bias delta
    param_diffs: dict[str, torch.Tensor] = field(default_factory=dict)   # other parameters' deltas
    keys: list[str] = field(default_factory=list)

    def weight_delta(self, shape: torch.Size) -> torch.Tensor | None:
        """float32 delta for a weight of ``shape`` (strength not applied)."""
        delta = None
        if self.down is not None and self.up is not None:
            rank = self.down.shape[0]
            scale = (self.alpha / rank) if self.alpha is not None else 1.0
            delta = (self.up.float().flatten(1) @ self.down.float().flatten(1)) * scale
            delta = delta.reshape(shape)
        if self.diff is not None:
            delta = self.diff.float().reshape(shape) if delta is None else delta + self.diff.float().reshape(shape)
        return delta


def parse_lora_arg(value: str) -> tuple[Path, float]:
    """``PATH[:strength]`` (strength defaults to 1.0) -> (path, strength); InputError when malformed."""
    path, strength = value, 1.0
    head, sep, tail = value.rpartition(":")
    if sep and head and re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", tail):
        path, strength = head, float(tail)
    if not Path(path).is_file():
        raise InputError(f"--lora: file not found: {path} (expected PATH or PATH:STRENGTH)")
    return Path(path), strength


def _module_path(key: str) -> tuple[str, str] | None:
    for suffix, role in SUFFIXES.items():
        if key.endswith(suffix):
            return key[:-len(suffix)], role
    return None


def read_lora(path: str | Path, module_names: list[str], param_names: set[str] = frozenset()) -> dict[str, LoraWeights]:
    """Read a LoRA file (.safetensors, or a .pt/.pth state dict) and map it onto ``module_names``
    (and, for full deltas of parameters that are not a layer's weight, ``param_names``).

    Returns {module name: LoraWeights}. InputError (naming the file) for keys it cannot place.
    """
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # safetensors' SafetensorError, pickle/zip errors, OSError
        raise InputError(f"--lora {path}: not a readable LoRA file ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    if not isinstance(state, dict) or not state:
        raise InputError(f"--lora {path}: no tensors found")
    by_kohya = {name.replace(".", "_"): name for name in module_names}
    known = set(module_names)
    result: dict[str, LoraWeights] = {}
    for key, tensor in state.items():
        parsed = _module_path(key)
        if parsed is None:
            raise InputError(f"--lora {path}: unrecognised key {key!r} (expected lora_A/lora_B, "
                             f"lora_down/lora_up/alpha or diff/diff_b names)")
        module, role = parsed
        if module.startswith("lora_unet_"):
            name = by_kohya.get(module[len("lora_unet_"):])
        else:
            for prefix in PREFIXES:
                if module.startswith(prefix) and module[len(prefix):].split(".")[0] in {
                        n.split(".")[0] for n in known}:
                    module = module[len(prefix):]
                    break
            for pattern, replacement in DIFFUSERS_NAMES:
                module = re.sub(pattern, replacement, module)
            name = module if module in known else None
            owner, _, leaf = module.rpartition(".")
            if name is None and role == "diff" and module in param_names:
                name, role = owner, ("param", leaf)        # e.g. blocks.0.modulation.diff
        if role == "diff_m" and name is not None:
            role = ("param", "modulation")                  # lightx2v: blocks.N.diff_m
        if name is None:
            raise InputError(f"--lora {path}: {key!r} targets no layer of this model "
                             f"(is it a LoRA for the Wan 2.1 I2V 14B DiT?)")
        entry = result.setdefault(name, LoraWeights())
        entry.keys.append(key)
        if role == "alpha":
            entry.alpha = float(tensor.float().reshape(-1)[0])
        elif isinstance(role, tuple):
            entry.param_diffs[role[1]] = tensor
        else:
            setattr(entry, role, tensor)
    for name, entry in result.items():
        if (entry.down is None) != (entry.up is None):
            raise InputError(f"--lora {path}: {name} has only one of its two low-rank matrices")
        if entry.mid is not None:
            entry.down, entry.mid = _fold_mid(entry, path, name), None
    return result


def _fold_mid(entry: LoraWeights, path: Path, name: str) -> torch.Tensor:
    """LoCon's middle factor folded into the down factor: mid [r, s, *k] x down [s, in, 1...]
    -> down' [r, in, *k] (float32), so that ``up @ down'`` is the layer's delta."""
    mid, down = entry.mid.float(), entry.down
    if down is None or mid.dim() < 2 or mid.shape[1] != down.shape[0]:
        raise InputError(f"--lora {path}: {name}.lora_mid.weight {tuple(mid.shape)} does not fit its "
                         f"lora_down {None if down is None else tuple(down.shape)} (expected [rank, rank, ...])")
    down2d = down.float().reshape(down.shape[0], -1)
    if down.dim() > 2 and down2d.shape[1] != down.shape[1]:
        raise InputError(f"--lora {path}: {name}.lora_down.weight {tuple(down.shape)} with a lora_mid must "
                         f"have a 1x1 kernel")
    return torch.einsum("rs...,si->ri...", mid, down2d)


def _runtime_lora_hook(module: nn.Module, args, output):
    x = args[0]
    if module.lora_down is not None:
        output = output + F.linear(F.linear(x, module.lora_down.to(x.dtype)), module.lora_up.to(x.dtype))
    if module.lora_delta is not None:
        output = output + F.linear(x, module.lora_delta.to(x.dtype))
    return output


def apply_lora(model: nn.Module, path: str | Path, strength: float = 1.0,
               compute_dtype: torch.dtype | None = None) -> int:
    """Apply one LoRA file to ``model`` at ``strength``, in place; returns the layers changed.

    ``compute_dtype``: the dtype of the run-time factors kept for quantised layers (the DiT's
    compute dtype, so that block swap copies bf16, not float32, factors); None: bfloat16 on CUDA,
    float32 elsewhere.

    Checks every target and shape before changing anything, so a LoRA that does not fit leaves
    the model untouched and raises InputError naming the file and the first mismatch.
    """
    path = Path(path)
    modules = dict(model.named_modules())
    entries = read_lora(path, [n for n in modules if n], {n for n, _ in model.named_parameters()})
    plans = []
    for name, entry in entries.items():
        module = modules[name]
        for leaf, delta in entry.param_diffs.items():
            param = getattr(module, leaf, None)
            if not isinstance(param, torch.Tensor) or param.numel() != delta.numel():
                raise InputError(f"--lora {path}: the delta for {name}.{leaf} has {tuple(delta.shape)}, "
                                 f"the model has {None if param is None else tuple(param.shape)}")
        if entry.down is None and entry.diff is None and entry.diff_b is None:
            plans.append((name, module, entry, None))
            continue
        weight = getattr(module, "weight", None)
        if weight is None:
            raise InputError(f"--lora {path}: {name} has no weight to adapt")
        out_features = getattr(module, "out_features", weight.shape[0])
        in_features = getattr(module, "in_features", None)
        shape = torch.Size((out_features, in_features)) if in_features is not None and weight.dim() == 2 \
            else weight.shape
        if entry.down is not None:
            rank_ok = entry.down.shape[0] == entry.up.shape[1]
            if not rank_ok or entry.up.shape[0] * entry.down[0].numel() != shape.numel():
                raise InputError(f"--lora {path}: {name} is {tuple(shape)} in the model, the LoRA gives "
                                 f"up {tuple(entry.up.shape)} x down {tuple(entry.down.shape)}")
        if entry.diff is not None and entry.diff.numel() != shape.numel():
            raise InputError(f"--lora {path}: {name}.diff has {tuple(entry.diff.shape)}, the model "
                             f"has {tuple(shape)}")
        bias = getattr(module, "bias", None)
        if entry.diff_b is not None and (bias is None or entry.diff_b.numel() != bias.numel()):
            raise InputError(f"--lora {path}: {name}.diff_b does not match the layer's bias")
        plans.append((name, module, entry, shape))
    for name, module, entry, shape in plans:
        with torch.no_grad():
            for leaf, delta in entry.param_diffs.items():
                param = getattr(module, leaf)
                param.data = (param.float() + strength * delta.float().reshape(param.shape).to(param.device)
                              ).to(param.dtype)
        if shape is None:
            continue
        weight = module.weight
        quantised = not weight.is_floating_point() or weight.element_size() == 1
        with torch.no_grad():
            if not quantised:
                delta = entry.weight_delta(weight.shape)
                if delta is not None:
                    weight.data = (weight.float() + strength * delta.to(weight.device)).to(weight.dtype)
            else:
                _add_runtime_lora(module, entry, strength, shape, compute_dtype)
            if entry.diff_b is not None:
                bias = module.bias
                bias.data = (bias.float() + strength * entry.diff_b.float().to(bias.device)).to(bias.dtype)
    return len(plans)


def _add_runtime_lora(module: nn.Module, entry: LoraWeights, strength: float, shape: torch.Size,
                      compute_dtype: torch.dtype | None = None) -> None:
    """Add ``up(down(x))`` and/or ``delta @ x`` to a quantised linear's output at run time.

    A second LoRA on the same layer stacks its ranks onto ``lora_down``/``lora_up`` and sums its
    full delta into ``lora_delta`` (one dense [out, in] matrix, not a rank-``in`` pair).
    """
    device = module.weight.device
    # block swap keeps the layer in host memory at this point: the device alone cannot tell the dtype
    dtype = compute_dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    if not hasattr(module, "lora_delta"):
        for name in ("lora_down", "lora_up", "lora_delta"):
            module.register_buffer(name, None, persistent=False)
        module.register_forward_hook(_runtime_lora_hook)
    if entry.down is not None:
        rank = entry.down.shape[0]
        scale = strength * ((entry.alpha / rank) if entry.alpha is not None else 1.0)
        down, up = entry.down.float().flatten(1), entry.up.float().flatten(1) * scale
        if module.lora_down is not None:
            down = torch.cat([module.lora_down.float().cpu(), down], dim=0)
            up = torch.cat([module.lora_up.float().cpu(), up], dim=1)
        module.lora_down, module.lora_up = down.to(device, dtype), up.to(device, dtype)
    if entry.diff is not None:
        delta = entry.diff.float().reshape(shape) * strength
        if module.lora_delta is not None:
            delta = delta + module.lora_delta.float().cpu()
        module.lora_delta = delta.to(device, dtype)
