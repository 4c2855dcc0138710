"""Protocol runners: build a benchmark's rows, prepare and generate each (resumably), then score.

- ``xdance``: every reference image with every driving video (the X-Dance layout); scored with the
  VBench-I2V dimensions and FVD against the driving videos.
- ``tiktok``: each video animates one of its own frames (HumanVid's TikTok protocol as its
  ``scripts/eval_pose2vid.py`` runs it: 24 driving frames at stride 3 from frame 0, the reference image
  the middle one of them); scored with SSIM, PSNR, LPIPS, FID and FVD against the frames that drove it.

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

from PIL import Image

from ..errors import InputError
from ..fileio import atomic_path
from ..batch.manifest import find_videos  # noqa: F401 (also this module's name for it)
from .protocols import IMAGE_EXTENSIONS

log = logging.getLogger(__name__)

BENCHMARKS = {"xdance": "vbench-i2v", "tiktok": "humanvid"}
STARTS = ("middle", "first")


@dataclass
class Row:
    id: str
    image: str
    video: str                      # the driving video the row is generated from
    prompt: str | None
    source: str | None = None       # tiktok: the test video the driving clip was cut from (the ground truth)
    source_frames: list[int] | None = None  # tiktok: clip frame k is source frame source_frames[k]


@dataclass(frozen=True)
class TiktokRecipe:
    """HumanVid's TikTok recipe (``scripts/eval_pose2vid.py`` @ 68e6be4): ``frames`` driving frames at
    ``stride`` from frame 0 (the stride drops by one until the video holds frames x stride frames), the
    reference image frame ``idx[frames // 2]`` ("middle") or frame 0 ("first"). SteadyDancer makes 4n+1
    frames, so ``frames`` is rounded up (24 -> 25) and the scoring keeps the first ``frames``."""

    frames: int = 24
    stride: int = 3
    start: str = "middle"

    @property
    def generated_frames(self) -> int:
        return 4 * ((self.frames - 1 + 3) // 4) + 1

    def plan(self, count: int) -> tuple[int, list[int], int] | None:
        """(stride, source frames of the generated frames, source frame of the reference image) for a
        video of ``count`` frames; None when it is shorter than ``frames`` (HumanVid skips it)."""
        stride = self.stride
        while stride > 0 and count < self.frames * stride:
            stride -= 1
        if stride == 0:
            return None
        # the frame added for 4n+1 may lie past the end: it repeats the last (it is not scored)
        indices = [min(k * stride, count - 1) for k in range(self.generated_frames)]
        return stride, indices, indices[self.frames // 2] if self.start == "middle" else indices[0]

    def describe(self) -> dict:
        return {"driving frames": f"{self.frames} at stride {self.stride} from frame 0 (stride lowered for videos "
                                  f"shorter than {self.frames * self.stride} frames), generated as "
                                  f"{self.generated_frames} (4n+1), the first {self.frames} scored",
                "reference image": ("the middle driving frame, idx[len // 2] (HumanVid eval_pose2vid.py)"
                                    if self.start == "middle" else "the first driving frame (--start first)")}


def _count_frames(video: Path) -> int:
    """Decoded frames of ``video`` (HumanVid counts what its reader returns, not the header)."""
    from ..pose.video import _open

    with _open(video) as container:
        return sum(1 for _ in container.decode(container.streams.video[0]))


def _tiktok_row(video_id: str, video: Path, prompt: str | None, out: Path, recipe: TiktokRecipe) -> Row | None:
    """Cut the recipe's driving clip (OUT/clips/ID.mp4, H.264 at crf 0 and the strided rate, for the pose
    stage) and the reference image (OUT/ref_frames/ID.png) from a test video; None when it is too short."""
    from ..pose.video import iter_video, video_fps, write_video

    planned = recipe.plan(_count_frames(video))
    if planned is None:
        log.warning("%s: fewer than %d frames; skipped (as HumanVid's eval_pose2vid.py)", video, recipe.frames)
        return None
    stride, indices, ref_index = planned
    # the recipe in the names: a row made under another recipe has other inputs, so the batch makes it again
    tag = f"{video_id}.stride{recipe.stride}"
    clip, image = out / "clips" / f"{tag}.mp4", out / "ref_frames" / f"{tag}.{recipe.start}.png"
    record = out / "clips" / f"{tag}.{recipe.start}.json"
    wanted = {"source": str(video.absolute()), "frames": indices, "reference_frame": ref_index}
    done = record.is_file() and clip.is_file() and image.is_file() and json.loads(record.read_text()) == wanted
    if not done:
        needed = set(indices) | {ref_index}
        frames = {i: f for i, f in enumerate(iter_video(video, max(needed) + 1)) if i in needed}
        # crf 0 (lossless but for the 4:2:0 colour conversion): the clip only feeds the pose detector
        write_video(clip, (frames[i] for i in indices), video_fps(video) / stride, crf=0)
        with atomic_path(image) as tmp:
            Image.fromarray(frames[ref_index]).save(tmp, format="PNG")
        with atomic_path(record) as tmp:
            tmp.write_text(json.dumps(wanted))
    return Row(video_id, str(image), str(clip), prompt, source=str(video), source_frames=indices)


def make_rows(protocol: str, videos_dir: Path, images_dir: Path | None, out: Path,
              recipe: TiktokRecipe | None = None) -> list[Row]:
    """The benchmark's rows (for tiktok, each video's driving clip and reference image are cut by
    ``recipe``, HumanVid's by default, into OUT/clips and OUT/ref_frames)."""
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
        recipe = recipe or TiktokRecipe()
        rows = [_tiktok_row(video_id, video, prompt, out, recipe) for video_id, (video, prompt) in videos.items()]
        rows = [row for row in rows if row is not None]
        if not rows:
            raise InputError(f"--videos: no video in {videos_dir} has the {recipe.frames} frames the recipe needs")
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
        # tiktok scores against the test video itself, not the clip cut from it
        _link(Path(row.source or row.video), out / "reference" / f"{row.id}.mp4")
        _link(Path(row.image), out / "images" / f"{row.id}{Path(row.image).suffix.lower()}")


def collect_generated(rows: list[Row], rows_out: Path, generated: Path) -> list[str]:
    """Link each finished row's video (``rows_out/ROW/ROW.mp4``, by ``steadydancer batch``) as
    ``generated/ROW.mp4`` for the scoring; a row without one gets no link. Returns the ids linked.

    A tiktok row's sidecar names frames of the clip it was driven by; ``generated/ROW.json`` gets the
    provenance in frames of the test video the clip was cut from (what the scoring pairs with)."""
    from ..batch.runner import read_record, row_paths
    from ..pipeline.sidecar import read_sidecar, sidecar_path, update_sidecar

    linked = []
    for row in rows:
        paths = row_paths(rows_out, row)
        target = generated / f"{row.id}.mp4"
        sidecar_path(target).unlink(missing_ok=True)
        if (read_record(paths.record) or {}).get("status") == "done" and paths.mp4.is_file():
            _link(paths.mp4, target)
            linked.append(row.id)
            if row.source_frames is not None:
                provenance = read_sidecar(paths.mp4).get("provenance") or {}
                # without a record, the pose stage kept every clip frame from the first (no --align_frame here)
                clip_frames = provenance.get("frame_indices") or list(range(len(row.source_frames)))
                update_sidecar(target, provenance={
                    "source_video": str(Path(row.source).absolute()),
                    "frame_indices": [row.source_frames[k] for k in clip_frames],
                    "fps": _video_fps(Path(row.source)), "target_fps": None,
                    "via": str(Path(row.video).absolute())})
        elif target.is_symlink() or target.exists():
            target.unlink()
    return linked


def _video_fps(video: Path) -> float:
    from ..pose.video import video_fps

    return video_fps(video)
