"""The generate command under torchrun (called by ``steadydancer.cli.generate`` when
WORLD_SIZE > 1): flag checks against the checkpoint, process group, generation, rank 0 writes."""

from __future__ import annotations

import argparse
import logging
import time
from contextlib import contextmanager
from typing import Iterator

import torch

from ..errors import InputError
from .launch import TorchrunEnv, check_parallel_flags, init_distributed, process_device

log = logging.getLogger(__name__)

# How long a rank other than a node's first waits before printing an InputError (see one_error_line).
QUIET_RANK_WAIT_S = 5.0


def is_torchrun() -> bool:
    """Whether this process is one of several started by torchrun."""
    return TorchrunEnv.read().world_size > 1


@contextmanager
def one_error_line() -> Iterator[None]:
    """Under torchrun every rank runs the same checks and would print the same ``error:`` line.

    The node's first process (LOCAL_RANK 0) lets an :class:`InputError` through at once (the
    command prints it); the others wait :data:`QUIET_RANK_WAIT_S` first: when the first process
    failed too, torchrun stops them meanwhile and the line appears once; when it did not (an
    error of this rank only), they print theirs after the wait.
    """
    try:
        yield
    except InputError:
        if TorchrunEnv.read().local_rank != 0:
            time.sleep(QUIET_RANK_WAIT_S)
        raise


def check_distributed_args(args: argparse.Namespace, memory=None, data_parallel: bool = False) -> int:
    """Everything about a resolved ``args`` that can be checked before joining the process group
    and loading anything (one-line InputError); returns the DiT's head count.

    The same checks as a single process makes when it builds its pipeline (each LoRA against a
    meta-device DiT, FP8-matmul hardware, block count) plus what cannot combine with several
    processes (:func:`~steadydancer.distributed.pipeline.check_parallel_memory_options`).
    ``data_parallel``: ``batch``'s groups of --ulysses_size x --ring_size x --cfg_parallel processes.
    """
    from ..models.loading import read_dit_config
    from ..models.memory import check_memory_options
    from .pipeline import check_parallel_memory_options

    num_heads = int(read_dit_config(args.ckpt_dir).get("num_heads", 16))
    check_parallel_flags(args.ulysses_size, args.ring_size, args.dit_fsdp, args.t5_fsdp, num_heads=num_heads,
                         data_parallel=data_parallel, cfg_parallel=args.cfg_parallel)
    if args.offload_model:
        raise InputError("--offload_model True: not available with several processes (models stay on the GPUs; "
                         "use --dit_fsdp/--t5_fsdp to save memory)")
    if args.device not in (None, "cpu", "cuda"):
        raise InputError(f"--device {args.device}: under torchrun each process uses cuda:LOCAL_RANK; "
                         "pass cuda, cpu or nothing")
    if args.device == "cpu" and torch.cuda.is_available():
        raise InputError("--device cpu under torchrun on a GPU machine: hide the GPUs (CUDA_VISIBLE_DEVICES=) "
                         "to run the processes on the CPU")
    if args.t5_cpu and args.t5_fsdp:
        raise InputError("--t5_cpu and --t5_fsdp exclude each other: T5 either stays on the CPU or is "
                         "sharded over the GPUs")
    if args.dit_fsdp or args.t5_fsdp:
        from .fsdp import check_torch_for_fsdp

        check_torch_for_fsdp()
    if memory is not None:
        check_parallel_memory_options(memory, dit_fsdp=args.dit_fsdp,
                                      sequence_parallel=args.ulysses_size > 1 or args.ring_size > 1)
        check_memory_options(args.ckpt_dir, process_device(), memory)
    return num_heads


def run_distributed(args: argparse.Namespace, sampling, memory=None, long_video=None) -> int:
    """Run a resolved generate ``args`` (see ``steadydancer.cli.generate.resolve_args``) on this rank.

    ``memory``: the :class:`~steadydancer.options.MemoryOptions` of ``args`` (parsed here
    when None and the memory flags are present). ``long_video``: the
    :class:`~steadydancer.options.LongVideoOptions` of ``args`` (the command line parses them:
    this package does not import ``steadydancer.cli``); None: one window of any length.
    """
    from .pipeline import generate_video_distributed

    if memory is None and hasattr(args, "batch_guidance"):  # the memory/speed flags are present
        from ..models.memory import memory_options_from_args

        memory = memory_options_from_args(args)
    num_heads = check_distributed_args(args, memory)  # before the process group and any model
    if TorchrunEnv.read().rank != 0:
        logging.getLogger().setLevel(logging.WARNING)  # one log, rank 0's
    elif memory is not None and memory.flags_in_use():
        log.info("memory/speed options: %s", ", ".join(memory.flags_in_use()))
    setup = init_distributed(args.ulysses_size, args.ring_size, args.dit_fsdp, args.t5_fsdp, num_heads=num_heads,
                             cfg_parallel=args.cfg_parallel)
    # On an error this process exits and torchrun stops the others (no barrier that could hang).
    written = generate_video_distributed(
        setup, ckpt_dir=args.ckpt_dir, image=args.image, cond_pos_folder=args.cond_pos_folder,
        cond_neg_folder=args.cond_neg_folder, prompt=args.prompt, save_file=setup.broadcast_object(args.save_file),
        size=args.size, frame_num=args.frame_num, sampling=sampling, seed=args.base_seed, t5_cpu=args.t5_cpu,
        memory=memory, long_video=long_video)
    setup.shutdown()
    if written is not None:
        if getattr(args, "audio", None):  # rank 0, the mp4 complete: its sound (checked by the CLI)
            from ..pipeline.audio import add_audio

            add_audio(written, args.audio, start_s=args.audio_start)
        print(f"saved {written}")
    return 0
