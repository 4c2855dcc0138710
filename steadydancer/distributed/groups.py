"""Process-group layout for Ulysses x ring sequence parallelism, in one or several data-parallel
groups (``steadydancer batch``: each group of ``ulysses_size * ring_size`` processes makes its own
videos).

Group ``g`` is the consecutive global ranks ``[g*S, (g+1)*S)`` with ``S = ulysses_size * ring_size``
(data parallelism outermost, as xDiT orders it). Within a group, rank ``r`` (global rank minus
``g*S``) holds sequence chunk ``r`` (of ``S`` equal chunks of the padded token sequence). Ranks are laid out as in xDiT/yunchang
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

    world_size: int  # processes of this sequence-parallel group (= degree)
    rank: int  # this process's place in its group (its sequence chunk)
    ulysses_size: int
    ring_size: int
    ulysses_group: object | None = None  # ProcessGroup of this rank's Ulysses group (None if size 1)
    ring_group: object | None = None  # ProcessGroup of this rank's ring group (None if size 1)
    ulysses_ranks: list[int] = field(default_factory=list)  # global ranks, in sequence order
    ring_ranks: list[int] = field(default_factory=list)  # global ranks, in sequence order
    group: object | None = None  # ProcessGroup of the whole sequence-parallel group (None: the world)

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
    """All Ulysses groups and all ring groups (of every data-parallel group) as lists of global ranks."""
    degree = ulysses_size * ring_size
    if world_size % degree:
        raise ValueError(f"ulysses_size {ulysses_size} x ring_size {ring_size} does not divide world size {world_size}")
    ulysses, ring = [], []
    for base in range(0, world_size, degree):
        ulysses += [list(range(base + i * ulysses_size, base + (i + 1) * ulysses_size)) for i in range(ring_size)]
        ring += [list(range(base + j, base + degree, ulysses_size)) for j in range(ulysses_size)]
    return ulysses, ring


def make_sequence_parallel_groups(ulysses_size: int, ring_size: int) -> SequenceParallelGroups:
    """Create the Ulysses and ring process groups (a collective: every rank must call it).

    Needs an initialised default process group whose world size is a multiple of
    ``ulysses_size * ring_size``; each block of that many consecutive ranks is one
    sequence-parallel group (with a process group of its own when there are several).
    """
    world_size, rank = dist.get_world_size(), dist.get_rank()
    degree = ulysses_size * ring_size
    ulysses_all, ring_all = grid_ranks(world_size, ulysses_size, ring_size)
    base = rank - rank % degree
    groups = SequenceParallelGroups(degree, rank - base, ulysses_size, ring_size)
    groups.group = make_data_parallel_groups(degree)
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


def make_data_parallel_groups(group_size: int) -> object | None:
    """The process group of this rank's block of ``group_size`` consecutive ranks (a collective:
    every rank must call it). None when the block is the whole world (use the default group)."""
    world_size, rank = dist.get_world_size(), dist.get_rank()
    if group_size == world_size:
        return None
    mine = None
    for base in range(0, world_size, group_size):
        pg = dist.new_group(list(range(base, base + group_size)))
        if base <= rank < base + group_size:
            mine = pg
    return mine


def check_groups_within_nodes(group_size: int, world_size: int, local_world_size: int | None) -> None:
    """InputError (one line) when a data-parallel group of ``group_size`` consecutive ranks would
    hold processes of two nodes without holding them whole: torchrun numbers the ranks node by
    node (``LOCAL_WORLD_SIZE`` per node), so a group stays within a node when that number divides
    by the group size, and groups of whole nodes (the group size a multiple of it, e.g. the
    multi-node layout of ``generate``) are allowed too. ``local_world_size`` None: not torchrun."""
    from ..errors import InputError

    if local_world_size is None or group_size <= 1 or group_size >= world_size:
        return
    if local_world_size % group_size and group_size % local_world_size:
        raise InputError(f"groups of {group_size} processes (--ulysses_size x --ring_size) with {local_world_size} "
                         f"processes per node (LOCAL_WORLD_SIZE): a group would span two nodes; use a group size "
                         f"that divides {local_world_size}")
