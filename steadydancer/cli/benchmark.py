"""``steadydancer benchmark``: build a protocol's rows (xdance: every image x every video; tiktok: each
video from its first frame), prepare and generate them as a batch (``steadydancer batch``: models
loaded once, resumable, also under torchrun), then score them with ``steadydancer eval`` into
OUT/report.json."""

from __future__ import annotations

import argparse
from pathlib import Path

from . import generate
from .eval import add_scoring_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--protocol", required=True, choices=["xdance", "tiktok"],
                        help="xdance: every image with every video, VBench-I2V; tiktok: each video animated from "
                             "one of its frames (HumanVid's recipe), SSIM/PSNR/LPIPS/FID/FVD")
    parser.add_argument("--videos", required=True, type=Path,
                        help="driving videos: ID.mp4 files or ID/ folders with video.mp4 (+ prompt.txt)")
    parser.add_argument("--images", type=Path, default=None, help="reference images (xdance)")
    parser.add_argument("--out", required=True, type=Path,
                        help="benchmark folder: manifest.json, inputs/, generated/, report.json")
    parser.add_argument("--weights", type=Path, default=None, help="evaluation weight files (docs/evaluation.md)")
    parser.add_argument("--max_frame", type=int, default=None,
                        help="xdance: use at most N frames of each driving video (tiktok: the recipe sets them)")
    parser.add_argument("--pose_backend", default="auto", help="pose detector backend for the preparation")
    parser.add_argument("--start", default="middle", choices=["middle", "first"],
                        help="tiktok: the reference image is the middle driving frame (default, HumanVid's "
                             "eval_pose2vid.py) or the first one")
    parser.add_argument("--stride", type=int, default=3,
                        help="tiktok: driving frames taken every N frames of the test video (default 3, HumanVid)")
    add_scoring_arguments(parser)
    generate.add_arguments(parser)
    parser.set_defaults(size=None)  # None = not given: the tiny or the official default fills it
    from .batch import PER_ROW_FLAGS

    for action in parser._actions:  # set for every row by the benchmark (refused): not in the help
        if action.dest in PER_ROW_FLAGS:
            action.help = argparse.SUPPRESS


def run(args: argparse.Namespace) -> int:
    from ..distributed.launch import TorchrunEnv
    from ..errors import InputError
    from ..eval.benchmark import BENCHMARKS, TiktokRecipe, batch_rows, collect_generated, make_rows, write_layout
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
    if args.protocol == "tiktok" and args.max_frame is not None:
        raise InputError("--max_frame: the tiktok recipe chooses the driving frames (see --stride, --start)")
    if args.stride < 1:
        raise InputError(f"--stride: expected 1 or more, got {args.stride}")
    if args.fid_resize < 0 or args.fid_frames < 0:
        raise InputError(f"--fid_resize/--fid_frames: expected 0 (off) or more, got {args.fid_resize}/{args.fid_frames}")
    out = args.out
    if args.protocol == "tiktok" and args.frame_num is not None:
        raise InputError("--frame_num: the tiktok recipe sets it (24 driving frames, made as 25 = 4n+1)")
    if args.ckpt_dir is None:
        for name, value in TINY_DEFAULTS.items():
            if name == "frame_num" and args.protocol == "tiktok":
                continue  # the recipe's frames, from the clip
            if getattr(args, name) is None:
                setattr(args, name, value)
    elif args.size is None:
        args.size = C.DEFAULT_SIZE
    generate.check_flags(args, data_parallel=True)
    main_process = TorchrunEnv.read().rank == 0
    recipe = TiktokRecipe(stride=args.stride, start=args.start)
    rows = make_rows(args.protocol, args.videos, args.images, out, recipe)
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
    tiktok = args.protocol == "tiktok"
    report = evaluate(EvalOptions(generated=out / "generated", reference=out / "reference", images=out / "images",
                                  protocol=BENCHMARKS[args.protocol], weights=args.weights, device=device,
                                  fid_resize=args.fid_resize, fid_frames=args.fid_frames, sampling=args.sampling,
                                  frame_sampling=args.frame_sampling, vbench_version=args.vbench_version,
                                  # the 4n+1-th generated frame is not scored
                                  max_frames=recipe.frames if tiktok else None))
    report["table"] = args.protocol
    report["recipe"] = recipe.describe() if tiktok else {
        "rows": "every reference image with every driving video (X-Dance); no ground truth, so no FVD column"}
    if not tiktok and report["aggregate"].get("fvd_set") is not None:
        report["notes"]["fvd_set"] = (
            "not a column of the paper's X-Dance table (no ground truth): the distance to the driving videos "
            f"(other people), from {len(report['videos'])} videos per side against 400-d I3D features, so the "
            "covariances are singular below 400 videos; kept here for reference only")
    for path in write_report(report, out / "report.json", name=f"SteadyDancer ({args.protocol})"):
        print(f"wrote {path}")
    if summary["failed"]:
        print(f"{summary['failed']} row(s) failed (see above); the report scores the {summary['done'] + summary['skipped']} "
              "made")
    return 1 if summary["failed"] else 0
