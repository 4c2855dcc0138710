"""FSDP sharding of the DiT and of the T5 encoder (PyTorch FSDP2, ``fully_shard``), for inference.

As in the official code (which wraps each DiT block with FSDP), the unit of sharding is one
transformer block: a block's parameters are all-gathered just before it runs and freed right
after, so each GPU holds 1/N of the blocks' weights plus one block in full. Large modules outside
the blocks that are called through their own ``forward`` (DiT text/time embeddings, T5 token
embedding) are sharded the same way; the remaining small modules stay replicated. The root model
is not wrapped, so its staged methods (``embed``/``unembed``) and the sequence-parallel wrapper
work unchanged.
"""

from __future__ import annotations

import torch
from torch import nn


def _mesh(device: torch.device):
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(device.type, (dist.get_world_size(),))


def shard_modules(modules: list[nn.Module], device: torch.device | str,
                  param_dtype: torch.dtype | None = None) -> None:
    """Shard each module over all ranks of the default process group (in place).

    Modules are moved to ``device`` first (each rank then keeps its 1/N of every parameter).
    ``param_dtype``: dtype the gathered parameters compute in (None: as stored).
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    device = torch.device(device)
    mesh = _mesh(device)
    policy = MixedPrecisionPolicy(param_dtype=param_dtype)
    for module in modules:
        module.to(device)
        fully_shard(module, mesh=mesh, reshard_after_forward=True, mp_policy=policy)


def shard_dit(model: nn.Module, device: torch.device | str, param_dtype: torch.dtype | None = None) -> nn.Module:
    """Shard the DiT's blocks (and its text/time embeddings) over all ranks; the rest moves to
    ``device`` replicated. Returns the same model object."""
    units = list(model.blocks)
    units += [getattr(model, name) for name in ("text_embedding", "time_embedding", "time_projection")
              if isinstance(getattr(model, name, None), nn.Module)]
    shard_modules(units, device, param_dtype)
    model.to(device)  # the replicated rest (sharded parameters are already there)
    return model


def _t5_blocks(model: nn.Module) -> tuple[list[nn.Module], list[nn.Module]]:
    """(transformer blocks, token embedding) of a transformers UMT5/T5 encoder."""
    stack = getattr(model, "encoder", model)
    blocks = getattr(stack, "block", None)
    if blocks is None:
        raise TypeError(f"{type(model).__name__}: no T5 encoder blocks found (expected .encoder.block)")
    embedding = getattr(stack, "embed_tokens", None)
    return list(blocks), [embedding] if isinstance(embedding, nn.Module) else []


def shard_text_encoder(text_encoder, device: torch.device | str) -> object:
    """Shard a :class:`~steadydancer.encoders.t5.TextEncoder`'s blocks (and token embedding) over
    all ranks and place it on ``device``. Returns the same encoder object."""
    model = text_encoder.model
    blocks, embedding = _t5_blocks(model)
    shard_modules(blocks + embedding, device)
    model.to(device)
    text_encoder.device = torch.device(device)
    return text_encoder
