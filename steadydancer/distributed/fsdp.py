"""FSDP sharding of the DiT and of the T5 encoder (PyTorch FSDP2, ``fully_shard``), for inference.

As in the official code (which wraps each DiT block with FSDP), the unit of sharding is one
transformer block: a block's parameters are all-gathered just before it runs and freed right
after, so each GPU holds 1/N of the blocks' weights plus one block in full. Large modules outside
the blocks that are called through their own ``forward`` (DiT text/time embeddings, T5 token
embedding) are sharded the same way, and finally the whole model, whose remaining parameters
(patch embeddings, pose modules, head) form the root unit.

The root matters: FSDP2 decides which unit is the root at the first forward, and a root keeps its
parameters gathered after its forward (before torch 2.8, pytorch #154704, even with
``reshard_after_forward=True``). Were the blocks left without a sharded ancestor, each would be its
own root, and after one forward every rank would hold the whole model. With the model as the root,
only its own small parameters (0.24 B of the 14B DiT) may stay gathered.

The root's hooks run around ``model(...)`` only; code that runs the staged methods
(``embed`` -> blocks -> ``unembed``) itself, as the sequence-parallel wrapper does, goes through
:func:`call_through_root`.
"""

from __future__ import annotations

import re
from typing import Any, Callable

import torch
from torch import nn

from steadydancer.errors import InputError

# The oldest torch whose APIs the package uses: ``torch.distributed.fsdp.fully_shard`` is public
# from 2.6 (pyproject.toml, requirements.txt and the README state the same floor).
TORCH_FLOOR = (2, 6)


def torch_version(version: str | None = None) -> tuple[int, int]:
    """(major, minor) of ``version`` (default: the running torch), e.g. "2.11.0+cu130" -> (2, 11)."""
    numbers = re.findall(r"\d+", str(version or torch.__version__))
    return int(numbers[0]), int(numbers[1])


def check_torch_for_fsdp(version: str | None = None) -> None:
    """InputError (one line) when the running torch predates the FSDP API used here."""
    if torch_version(version) < TORCH_FLOOR:
        floor = ".".join(map(str, TORCH_FLOOR))
        raise InputError(f"--dit_fsdp/--t5_fsdp need torch >= {floor} (torch.distributed.fsdp.fully_shard); "
                         f"this is torch {version or torch.__version__}: upgrade torch or drop the FSDP flags")


def _mesh(device: torch.device, group=None):
    """The FSDP mesh: all ranks, or the ranks of ``group`` (a ``batch`` group's ProcessGroup)."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

    if group is not None:
        return DeviceMesh.from_group(group, device.type)
    return init_device_mesh(device.type, (dist.get_world_size(),))


def shard_modules(modules: list[nn.Module], device: torch.device | str,
                  param_dtype: torch.dtype | None = None, root: nn.Module | None = None, group=None) -> None:
    """Shard each module over all ranks of the default process group (in place), then ``root``
    (an ancestor of all of them, called through its ``forward``) as the root unit. ``group``: shard
    over that ProcessGroup's ranks only (None: the default group).

    Modules are moved to ``device`` first (each rank then keeps its 1/N of every parameter).
    ``param_dtype``: dtype the gathered parameters compute in (None: as stored).
    """
    check_torch_for_fsdp()
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    device = torch.device(device)
    mesh = _mesh(device, group)
    policy = MixedPrecisionPolicy(param_dtype=param_dtype)
    for module in modules:
        module.to(device)
        fully_shard(module, mesh=mesh, reshard_after_forward=True, mp_policy=policy)
    if root is not None:
        # fully_shard moves the root's own parameters and buffers to the mesh's device (a
        # module-wide .to() would also walk the units' sharded parameters); the root's inputs keep
        # their dtypes (latents, timesteps): only its weights follow param_dtype
        fully_shard(root, mesh=mesh, reshard_after_forward=True,
                    mp_policy=MixedPrecisionPolicy(param_dtype=param_dtype, cast_forward_inputs=False))


def call_through_root(model: nn.Module, body: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run ``body(*args, **kwargs)`` as if it were ``model``'s forward, so that hooks registered on
    ``model`` (FSDP's root hooks: gather its own weights, free them after) run around it."""
    model.forward = body                 # an instance attribute: nn.Module.__call__ finds it first
    try:
        return model(*args, **kwargs)
    finally:
        del model.forward


def shard_dit(model: nn.Module, device: torch.device | str, param_dtype: torch.dtype | None = None,
              group=None) -> nn.Module:
    """Shard the DiT's blocks (and its text/time embeddings) over all ranks (or those of ``group``);
    the rest moves to ``device`` replicated. Returns the same model object."""
    units = list(model.blocks)
    units += [getattr(model, name) for name in ("text_embedding", "time_embedding", "time_projection")
              if isinstance(getattr(model, name, None), nn.Module)]
    shard_modules(units, device, param_dtype, root=model, group=group)
    return model


def _t5_blocks(model: nn.Module) -> tuple[list[nn.Module], list[nn.Module]]:
    """(transformer blocks, token embedding) of a transformers UMT5/T5 encoder."""
    stack = getattr(model, "encoder", model)
    blocks = getattr(stack, "block", None)
    if blocks is None:
        raise TypeError(f"{type(model).__name__}: no T5 encoder blocks found (expected .encoder.block)")
    embedding = getattr(stack, "embed_tokens", None)
    return list(blocks), [embedding] if isinstance(embedding, nn.Module) else []


def _share_embedding_module(model: nn.Module, embedding: nn.Module) -> bool:
    """Make every module of ``model`` that holds ``embedding``'s weight (a tied copy, e.g. the
    T5 model's ``shared`` beside ``encoder.embed_tokens``) the very same module object, so that
    FSDP can shard the embedding as a unit of its own (a parameter may belong to one unit only).
    False when a holder is of another kind (then the embedding stays with the root unit)."""
    holders = [(name, module) for name, module in model.named_modules()
               if module is not embedding and module._parameters.get("weight") is embedding.weight]
    if any(type(module) is not type(embedding) for _, module in holders):
        return False
    for name, _ in holders:
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, embedding)
    return True


def shard_text_encoder(text_encoder, device: torch.device | str, group=None) -> object:
    """Shard a :class:`~steadydancer.encoders.t5.TextEncoder`'s blocks (and token embedding) over
    all ranks (or those of ``group``) and place it on ``device``. Returns the same encoder object."""
    model = text_encoder.model
    blocks, embedding = _t5_blocks(model)
    if embedding and not _share_embedding_module(model, embedding[0]):
        embedding = []
    shard_modules(blocks + embedding, device, root=model, group=group)
    text_encoder.device = torch.device(device)
    return text_encoder
