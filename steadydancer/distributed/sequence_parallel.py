"""Sequence parallelism of the DiT: every rank runs the blocks on one chunk of the tokens.

Follows the official xDiT integration (``usp_dit_forward``): the embedding stage runs in full on
every rank; the token sequence and its RoPE rotations are split into ``world_size`` equal chunks;
each block's self-attention exchanges keys/values (Ulysses all-to-all over heads, ring passes of
K/V blocks); cross-attention and the FFN are per token and need no exchange; the chunks are
gathered before the output head, so every rank returns the whole prediction (and the sampler
steps identically on every rank).

Unlike the official code, the tokens are zero-padded to a multiple of the degree (RoPE padded
with identity rotations) and padded keys are masked, so any frame count and size works; the
padding is dropped after the gather.

The DiT is used through its staged forward (``embed`` -> ``blocks`` -> ``unembed``). Its
self-attention modules get :class:`SequenceParallelAttention` in their ``attention_fn`` slot;
cross-attention keeps the plain kernel.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from ..models.attention import attention
from .attention import SequenceParallelAttention
from .comm import gather_sequence, pad_sequence_to_multiple
from .fsdp import call_through_root
from .groups import SequenceParallelGroups


def _self_attention_modules(model: nn.Module) -> list[nn.Module]:
    modules = []
    for block in model.blocks:
        attn = getattr(block, "self_attn", None)
        if attn is None or not hasattr(attn, "attention_fn"):
            raise TypeError(f"{type(block).__name__} has no self_attn with an attention_fn slot: "
                            "cannot apply sequence parallelism")
        modules.append(attn)
    return modules


class SequenceParallelDiT(nn.Module):
    """Callable like the DiT (``model(latents, timestep, **conditions)``) but sequence-parallel.

    Every rank of its sequence-parallel group (``groups``) must call it with the same inputs (the
    same seed and conditions); every rank returns the full output [B, out_dim, F, h, w].
    """

    def __init__(self, model: nn.Module, groups: SequenceParallelGroups, backend: str = "auto") -> None:
        super().__init__()
        if groups.degree != groups.world_size:
            raise ValueError(f"sequence-parallel degree {groups.degree} != world size {groups.world_size}")
        heads = getattr(model, "num_heads", None)
        if heads is not None and heads % groups.ulysses_size:
            raise ValueError(f"the DiT has {heads} attention heads, not divisible by ulysses_size "
                             f"{groups.ulysses_size}")
        self.model = model
        self.groups = groups
        # the model's own kernel for the Ulysses-only case: numbers match the single-process model
        self.attention = SequenceParallelAttention(groups, local_attention=attention, backend=backend)
        self._self_attention = _self_attention_modules(model)
        for module in self._self_attention:
            module.attention_fn = self.attention

    def remove(self) -> nn.Module:
        """Give the self-attention modules their local kernel back and return the plain model."""
        for module in self._self_attention:
            module.attention_fn = None
        return self.model

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.model, name)  # dtype, device, config, ... of the wrapped DiT

    def forward(self, latents: torch.Tensor, timestep: torch.Tensor, **conditions: torch.Tensor) -> torch.Tensor:
        """Same inputs and output as the DiT's forward."""
        # through the model's own call, so that an FSDP root's hooks gather its weights around it
        return call_through_root(self.model, self._staged_forward, latents, timestep, **conditions)

    def _staged_forward(self, latents: torch.Tensor, timestep: torch.Tensor, **conditions: torch.Tensor) -> torch.Tensor:
        model, degree, rank = self.model, self.groups.degree, self.groups.rank
        embedding = model.embed(latents, timestep, **conditions)
        length = embedding.tokens.shape[1]
        tokens, pad = pad_sequence_to_multiple(embedding.tokens, degree, dim=1)
        freqs = embedding.freqs
        if pad:  # identity rotation for the padded tokens
            freqs = torch.cat([freqs, torch.ones(pad, freqs.shape[1], dtype=freqs.dtype, device=freqs.device)])
        chunk = tokens.shape[1] // degree
        x = tokens[:, rank * chunk:(rank + 1) * chunk]
        local_freqs = freqs[rank * chunk:(rank + 1) * chunk]
        self.attention.valid_length = length
        for block in model.blocks:
            x = block(x, embedding.modulation, local_freqs, embedding.context)
        x = gather_sequence(x, group=self.groups.group, dim=1)[:, :length]
        return model.unembed(x, embedding)


def sequence_parallel_dit(model: nn.Module, groups: SequenceParallelGroups | None = None,
                          ulysses_size: int | None = None, ring_size: int | None = None,
                          backend: str = "auto") -> SequenceParallelDiT:
    """Wrap ``model`` for sequence parallelism over the whole default process group.

    Pass ``groups`` (from :func:`~steadydancer.distributed.groups.make_sequence_parallel_groups`)
    or the two degrees (a collective: every rank must call it).
    """
    if groups is None:
        from .groups import make_sequence_parallel_groups

        if ulysses_size is None and ring_size is None:
            ulysses_size, ring_size = dist.get_world_size(), 1
        ulysses_size = ulysses_size or dist.get_world_size() // ring_size
        ring_size = ring_size or dist.get_world_size() // ulysses_size
        groups = make_sequence_parallel_groups(ulysses_size, ring_size)
    return SequenceParallelDiT(model, groups, backend=backend)
