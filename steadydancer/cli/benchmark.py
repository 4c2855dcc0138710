"""``steadydancer benchmark``: build a protocol's rows (xdance: every image x every video; tiktok: each
video from its first frame), prepare and generate them as a batch (``steadydancer batch``: models
loaded once, resumable, also under torchrun), then score them with ``steadydancer eval`` into
OUT/report.json."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import generate


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--protocol", required=True, choices=["xdance", "tiktok"],
                        help="xdance: every image with every video, VBench-I2V + FVD; tiktok: each video from its "
                             "first frame, SSIM/PSNR/LPIPS/FID/FVD")
    parser.add_argument("--videos", required=True, type=Path,
                        help="driving videos: ID.mp4 files or ID/ folders with video.mp4 (+ prompt.txt)")
    parser.add_argument("--images", type=Path, default=None, help="reference images (xdance)")
    parser.add_argument("--out", required=True, type=Path,
                        help="benchmark folder: manifest.json, inputs/, generated/, report.json")
    parser.add_argument("--weights", type=Path, default=None, help="evaluation weight files (docs/evaluation.md)")
    parser.add_argument("--max_frame", type=int, default=None, help="use at most N frames of each driving video")
    parser.add_argument("--pose_backend", default="auto", help="pose detector backend for the preparation")
    generate.add_arguments(parser)
    parser.set_defaults(size=None)  # None = not given: the tiny or the official default fills it


def run(args: argparse.Namespace) -> int:
    from ..distributed.launch import TorchrunEnv
    from ..errors import InputError
    from ..eval.benchmark import BENCHMARKS, batch_rows, collect_generated, make_rows, write_layout
    from ..eval.protocols import EvalOptions, evaluate
    from ..eval.report import write_report
    from ..pipeline import config as C
    from .batch import PER_ROW_FLAGS, make_job, run_rows
    from .demo import TINY_DEFAULTS

    for flag in PER_ROW_FLAGS:
        if getattr(args, flag) is not None:
            raise InputError(f"--{flag}: the benchmark sets it for every row")
    if args.max_frame is not None and args.max_frame < 1:
        raise InputError(f"--max_frame: expected 1 or more, got {args.max_frame}")
    out = args.out
    if args.ckpt_dir is None:
        for name, value in TINY_DEFAULTS.items():
            if getattr(args, name) is None:
                setattr(args, name, value)
    elif args.size is None:
        args.size = C.DEFAULT_SIZE
    generate.check_flags(args, data_parallel=True)
    main_process = TorchrunEnv.read().rank == 0
    rows = make_rows(args.protocol, args.videos, args.images, out)
    if args.ckpt_dir is None and TorchrunEnv.read().world_size > 1:
        raise InputError("--ckpt_dir: under torchrun give the checkpoint (the tiny wiring-check one is for one process)")
    if args.ckpt_dir is None:
        ckpt = out / "tiny_ckpt"
        if not (ckpt / C.DIT_CONFIG).is_file():
            from ..pipeline.tiny import write_tiny_checkpoint

            write_tiny_checkpoint(ckpt, seed=0)
        args.ckpt_dir = str(ckpt)
    if args.base_seed < 0:
        args.base_seed = 0  # a benchmark is reproducible
    if main_process:
        write_layout(args.protocol, rows, out)
    job = make_job(args, out / "rows", str(out / "manifest.json"),
                   prepare={"max_frame": args.max_frame, "backend": args.pose_backend})
    summary = run_rows(args, job, batch_rows(rows))
    if not main_process:  # the other torchrun processes only helped generate
        return 1 if summary["failed"] else 0
    collect_generated(rows, job.out, out / "generated")
    device = args.device or "cpu"
    report = evaluate(EvalOptions(generated=out / "generated", reference=out / "reference", images=out / "images",
                                  protocol=BENCHMARKS[args.protocol], weights=args.weights, device=device))
    for path in write_report(report, out / "report.json", name=f"SteadyDancer ({args.protocol})"):
        print(f"wrote {path}")
    if summary["failed"]:
        print(f"{summary['failed']} row(s) failed (see above); the report scores the {summary['done'] + summary['skipped']} "
              "made")
    return 1 if summary["failed"] else 0
