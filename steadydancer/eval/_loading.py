"""Reading the standard weight files of the evaluation networks."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from ..errors import InputError


def read_state_dict(path: str | os.PathLike, what: str) -> dict[str, torch.Tensor]:
    """Tensors of a ``.pth``/``.pt``/``.safetensors`` weight file (``weights_only`` torch.load).

    A TorchScript archive (OpenAI's CLIP ``ViT-B-32.pt``) is read through ``torch.jit.load`` and
    its ``state_dict()``. A dict holding the tensors under ``state_dict``/``model``/``params`` (AMT's and
    pyiqa's checkpoints) is unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: {what} weight file not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return dict(load_file(str(path)))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.load names TorchScript archives before refusing them
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - maybe a TorchScript archive, else a bad file
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch.jit is deprecated in favour of export, still the format
                state = torch.jit.load(str(path), map_location="cpu").state_dict()
        except Exception:  # noqa: BLE001
            raise InputError(f"{path}: cannot read {what} weights ({exc.__class__.__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    for wrapper in ("state_dict", "model", "params"):
        if isinstance(state, Mapping) and wrapper in state and isinstance(state[wrapper], Mapping):
            state = state[wrapper]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"{path}: {what} weights are not a dict of tensors")
    return dict(state)


def load_into(module: nn.Module, state: Mapping[str, torch.Tensor], path: str | os.PathLike,
              what: str, ignore_prefixes: tuple[str, ...] = ()) -> nn.Module:
    """Copy ``state`` into ``module`` in float32 (the released files may be float16); names must match.

    Tensors whose names start with one of ``ignore_prefixes`` (heads we do not use) are skipped.
    """
    state = {k: v for k, v in state.items() if not k.startswith(ignore_prefixes)}
    expected = module.state_dict()
    # BatchNorm's step counter is absent from files saved before torch 0.4.1 (or stripped); torch's own
    # loader fills it in for such files, and it plays no part in inference
    for name in expected:
        if name.endswith(".num_batches_tracked") and name not in state:
            state[name] = expected[name]
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise InputError(f"{path}: not a {what} weight file (missing: {missing[:3]}, unexpected: {unexpected[:3]})")
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise InputError(f"{path}: tensor {name} has shape {tuple(tensor.shape)}, "
                             f"expected {tuple(expected[name].shape)} for {what}")
    module.load_state_dict({k: (v.float() if v.is_floating_point() else v) for k, v in state.items()})
    return module.eval().requires_grad_(False)
