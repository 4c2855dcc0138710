"""The generate command under torchrun (called by ``steadydancer.cli.generate`` when
WORLD_SIZE > 1): flag checks against the checkpoint, process group, generation, rank 0 writes."""

from __future__ import annotations

import argparse
import logging

import torch

from ..errors import InputError
from .launch import TorchrunEnv, check_parallel_flags, init_distributed

log = logging.getLogger(__name__)


def is_torchrun() -> bool:
    """Whether this process is one of several started by torchrun."""
    return TorchrunEnv.read().world_size > 1


def run_distributed(args: argparse.Namespace, sampling) -> int:
    """Run a resolved generate ``args`` (see ``steadydancer.cli.generate.resolve_args``) on this rank."""
    from ..models.loading import read_dit_config
    from .pipeline import generate_video_distributed

    num_heads = int(read_dit_config(args.ckpt_dir).get("num_heads", 16))
    check_parallel_flags(args.ulysses_size, args.ring_size, args.dit_fsdp, args.t5_fsdp, num_heads=num_heads)
    if args.offload_model:
        raise InputError("--offload_model True: not available with several processes (models stay on the GPUs; "
                         "use --dit_fsdp/--t5_fsdp to save memory)")
    if args.device not in (None, "cpu", "cuda"):
        raise InputError(f"--device {args.device}: under torchrun each process uses cuda:LOCAL_RANK; "
                         "pass cuda, cpu or nothing")
    if args.device == "cpu" and torch.cuda.is_available():
        raise InputError("--device cpu under torchrun on a GPU machine: hide the GPUs (CUDA_VISIBLE_DEVICES=) "
                         "to run the processes on the CPU")
    memory = None
    if hasattr(args, "batch_guidance"):  # the memory/speed flags are present
        from ..models.memory import memory_options_from_args

        memory = memory_options_from_args(args)
    if TorchrunEnv.read().rank != 0:
        logging.getLogger().setLevel(logging.WARNING)  # one log, rank 0's
    setup = init_distributed(args.ulysses_size, args.ring_size, args.dit_fsdp, args.t5_fsdp, num_heads=num_heads)
    # On an error this process exits and torchrun stops the others (no barrier that could hang).
    written = generate_video_distributed(
        setup, ckpt_dir=args.ckpt_dir, image=args.image, cond_pos_folder=args.cond_pos_folder,
        cond_neg_folder=args.cond_neg_folder, prompt=args.prompt, save_file=setup.broadcast_object(args.save_file),
        size=args.size, frame_num=args.frame_num, sampling=sampling, seed=args.base_seed, t5_cpu=args.t5_cpu,
        memory=memory)
    setup.shutdown()
    if written is not None:
        print(f"saved {written}")
    return 0
