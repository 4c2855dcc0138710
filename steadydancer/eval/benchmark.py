"""Protocol runners: build a benchmark's rows, prepare and generate each (resumably), then score.

- ``xdance``: every reference image with every driving video (the X-Dance layout); scored with the
  VBench-I2V dimensions and FVD against the driving videos.
- ``tiktok``: each video animates its own first frame (HumanVid's TikTok protocol); scored with
  SSIM, PSNR, LPIPS, FID and FVD against the video itself.

The rows are made by the batch runner (``steadydancer batch``, in OUT/rows/ROW/: the prepared poses,
the video, its record), so the models load once, an interrupted run resumes where it stopped, and
under torchrun the rows are spread over the processes; the finished videos are then linked as
OUT/generated/ROW.mp4 for the scoring.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import InputError
from ..fileio import atomic_path
from ..batch.manifest import find_videos  # noqa: F401 (also this module's name for it)
from .protocols import IMAGE_EXTENSIONS

log = logging.getLogger(__name__)

BENCHMARKS = {"xdance": "vbench-i2v", "tiktok": "humanvid"}


@dataclass
class Row:
    id: str
    image: str
    video: str
    prompt: str | None


def make_rows(protocol: str, videos_dir: Path, images_dir: Path | None, out: Path) -> list[Row]:
    """The benchmark's rows (for tiktok, each video's first frame is written to OUT/first_frames)."""
    videos = find_videos(Path(videos_dir))
    if protocol == "xdance":
        if images_dir is None or not Path(images_dir).is_dir():
            raise InputError(f"--images: folder of reference images needed for xdance (got {images_dir})")
        images = {p.stem: p for p in sorted(Path(images_dir).iterdir())
                  if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS}
        if not images:
            raise InputError(f"--images: no images ({', '.join(IMAGE_EXTENSIONS)}) in {images_dir}")
        return [Row(f"{image_id}__{video_id}", str(image), str(video), prompt)
                for image_id, image in images.items() for video_id, (video, prompt) in videos.items()]
    if protocol == "tiktok":
        from ..pose.video import iter_video

        rows = []
        for video_id, (video, prompt) in videos.items():
            first = out / "first_frames" / f"{video_id}.png"
            if not first.is_file():
                frame = next(iter_video(video, max_frames=1), None)
                if frame is None:
                    raise InputError(f"video {video} has no decodable frames")
                with atomic_path(first) as tmp:
                    Image.fromarray(np.asarray(frame)).save(tmp, format="PNG")
            rows.append(Row(video_id, str(first), str(video), prompt))
        return rows
    raise InputError(f"--protocol: expected one of {', '.join(BENCHMARKS)}, got {protocol!r}")


def _link(source: Path, target: Path) -> None:
    """``target`` -> ``source`` as a symbolic link (a copy where links are not allowed)."""
    if target.exists() or target.is_symlink():
        target.unlink()
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.symlink(source.resolve(), target)
    except OSError:
        shutil.copy2(source, target)


def batch_rows(rows: list[Row]) -> list:
    """The rows as :class:`~steadydancer.batch.manifest.BatchRow` (image + video: the batch runs
    the pose stage)."""
    from ..batch.manifest import BatchRow

    return [BatchRow(r.id, image=Path(r.image).absolute(), video=Path(r.video).absolute(), prompt=r.prompt)
            for r in rows]


def write_layout(protocol: str, rows: list[Row], out: Path) -> None:
    """OUT/manifest.json and the links the scoring reads: OUT/reference/ROW.mp4, OUT/images/ROW.*."""
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "manifest.json") as tmp:
        tmp.write_text(json.dumps({"protocol": protocol, "rows": [asdict(r) for r in rows]}, indent=1))
    for row in rows:
        _link(Path(row.video), out / "reference" / f"{row.id}.mp4")
        _link(Path(row.image), out / "images" / f"{row.id}{Path(row.image).suffix.lower()}")


def collect_generated(rows: list[Row], rows_out: Path, generated: Path) -> list[str]:
    """Link each finished row's video (``rows_out/ROW/ROW.mp4``, by ``steadydancer batch``) as
    ``generated/ROW.mp4`` for the scoring; a row without one gets no link. Returns the ids linked."""
    from ..batch.runner import read_record, row_paths

    linked = []
    for row in rows:
        paths = row_paths(rows_out, row)
        target = generated / f"{row.id}.mp4"
        if (read_record(paths.record) or {}).get("status") == "done" and paths.mp4.is_file():
            _link(paths.mp4, target)
            linked.append(row.id)
        elif target.is_symlink() or target.exists():
            target.unlink()
    return linked
