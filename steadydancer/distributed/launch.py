"""Multi-process set-up for ``torchrun``: flag checks, process group, seed, who writes.

Usage (what the generate command does)::

    check_parallel_flags(ulysses_size=U, ring_size=R, cfg_parallel=C, dit_fsdp=..., t5_fsdp=...)  # before loading
    setup = init_distributed(ulysses_size=U, ring_size=R, cfg_parallel=C, dit_fsdp=..., t5_fsdp=...)
    seed = setup.broadcast_seed(seed)        # rank 0's seed everywhere (a random one too)
    dit = setup.prepare_dit(load_dit(...))   # FSDP and/or sequence parallelism
    ...
    if setup.is_main: write the video
    setup.shutdown()

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK (and MASTER_ADDR/PORT); without them the world is
one process and every multi-process flag is refused with one line.

Rank layout (xDiT's ``tp-sp-pp-cfg-dp`` order, ``xfuser/core/distributed/parallel_state.py``):
sequence parallelism innermost (``S = ulysses_size x ring_size`` consecutive ranks), then CFG
parallelism (``C = cfg_parallel`` such blocks make one video together), then data parallelism
(``batch``: groups of ``C x S`` consecutive ranks each make their own videos). The backend is NCCL when
CUDA is available (one GPU per process, ``cuda:LOCAL_RANK``) and gloo on the CPU.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from ..errors import InputError
from ..options import draw_seed
from .cfg_parallel import CfgParallelSplit, make_cfg_parallel_split
from .groups import SequenceParallelGroups, make_data_parallel_groups, make_sequence_parallel_groups

log = logging.getLogger(__name__)

LAUNCH_HINT = "launch with torchrun --nproc_per_node=N (see scripts/generate_torchrun.sh)"


@dataclass(frozen=True)
class TorchrunEnv:
    """What torchrun tells each process (defaults: a single process)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @staticmethod
    def read() -> "TorchrunEnv":
        try:
            return TorchrunEnv(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                               int(os.environ.get("LOCAL_RANK", 0)))
        except ValueError as exc:
            raise InputError(f"RANK/WORLD_SIZE/LOCAL_RANK must be whole numbers (set by torchrun): {exc}") from None


CFG_PARALLEL_DEGREES = (1, 2, 3)   # 1: off; 2: xDiT's use_cfg_parallel; 3: one rank per DC-CFG pass


def check_parallel_flags(ulysses_size: int = 1, ring_size: int = 1, dit_fsdp: bool = False, t5_fsdp: bool = False,
                         world_size: int | None = None, num_heads: int | None = None,
                         data_parallel: bool = False, cfg_parallel: int = 1) -> None:
    """Refuse impossible multi-process settings with one line (:class:`InputError`).

    ``world_size`` defaults to torchrun's WORLD_SIZE; ``num_heads`` (the DiT's attention heads,
    from its config.json) is checked against ``ulysses_size`` when given. ``data_parallel``
    (``batch``): the processes form groups of ``ulysses_size x ring_size x cfg_parallel`` that
    each make their own videos, so that product must divide the world instead of equal it.
    ``cfg_parallel``: the guidance passes of a step on that many sequence-parallel blocks.
    """
    world_size = TorchrunEnv.read().world_size if world_size is None else world_size
    for flag, value in (("--ulysses_size", ulysses_size), ("--ring_size", ring_size)):
        if not isinstance(value, int) or value < 1:
            raise InputError(f"{flag}: expected a whole number >= 1, got {value!r}")
    if cfg_parallel not in CFG_PARALLEL_DEGREES:
        raise InputError(f"--cfg_parallel: expected 2 or 3 (the guidance passes of a step on that many groups of "
                         f"processes), got {cfg_parallel!r}")
    sequence_parallel = ulysses_size > 1 or ring_size > 1
    if world_size == 1:
        flags = [f for f, on in (("--dit_fsdp", dit_fsdp), ("--t5_fsdp", t5_fsdp),
                                 (f"--ulysses_size {ulysses_size}", ulysses_size > 1),
                                 (f"--ring_size {ring_size}", ring_size > 1),
                                 (f"--cfg_parallel {cfg_parallel}", cfg_parallel > 1)) if on]
        if flags:
            verb = "needs" if len(flags) == 1 else "need"
            raise InputError(f"{' and '.join(flags)} {verb} several processes, but this is a single process: "
                             f"{LAUNCH_HINT}")
        return
    cfg_text = f" x --cfg_parallel {cfg_parallel}" if cfg_parallel > 1 else ""
    group = ulysses_size * ring_size * cfg_parallel
    if data_parallel:
        if world_size % group:
            raise InputError(f"--ulysses_size {ulysses_size} x --ring_size {ring_size}{cfg_text} = {group} processes "
                             f"per group must divide the number of processes ({world_size})")
        if (dit_fsdp or t5_fsdp) and group == 1:
            raise InputError("--dit_fsdp/--t5_fsdp shard within a group of --ulysses_size x --ring_size processes; "
                             "with groups of one process there is nothing to shard (set --ulysses_size > 1)")
    elif (sequence_parallel or cfg_parallel > 1) and group != world_size:
        raise InputError(f"--ulysses_size {ulysses_size} x --ring_size {ring_size}{cfg_text} = {group} "
                         f"must equal the number of processes ({world_size})")
    if dit_fsdp and cfg_parallel > 1 and not sequence_parallel:
        raise InputError(f"--dit_fsdp with --cfg_parallel shards the DiT within each group of --ulysses_size x "
                         f"--ring_size processes (the CFG ranks run different passes); with groups of one there "
                         f"is nothing to shard: drop --dit_fsdp or set --ulysses_size > 1")
    if num_heads is not None and num_heads % ulysses_size:
        raise InputError(f"--ulysses_size {ulysses_size} must divide the DiT's {num_heads} attention heads "
                         f"(use a divisor of {num_heads}, and --ring_size for the rest)")


@dataclass
class DistributedSetup:
    """This process's part in a multi-process run (a single process is the trivial case)."""

    env: TorchrunEnv
    device: torch.device
    ulysses_size: int = 1
    ring_size: int = 1
    dit_fsdp: bool = False
    t5_fsdp: bool = False
    groups: SequenceParallelGroups | None = None
    attention_backend: str = "auto"
    group_size: int = 0  # processes that make one video together (0: the whole world)
    group: object | None = None  # their ProcessGroup (None: the default group)
    cfg: CfgParallelSplit | None = None  # CFG parallelism (None: every rank runs every pass)

    @property
    def rank(self) -> int:
        return self.env.rank

    @property
    def world_size(self) -> int:
        return self.env.world_size

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that logs (and, in a one-group run, writes the video)."""
        return self.env.rank == 0

    @property
    def model_group_size(self) -> int:
        """Processes that make one video together: the whole world, or one ``batch`` group."""
        return self.group_size or self.world_size

    @property
    def group_index(self) -> int:
        """Which data-parallel group this process is in (0 when there is one)."""
        return self.rank // self.model_group_size

    @property
    def group_count(self) -> int:
        return self.world_size // self.model_group_size

    @property
    def group_leader(self) -> int:
        """Global rank of this group's first process: it decodes and writes the group's videos."""
        return self.group_index * self.model_group_size

    @property
    def is_group_leader(self) -> bool:
        return self.rank == self.group_leader

    @property
    def is_distributed(self) -> bool:
        return dist.is_available() and dist.is_initialized()

    @property
    def sequence_parallel(self) -> bool:
        return self.groups is not None

    @property
    def dit_group(self) -> object | None:
        """The ProcessGroup the DiT is sharded over (``dit_fsdp``): the video's group, or with CFG
        parallelism its sequence-parallel block (the CFG ranks run different passes, so their
        forwards, and FSDP's gathers inside them, do not pair up)."""
        if self.cfg is None:
            return self.group
        return self.groups.group if self.groups is not None else None

    def broadcast_seed(self, seed: int) -> int:
        """The group leader's seed on every rank of the group; a negative seed becomes a random one,
        drawn by the leader."""
        if seed < 0 and self.is_group_leader:
            seed = draw_seed()
        return int(self.broadcast_object(seed))

    def broadcast_object(self, value):
        """The group leader's ``value`` (any picklable object) on every rank of the group."""
        if not self.is_distributed or self.model_group_size == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=self.group_leader, group=self.group)
        return box[0]

    def broadcast_world(self, make):
        """``make()`` computed by rank 0 alone and handed to every rank of the run (so that all
        act on one view of, e.g., which outputs exist)."""
        value = make() if self.is_main else None
        if not self.is_distributed:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather_world(self, value) -> list:
        """Every rank's ``value``, in rank order, on every rank of the run."""
        if not self.is_distributed:
            return [value]
        out = [None] * self.world_size
        dist.all_gather_object(out, value)
        return out

    def gather_objects(self, value) -> list:
        """Every group member's ``value``, in group order, on every rank of the group."""
        if not self.is_distributed or self.model_group_size == 1:
            return [value]
        out = [None] * self.model_group_size
        dist.all_gather_object(out, value, group=self.group)
        return out

    def prepare_dit(self, model: torch.nn.Module) -> torch.nn.Module:
        """Apply FSDP (``dit_fsdp``) and sequence parallelism (``ulysses_size``/``ring_size``) to
        a loaded DiT; the result is called exactly like the DiT. Load it on the CPU when sharding:
        each block goes to the GPU only to be split."""
        if self.dit_fsdp:
            from .fsdp import shard_dit

            model = shard_dit(model, self.device, group=self.dit_group)
        else:
            model = model.to(self.device)
        if self.groups is not None:
            from .sequence_parallel import SequenceParallelDiT

            model = SequenceParallelDiT(model, self.groups, backend=self.attention_backend)
        return model

    def prepare_text_encoder(self, text_encoder):
        """Shard the T5 encoder's blocks over the ranks (``t5_fsdp``), else return it unchanged."""
        if not self.t5_fsdp:
            return text_encoder
        from .fsdp import shard_text_encoder

        return shard_text_encoder(text_encoder, self.device, group=self.group)

    def barrier(self) -> None:
        """Wait for every process of this group."""
        if self.is_distributed and self.model_group_size > 1:
            dist.barrier(group=self.group)

    def shutdown(self) -> None:
        """Leave the process group (after everyone is done)."""
        if self.is_distributed:
            dist.barrier()
            dist.destroy_process_group()


def process_device(env: TorchrunEnv | None = None) -> torch.device:
    """The device a torchrun process runs on: ``cuda:LOCAL_RANK`` when CUDA is available, else the
    CPU (InputError when LOCAL_RANK has no GPU). Nothing is initialised."""
    env = env or TorchrunEnv.read()
    if not torch.cuda.is_available():
        return torch.device("cpu")
    if env.local_rank >= torch.cuda.device_count():
        raise InputError(f"LOCAL_RANK {env.local_rank} but only {torch.cuda.device_count()} GPUs are visible: "
                         f"use --nproc_per_node <= the GPUs per node")
    return torch.device("cuda", env.local_rank)


def init_distributed(ulysses_size: int = 1, ring_size: int = 1, dit_fsdp: bool = False, t5_fsdp: bool = False,
                     num_heads: int | None = None, attention_backend: str = "auto",
                     data_parallel: bool = False, timeout_s: float | None = None,
                     cfg_parallel: int = 1) -> DistributedSetup:
    """Check the flags, join the torchrun process group and build the sequence-parallel and CFG
    groups (layout: module docstring).

    A single process (no torchrun) gets a trivial setup with no process group. ``data_parallel``
    (``batch``): groups of ``ulysses_size x ring_size x cfg_parallel`` processes, each making its
    own videos. ``timeout_s``: how long a collective may wait (batch ranks wait for each other's
    pose stage).
    """
    env = TorchrunEnv.read()
    check_parallel_flags(ulysses_size, ring_size, dit_fsdp, t5_fsdp, env.world_size, num_heads,
                         data_parallel=data_parallel, cfg_parallel=cfg_parallel)
    if env.world_size == 1:
        device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
        return DistributedSetup(env, device)
    device = process_device(env)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        extra = {} if timeout_s is None else {"timeout": timedelta(seconds=timeout_s)}
        dist.init_process_group(backend=backend, init_method="env://", rank=env.rank, world_size=env.world_size,
                                **extra)
    sp_degree = ulysses_size * ring_size
    group_size = sp_degree * cfg_parallel if data_parallel else env.world_size
    groups, group, cfg = None, None, None
    # new_group is collective over the default group: every rank creates every group, same order
    if sp_degree > 1:
        groups = make_sequence_parallel_groups(ulysses_size, ring_size)
        if cfg_parallel == 1:
            group = groups.group
        if attention_backend != "torch" and device.type == "cuda":
            _init_xfuser(env, ulysses_size, ring_size, cfg_parallel)
    if cfg_parallel > 1:
        cfg = make_cfg_parallel_split(cfg_parallel, sp_degree)
    if (sp_degree == 1 or cfg_parallel > 1) and group_size not in (1, env.world_size):
        group = make_data_parallel_groups(group_size)
    log.info("rank %d of %d on %s (%s): %d group(s) of %d, ulysses %d x ring %d x cfg %d, dit_fsdp %s, t5_fsdp %s",
             env.rank, env.world_size, device, backend, env.world_size // group_size, group_size, ulysses_size,
             ring_size, cfg_parallel, dit_fsdp, t5_fsdp)
    return DistributedSetup(env, device, ulysses_size, ring_size, dit_fsdp, t5_fsdp, groups, attention_backend,
                            group_size=group_size, group=group, cfg=cfg)


def _init_xfuser(env: TorchrunEnv, ulysses_size: int, ring_size: int, cfg_parallel: int = 1) -> None:
    """Set up xDiT's own groups when xfuser is installed (its attention needs them); without
    xfuser the pure-torch sequence-parallel attention is used."""
    try:
        from xfuser.core.distributed import init_distributed_environment, initialize_model_parallel
    except Exception:
        log.info("xfuser not importable: using the built-in Ulysses/ring attention")
        return
    init_distributed_environment(rank=env.rank, world_size=env.world_size)
    degree = ulysses_size * ring_size  # the same tp-sp-pp-cfg-dp order as ours
    initialize_model_parallel(data_parallel_degree=env.world_size // (degree * cfg_parallel),
                              classifier_free_guidance_degree=cfg_parallel, sequence_parallel_degree=degree,
                              ring_degree=ring_size, ulysses_degree=ulysses_size)
