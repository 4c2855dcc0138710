"""``steadydancer batch``: every pair of a manifest, models loaded once per process; also under
``torchrun`` (groups of --ulysses_size x --ring_size x --cfg_parallel processes), and by any number of runs on one
--out (SLURM array tasks, nodes), which share the rows through per-row claims. See docs/batch.md."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..batch.claims import DEFAULT_CLAIM_TIMEOUT_S
from ..errors import InputError
from . import generate

log = logging.getLogger(__name__)

# How long a collective may wait: processes wait for each other's pose stage and model loading.
COLLECTIVE_TIMEOUT_S = 6 * 3600
# generate flags that name one video's inputs or output: the manifest and --out set them per row
PER_ROW_FLAGS = ("image", "cond_pos_folder", "cond_neg_folder", "input_dir", "save_file")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--manifest", required=True,
                        help="CSV or JSON Lines: id, and input_dir or image + video; optional prompt, seed, frame_num")
    parser.add_argument("--out", required=True, type=Path,
                        help="output folder: OUT/<id>/<id>.mp4, OUT/<id>/record.json, OUT/summary.json (every row's "
                             "status), OUT/summary.d/ (each run's own); any number of runs may share it")
    parser.add_argument("--shard", default=None, metavar="I/N",
                        help="make only part I of N of the manifest (counted from 0), or 'slurm': this SLURM "
                             "array task's part; default: every row, shared with any other run on --out through "
                             "per-row claims (the next free row to whichever worker is free)")
    parser.add_argument("--claim_timeout", type=float, default=DEFAULT_CLAIM_TIMEOUT_S, metavar="SECONDS",
                        help="a row's claim whose worker has not refreshed it for this long is stale and is taken "
                             f"over (default {DEFAULT_CLAIM_TIMEOUT_S:.0f}; more than the clock skew between nodes "
                             "plus NFS attribute caching)")
    pose = parser.add_argument_group("pose stage of rows given as image + video (steadydancer prepare's flags)")
    pose.add_argument("--align_frame", type=int, default=0,
                      help="driving frame the limb scales are measured on; earlier frames are dropped")
    pose.add_argument("--max_frame", type=int, default=300,
                      help="frames read from the start of each video (official default 300; -1: all)")
    pose.add_argument("--target_fps", type=float, default=None,
                      help="resample each video to this frame rate first (default: every frame, the official recipe)")
    pose.add_argument("--pose_seed", type=int, default=0, help="seed of the negative-stream augmentation")
    pose.add_argument("--pose_backend", default="auto", choices=["auto", "mediapipe", "onnx", "mmpose"],
                      help="pose detector (auto: the weights given, else the bundled mediapipe)")
    pose.add_argument("--dwpose_ckpt", default=None, help="DWPose weights: dw-ll_ucoco_384.onnx or the mmpose .pth")
    pose.add_argument("--yolox_ckpt", default=None, help="YOLOX-L weights: yolox_l.onnx or the mmdet .pth")
    pose.add_argument("--detect_resolution", type=int, default=None, help="short side the detector sees")
    pose.add_argument("--all_people", action="store_true", help="keep, align and draw every person")
    generate.add_arguments(parser)
    for action in parser._actions:  # refused in a batch (see PER_ROW_FLAGS): not in the help
        if action.dest in PER_ROW_FLAGS:
            action.help = argparse.SUPPRESS


def prepare_options(args: argparse.Namespace) -> dict:
    """``prepare_inputs`` keyword arguments from the pose flags (checked: InputError)."""
    from ..pose.prepare import DEFAULT_DETECT_RESOLUTION, check_max_frame, check_target_fps
    from ..pose.scripts import weight_args

    max_frame = None if args.max_frame == -1 else args.max_frame
    check_max_frame(max_frame)
    check_target_fps(args.target_fps)
    if args.align_frame < 0:
        raise InputError(f"--align_frame {args.align_frame}: expected 0 or more")
    resolution = DEFAULT_DETECT_RESOLUTION if args.detect_resolution is None else args.detect_resolution
    if resolution <= 0:
        raise InputError(f"--detect_resolution {resolution}: must be positive")
    options = dict(align_frame=args.align_frame, max_frame=max_frame, target_fps=args.target_fps,
                   seed=args.pose_seed, detect_resolution=resolution, all_people=args.all_people)
    options.update(weight_args(args.dwpose_ckpt, args.yolox_ckpt, args.pose_backend,
                               "cpu" if args.device == "cpu" else None))
    return options


def make_job(args: argparse.Namespace, out: Path, manifest: str, prepare: dict,
             shard: tuple[int, int] | None = None):
    """The :class:`~steadydancer.batch.runner.BatchJob` of checked generate flags (``batch`` and
    ``benchmark``): sampling defaults filled, memory and long-video options parsed, paths resolved."""
    from ..batch.runner import BatchJob
    from ..models.memory import memory_options_from_args

    claim_timeout = getattr(args, "claim_timeout", DEFAULT_CLAIM_TIMEOUT_S)
    if not claim_timeout > 0:
        raise InputError(f"--claim_timeout {claim_timeout}: expected seconds > 0")
    return BatchJob(ckpt_dir=args.ckpt_dir, out=Path(out).resolve(), size=args.size, frame_num=args.frame_num,
                    sampling=generate.sampling_options_from_args(args), seed=args.base_seed, prompt=args.prompt,
                    memory=memory_options_from_args(args), long_video=generate.long_video_options_from_args(args),
                    device=args.device, offload_model=args.offload_model, t5_cpu=args.t5_cpu,
                    ulysses_size=args.ulysses_size, ring_size=args.ring_size, cfg_parallel=args.cfg_parallel,
                    dit_fsdp=args.dit_fsdp,
                    t5_fsdp=args.t5_fsdp, prepare=prepare, manifest=manifest, shard=shard,
                    claim_timeout=claim_timeout)


def check_process_flags(args: argparse.Namespace, memory, group_size: int) -> int:
    """What the processes' layout allows (one line each); returns the DiT's head count."""
    from ..distributed.cli import check_distributed_args
    from ..distributed.launch import process_device
    from ..models.memory import check_memory_options, dit_config_for

    if group_size > 1:  # a group runs one video together: the torchrun generate rules
        return check_distributed_args(args, memory, data_parallel=True)
    check_memory_options(args.ckpt_dir, process_device() if args.device is None else args.device, memory)
    return int(dit_config_for(args.ckpt_dir, memory).get("num_heads", 16))


def run(args: argparse.Namespace) -> int:
    from ..distributed.cli import is_torchrun, one_error_line

    if is_torchrun():  # the same bad flag would print one line per process
        with one_error_line():
            return _run(args)
    return _run(args)


def _run(args: argparse.Namespace) -> int:
    from ..batch.manifest import parse_shard, read_manifest, shard_rows

    for flag in PER_ROW_FLAGS:
        if getattr(args, flag) is not None:
            raise InputError(f"--{flag}: the manifest gives each row's inputs and --out its outputs")
    generate.check_flags(args, data_parallel=True)
    if args.ckpt_dir is None:
        raise InputError("--ckpt_dir is required (the SteadyDancer-14B folder)")
    shard = parse_shard(args.shard)
    manifest_rows = read_manifest(args.manifest)
    rows = manifest_rows if shard is None else shard_rows(manifest_rows, *shard)
    job = make_job(args, args.out, str(Path(args.manifest).resolve()), prepare_options(args), shard)
    summary = run_rows(args, job, rows, manifest_rows)
    return 1 if summary["failed"] else 0


def run_rows(args: argparse.Namespace, job, rows: list, manifest_rows: list | None = None) -> dict:
    """Check the outputs, the checkpoint and the process layout, join the process group, make the
    rows, print the summary (rank 0) and leave the group; returns the summary (every rank).
    ``manifest_rows``: all rows of the manifest (summary.json lists them; default ``rows``)."""
    import os

    from ..batch.runner import BatchRunner, check_outputs_writable, print_summary
    from ..distributed.groups import check_groups_within_nodes
    from ..distributed.launch import TorchrunEnv, init_distributed
    from ..pipeline.i2v import verify_checkpoint

    check_outputs_writable(job, rows)
    memory = job.memory
    verify_checkpoint(job.ckpt_dir, dit_from_other_file=bool(memory.gguf or memory.dit_fp8_file))
    env = TorchrunEnv.read()
    group_size = args.ulysses_size * args.ring_size * args.cfg_parallel if env.world_size > 1 else 1
    local = os.environ.get("LOCAL_WORLD_SIZE")
    check_groups_within_nodes(group_size, env.world_size, int(local) if local and local.isdigit() else None)
    num_heads = check_process_flags(args, memory, group_size)
    if env.rank != 0:
        logging.getLogger().setLevel(logging.WARNING)  # one log, rank 0's
    setup = init_distributed(args.ulysses_size, args.ring_size, args.dit_fsdp, args.t5_fsdp, num_heads=num_heads,
                             data_parallel=True, timeout_s=COLLECTIVE_TIMEOUT_S, cfg_parallel=args.cfg_parallel)
    if setup.is_main and job.shard is not None:
        log.info("shard %d/%d: %d rows of %s", job.shard[0], job.shard[1], len(rows), job.manifest)
    summary = BatchRunner(job, setup).run(rows, manifest_rows)
    if setup.is_main:
        print_summary(summary, job.out)
    setup.shutdown()
    return summary
