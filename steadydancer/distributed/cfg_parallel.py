"""CFG parallelism: the guidance passes of a step on separate ranks (xDiT's "cfg" dimension).

The passes that run in a step (cond, neg_text and, inside the pose window, neg_pose; neg_text
is not run at guide scale 1) are dealt round-robin over the ``degree`` ranks of a CFG group:
pass j to rank j mod degree. With degree 2 that is cond + neg_pose on one rank and neg_text on
the other, so a step costs at most two forwards' time instead of three (and one instead of two
outside the pose window). Each rank runs its share (one forward each, or one batched forward with
``--batch_guidance``), then one all-gather in the group hands every rank every prediction, and
each rank combines them and steps the sampler exactly as a single process does.

The exchange is float32 (the predictions' own dtype is sent along and restored, so a bf16
prediction arrives bit for bit); it is one latent-sized buffer per pass, ~12 MB at 81 frames
1024*576, next to forwards of seconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.distributed as dist

# dtype codes carried in the exchange (the last element of each slot)
WIRE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
EMPTY_SLOT = -1.0


@dataclass
class CfgParallelSplit:
    """This rank's place in its CFG group; a :class:`~steadydancer.sampling.batched.PassSplit`."""

    degree: int          # ranks in the CFG group (2 or 3)
    rank: int            # this rank's place in it (0 .. degree-1)
    group: object | None = None   # its ProcessGroup (None: the default group)

    def assign(self, indices: Sequence[int]) -> list[int]:
        return [index for j, index in enumerate(indices) if j % self.degree == self.rank]

    def gather(self, indices: Sequence[int], local: dict[int, torch.Tensor], like: torch.Tensor,
               out_device: torch.device) -> dict[int, torch.Tensor]:
        slots = math.ceil(len(indices) / self.degree)
        numel = like.numel()
        send = torch.zeros(slots, numel + 1, dtype=torch.float32, device=like.device)
        send[:, numel] = EMPTY_SLOT
        for slot, index in enumerate(self.assign(indices)):
            pred = local[index]
            if pred.dtype not in WIRE_DTYPES:
                raise TypeError(f"--cfg_parallel exchanges float32/bf16/fp16 predictions, got {pred.dtype}")
            send[slot, :numel] = pred.reshape(-1).to(device=like.device, dtype=torch.float32)
            send[slot, numel] = WIRE_DTYPES.index(pred.dtype)
        received = [torch.empty_like(send) for _ in range(self.degree)]
        dist.all_gather(received, send, group=self.group)
        out = {}
        for j, index in enumerate(indices):
            owner, slot = j % self.degree, j // self.degree
            if owner == self.rank:
                out[index] = local[index]
                continue
            row = received[owner][slot]
            code = int(row[numel].item())
            if code < 0:
                raise RuntimeError(f"CFG rank {owner} sent no prediction for pass {index}: the ranks disagree on "
                                   "the passes of this step")
            out[index] = row[:numel].view(like.shape).to(dtype=WIRE_DTYPES[code], device=out_device)
        return out

    def sum_counts(self, counts: Sequence[int]) -> list[int]:
        """Each count summed over the CFG group (e.g. the step cache's forwards and skips)."""
        total = torch.tensor(list(counts), dtype=torch.int64)
        if dist.get_backend(self.group) == "nccl":
            total = total.cuda()
        dist.all_reduce(total, group=self.group)
        return [int(v) for v in total.cpu()]


def cfg_group_ranks(world_size: int, cfg_degree: int, sp_degree: int) -> list[list[int]]:
    """Every CFG group as global ranks. Layout as xDiT's ``tp-sp-pp-cfg-dp``: sequence parallel
    innermost (blocks of ``sp_degree`` consecutive ranks), then CFG, then data parallel, so the
    CFG group of rank ``r`` holds the ranks at the same place in the other sequence-parallel
    blocks of its data-parallel group."""
    model = cfg_degree * sp_degree
    if world_size % model:
        raise ValueError(f"cfg degree {cfg_degree} x sequence-parallel degree {sp_degree} does not divide "
                         f"world size {world_size}")
    return [[base + c * sp_degree + s for c in range(cfg_degree)]
            for base in range(0, world_size, model) for s in range(sp_degree)]


def make_cfg_parallel_split(cfg_degree: int, sp_degree: int) -> CfgParallelSplit:
    """This rank's :class:`CfgParallelSplit` (a collective: every rank must call it)."""
    world_size, rank = dist.get_world_size(), dist.get_rank()
    mine = None
    for ranks in cfg_group_ranks(world_size, cfg_degree, sp_degree):
        group = None if len(ranks) == world_size else dist.new_group(ranks)
        if rank in ranks:
            mine = CfgParallelSplit(cfg_degree, ranks.index(rank), group)
    return mine
