"""Helpers shared by the encoders: reading official ``.pth`` files, arch.json, meta-device loading."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from ..errors import InputError


def load_official_state_dict(path: str | os.PathLike, what: str) -> dict[str, torch.Tensor]:
    """Tensors of an official ``.pth`` file, read with ``weights_only=True``.

    The file is memory-mapped when its format allows, so that an 11 GB bf16 file costs
    page cache, not a private host copy. ``what`` names the file's role in error messages.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: {what} checkpoint not found (expected the official .pth file)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:
        # Files in the legacy (non-zip) serialisation cannot be memory-mapped.
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's input
            raise InputError(f"{path}: cannot read {what} checkpoint ({exc.__class__.__name__}: {exc})") from exc
    except Exception as exc:  # noqa: BLE001
        raise InputError(f"{path}: cannot read {what} checkpoint ({exc.__class__.__name__}: {exc})") from exc
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"{path}: {what} checkpoint is not a flat dict of tensors")
    return dict(state)


def read_arch_json(checkpoint_path: str | os.PathLike) -> dict:
    """``arch.json`` beside a checkpoint file (constructor numbers of a test model), or {}."""
    arch = Path(checkpoint_path).with_name("arch.json")
    if not arch.is_file():
        return {}
    try:
        return json.loads(arch.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{arch}: not valid JSON ({exc})") from exc


def require_keys(state: Mapping[str, torch.Tensor], keys: list[str], path: str | os.PathLike,
                 what: str) -> None:
    """InputError naming the file when a tensor the architecture needs is absent."""
    missing = [k for k in keys if k not in state]
    if missing:
        raise InputError(f"{path}: not a {what} checkpoint (missing tensors: {', '.join(missing[:5])}"
                         f"{' ...' if len(missing) > 5 else ''})")


def assign_state_dict(module: nn.Module, state: Mapping[str, torch.Tensor], device: torch.device | str,
                      dtype: torch.dtype, path: str | os.PathLike, what: str) -> None:
    """Load ``state`` into a module built on the meta device, tensor by tensor.

    Each floating tensor is cast to ``dtype`` and moved to ``device`` on its own, so the
    peak host memory is one tensor beyond the mapped file; a tensor listed under two
    names (tied embeddings) is converted once and stays shared. Names or shapes that do
    not match the module raise InputError naming ``path``.
    """
    expected = module.state_dict(keep_vars=True)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise InputError(f"{path}: tensors do not match the {what} architecture "
                         f"(missing: {missing[:4]}, unexpected: {unexpected[:4]})")
    converted: dict[str, torch.Tensor] = {}
    done: dict[int, torch.Tensor] = {}
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise InputError(f"{path}: tensor {name} has shape {tuple(tensor.shape)}, "
                             f"expected {tuple(expected[name].shape)} for the {what} architecture")
        if id(tensor) not in done:
            target = dtype if tensor.is_floating_point() else tensor.dtype
            done[id(tensor)] = tensor.to(device=device, dtype=target)
        converted[name] = done[id(tensor)]
    module.load_state_dict(converted, strict=True, assign=True)
