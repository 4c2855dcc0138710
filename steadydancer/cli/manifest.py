"""``steadydancer manifest``: a batch manifest for every image with every video, or given pairs."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", required=True, type=Path, help="folder of reference images")
    parser.add_argument("--videos", required=True, type=Path,
                        help="driving videos: ID.mp4 files or ID/ folders holding video.mp4")
    parser.add_argument("--pairs", default="all",
                        help="all: every image with every video (X-Dance style); or a file of 'image,video' "
                             "id lines")
    parser.add_argument("--out", required=True, type=Path,
                        help="manifest to write: .csv, or JSON Lines (.jsonl)")


def run(args: argparse.Namespace) -> int:
    from ..batch.manifest import make_manifest_rows, write_manifest
    from ..fileio import check_can_create

    check_can_create(args.out, "--out")
    rows = make_manifest_rows(args.images, args.videos, args.pairs)
    write_manifest(rows, args.out)
    print(f"wrote {len(rows)} rows to {args.out}")
    return 0
