"""Process-group layout for Ulysses x ring sequence parallelism.

``world_size = ulysses_size * ring_size``. Global rank ``r`` holds sequence chunk ``r`` (of
``world_size`` equal chunks of the padded token sequence). Ranks are laid out as in xDiT/yunchang
("ulysses low"): the Ulysses groups are runs of consecutive ranks ``[i*U, (i+1)*U)`` and the ring
groups are strided ``{j, j+U, j+2U, ...}``. After the Ulysses all-to-all, the ranks of Ulysses
group ``i`` together hold ring block ``i`` (chunks ``i*U .. i*U+U-1``, contiguous in the sequence),
each for ``heads/U`` heads; ring attention then passes those blocks among the ranks of a ring group.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.distributed as dist


@dataclass
class SequenceParallelGroups:
    """This rank's place in the Ulysses x ring grid and the process groups it talks in."""

    world_size: int
    rank: int
    ulysses_size: int
    ring_size: int
    ulysses_group: object | None = None  # ProcessGroup of this rank's Ulysses group (None if size 1)
    ring_group: object | None = None  # ProcessGroup of this rank's ring group (None if size 1)
    ulysses_ranks: list[int] = field(default_factory=list)  # global ranks, in sequence order
    ring_ranks: list[int] = field(default_factory=list)  # global ranks, in sequence order

    @property
    def ulysses_rank(self) -> int:
        return self.rank % self.ulysses_size

    @property
    def ring_rank(self) -> int:
        return self.rank // self.ulysses_size

    @property
    def degree(self) -> int:
        """Number of sequence chunks (= processes taking part)."""
        return self.ulysses_size * self.ring_size


def grid_ranks(world_size: int, ulysses_size: int, ring_size: int) -> tuple[list[list[int]], list[list[int]]]:
    """All Ulysses groups and all ring groups as lists of global ranks."""
    if ulysses_size * ring_size != world_size:
        raise ValueError(f"ulysses_size {ulysses_size} x ring_size {ring_size} != world size {world_size}")
    ulysses = [list(range(i * ulysses_size, (i + 1) * ulysses_size)) for i in range(ring_size)]
    ring = [list(range(j, world_size, ulysses_size)) for j in range(ulysses_size)]
    return ulysses, ring


def make_sequence_parallel_groups(ulysses_size: int, ring_size: int) -> SequenceParallelGroups:
    """Create the Ulysses and ring process groups (a collective: every rank must call it).

    Needs an initialised default process group whose world size is ``ulysses_size * ring_size``.
    """
    world_size, rank = dist.get_world_size(), dist.get_rank()
    ulysses_all, ring_all = grid_ranks(world_size, ulysses_size, ring_size)
    groups = SequenceParallelGroups(world_size, rank, ulysses_size, ring_size)
    # new_group is collective over the default group: create every group on every rank, same order.
    for ranks in ulysses_all:
        pg = dist.new_group(ranks) if ulysses_size > 1 else None
        if rank in ranks:
            groups.ulysses_group, groups.ulysses_ranks = pg, ranks
    for ranks in ring_all:
        pg = dist.new_group(ranks) if ring_size > 1 else None
        if rank in ranks:
            groups.ring_group, groups.ring_ranks = pg, ranks
    return groups
