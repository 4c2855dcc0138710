"""``steadydancer eval``: score generated videos against their references (HumanVid TikTok metrics,
VBench-I2V dimensions, FVD) and write report.json, a Markdown table and PNG plots."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--generated", required=True, type=Path, help="folder of generated videos")
    parser.add_argument("--reference", type=Path, default=None,
                        help="folder of reference (driving / ground-truth) videos, matched by file name")
    parser.add_argument("--images", type=Path, default=None,
                        help="folder of the input (reference) images, matched by file name (VBench-I2V I2V subject "
                             "and background)")
    parser.add_argument("--protocol", default="all", choices=["humanvid", "vbench-i2v", "all"],
                        help="humanvid: SSIM, PSNR, LPIPS, FID, FVD (TikTok); vbench-i2v: VBench-I2V dimensions + FVD")
    parser.add_argument("--weights", type=Path, default=None,
                        help="folder with the metric networks' weight files under their usual names "
                             "(docs/evaluation.md); a missing file skips its metrics")
    parser.add_argument("--out", type=Path, default=Path("report.json"),
                        help="report path (default report.json); the table and plots are written beside it")
    parser.add_argument("--name", default=None, help="row name in the table (default: the --generated folder name)")
    add_scoring_arguments(parser)
    parser.add_argument("--max_frames", type=int, default=None, help="read at most N frames of each video")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] for the networks (default cpu)")


def add_scoring_arguments(parser: argparse.ArgumentParser) -> None:
    """The recipe flags shared by ``eval`` and ``benchmark`` (defaults: HumanVid's and today's VBench)."""
    parser.add_argument("--fid_resize", type=int, default=768,
                        help="resize frames to NxN before the FID Inception (default 768, HumanVid's eval_fid.py; "
                             "0: off, pytorch-fid's own 299x299 resize only)")
    parser.add_argument("--fid_frames", type=int, default=24,
                        help="FID frames per video: the first N scored frames and their reference frames "
                             "(default 24, HumanVid's video2jpg.py; 0: every scored frame)")
    parser.add_argument("--sampling", default="provenance", choices=["provenance", "aligned", "humanvid"],
                        help="reference frame paired with generated frame i: provenance (default): the driving "
                             "frame that made it, from the video's sidecar X.json (frame i when there is none); "
                             "aligned: frame i; humanvid: HumanVid metrics.py's stride (for videos made by "
                             "HumanVid's own script)")
    parser.add_argument("--frame_sampling", default="all", choices=["all", "sample-once"],
                        help="SSIM/PSNR/LPIPS over every paired frame (default) or one random frame per video "
                             "(HumanVid metrics.py's sample-once, seeded)")
    parser.add_argument("--vbench_version", default="current", choices=["current", "2024-03"],
                        help="VBench-I2V i2v_subject rule: current (0.4 max + 0.3 mean + 0.3 min, DINO input "
                             "resized to 256 and centre-cropped to 224) or the March 2024 beta (0.5 max + 0.5 mean)")


def run(args: argparse.Namespace) -> int:
    from ..errors import InputError
    from ..eval.protocols import EvalOptions, evaluate
    from ..eval.report import write_report

    if args.protocol == "humanvid" and args.reference is None:
        raise InputError("--protocol humanvid needs --reference (the ground-truth videos)")
    if args.fid_resize < 0:
        raise InputError(f"--fid_resize: expected 0 (off) or a size such as 768, got {args.fid_resize}")
    if args.fid_frames < 0:
        raise InputError(f"--fid_frames: expected 0 (every scored frame) or a count such as 24, got {args.fid_frames}")
    if args.max_frames is not None and args.max_frames < 2:
        raise InputError(f"--max_frames: expected 2 or more, got {args.max_frames}")
    if args.out.suffix.lower() != ".json":
        raise InputError(f"--out: expected a .json path, got {args.out}")
    import torch

    try:
        device = torch.device(args.device)
    except RuntimeError:
        raise InputError(f"--device: expected cpu, cuda or cuda:N, got {args.device!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device here")
    options = EvalOptions(generated=args.generated, reference=args.reference, images=args.images,
                          protocol=args.protocol, weights=args.weights, device=str(device),
                          fid_resize=args.fid_resize, fid_frames=args.fid_frames, sampling=args.sampling,
                          frame_sampling=args.frame_sampling, vbench_version=args.vbench_version,
                          max_frames=args.max_frames)
    report = evaluate(options)
    for path in write_report(report, args.out, args.name):
        print(f"wrote {path}")
    for metric, value in report["aggregate"].items():
        if value is not None:
            print(f"{metric}: {value:.6g}")  # inf for PSNR of identical frames
    return 0
