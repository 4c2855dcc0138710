"""The batch manifest: one row per (reference image, driving video) pair, as CSV or JSON Lines.

Columns: ``id`` (required, unique; the output folder's name) and either ``input_dir`` (a folder
written by ``steadydancer prepare``) or ``image`` + ``video`` (prepared by the batch itself);
optional ``prompt``, ``seed`` and ``frame_num``. Relative paths are relative to the manifest's
folder. Problems with the manifest itself (unknown column, duplicate id, a row with neither
input) stop the run before anything starts; problems with a row's files fail only that row.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

from ..errors import InputError

COLUMNS = ("id", "input_dir", "image", "video", "prompt", "seed", "frame_num")
ID_PATTERN = re.compile(r"^[0-9A-Za-z][0-9A-Za-z_.-]*$")
SUMMARY_PARTS_NAME = "summary.d"  # OUT/summary.d/<run>.json: each run's own summary
# What a run writes at OUT's top level besides the row folders: summary.json, summary.d/ and the
# dot-names of claims and temporary files (which no id can take: an id starts with a letter or
# digit). Ids are compared without case, for case-insensitive file systems (macOS, Windows shares).
RESERVED_ID = re.compile(r"^summary(\..*)?$", re.IGNORECASE)
# The longest name a row writes in its folder is the mp4's temporary name, ".<id>.XXXXXXXX.partial.mp4"
# (fileio.atomic_path: id + 22 bytes); 255 bytes is the limit of a name on Linux file systems, and
# 55 bytes are left for that suffix and for sidecar files named after the id (<id>.<sidecar>.json).
NAME_MAX_BYTES = 255
MAX_ID_BYTES = NAME_MAX_BYTES - 55
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


@dataclass(frozen=True)
class BatchRow:
    """One pair of the manifest; paths absolute. ``line``: where it is in the manifest (messages)."""

    id: str
    input_dir: Path | None = None
    image: Path | None = None
    video: Path | None = None
    prompt: str | None = None
    seed: int | None = None
    frame_num: int | None = None
    line: int = 0

    @property
    def needs_prepare(self) -> bool:
        return self.input_dir is None

    def as_json(self) -> dict:
        """The row as written in records and manifests (paths as strings, no empty fields)."""
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()
                if v is not None and k != "line"}


def _int_field(value, name: str, where: str) -> int | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        number = int(str(value).strip())
    except ValueError:
        raise InputError(f"{where}: {name} {value!r} is not a whole number") from None
    return number


def _path_field(value, base: Path) -> Path | None:
    if value is None or not str(value).strip():
        return None
    path = Path(os.path.expanduser(str(value).strip()))
    return (path if path.is_absolute() else base / path).resolve()  # records and logs show real places


def _row(fields: dict, base: Path, where: str, line: int) -> BatchRow:
    unknown = sorted(set(fields) - set(COLUMNS))
    if unknown:
        raise InputError(f"{where}: unknown column(s) {', '.join(unknown)}; expected {', '.join(COLUMNS)}")
    row_id = str(fields.get("id") or "").strip()
    if not ID_PATTERN.match(row_id):
        raise InputError(f"{where}: id {row_id!r} must be letters, digits, '_', '-' or '.' (it names the output "
                         "folder)")
    if RESERVED_ID.match(row_id):
        raise InputError(f"{where}: id {row_id!r} is reserved (the batch writes summary.json and summary.d/ in "
                         "--out); choose another id")
    if len(row_id.encode("utf-8")) > MAX_ID_BYTES:
        raise InputError(f"{where}: id of {len(row_id.encode('utf-8'))} characters is too long: at most "
                         f"{MAX_ID_BYTES}, so that every file the row writes (<id>.mp4 and its temporary name) "
                         f"stays under the file systems' {NAME_MAX_BYTES}-byte limit")
    input_dir = _path_field(fields.get("input_dir"), base)
    image, video = _path_field(fields.get("image"), base), _path_field(fields.get("video"), base)
    if input_dir is None and (image is None or video is None):
        raise InputError(f"{where}: row {row_id} needs input_dir, or image and video")
    if input_dir is not None and (image is not None or video is not None):
        raise InputError(f"{where}: row {row_id} gives input_dir and image/video; give one or the other")
    prompt = fields.get("prompt")
    prompt = None if prompt is None or (isinstance(prompt, str) and not prompt.strip()) else str(prompt).strip()
    frame_num = _int_field(fields.get("frame_num"), "frame_num", where)
    if frame_num is not None and (frame_num < 5 or (frame_num - 1) % 4):
        raise InputError(f"{where}: frame_num {frame_num} must be 4n+1 and at least 5")
    return BatchRow(row_id, input_dir, image, video, prompt, _int_field(fields.get("seed"), "seed", where),
                    frame_num, line)


def read_manifest(path: str | os.PathLike) -> list[BatchRow]:
    """The rows of a CSV (header line) or JSON Lines manifest (``.jsonl``/``.json``, or a file
    whose first character is ``{``). InputError naming the file and line for a bad manifest."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"--manifest {path}: file not found")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"--manifest {path}: cannot read it ({exc})") from None
    base = path.resolve().parent
    rows: list[BatchRow] = []
    if path.suffix.lower() in (".jsonl", ".json") or text.lstrip().startswith("{"):
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            where = f"--manifest {path} line {number}"
            try:
                fields = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{where}: not a JSON object ({exc.msg})") from None
            if not isinstance(fields, dict):
                raise InputError(f"{where}: expected a JSON object per line")
            rows.append(_row(fields, base, where, number))
    else:
        reader = csv.DictReader(io.StringIO(text))
        if not reader.fieldnames or "id" not in [f.strip() for f in reader.fieldnames]:
            raise InputError(f"--manifest {path}: the first line must name the columns (id, input_dir or image "
                             "and video, ...)")
        for fields in reader:
            number = reader.line_num
            where = f"--manifest {path} line {number}"
            if None in fields:
                raise InputError(f"{where}: more values than columns (quote values that hold commas)")
            fields = {k.strip(): v for k, v in fields.items() if k is not None}
            if not any((v or "").strip() for v in fields.values()):
                continue
            rows.append(_row(fields, base, where, number))
    if not rows:
        raise InputError(f"--manifest {path}: no rows")
    seen: dict[str, tuple[str, int]] = {}
    for row in rows:
        key = row.id.lower()  # one folder on a case-insensitive file system
        if key in seen:
            first, line = seen[key]
            same = row.id if first == row.id else f"{first} and id {row.id}"
            raise InputError(f"--manifest {path}: id {same} on lines {line} and {row.line}; ids must be unique, "
                             "also without case (each names an output folder)")
        seen[key] = (row.id, row.line)
    return rows


def parse_shard(value: str | None, environ: dict | None = None) -> tuple[int, int] | None:
    """``--shard``: None (no flag) -> None, every row, shared with other workers through the claims;
    ``I/N`` -> (I, N), 0 <= I < N; ``slurm`` -> this SLURM array task's part:
    (``SLURM_ARRAY_TASK_ID`` - ``SLURM_ARRAY_TASK_MIN``) / ``SLURM_ARRAY_TASK_STEP`` of
    ``SLURM_ARRAY_TASK_COUNT`` (so ``--array=0-12:4`` gives parts 0..3 of 4, and a re-run of one
    task, ``--array=2``, part 0 of 1: the whole manifest, safe with the claims). InputError for a
    bad value."""
    environ = os.environ if environ is None else environ
    if value is None:
        return None
    if value.strip().lower() == "slurm":
        task, count = environ.get("SLURM_ARRAY_TASK_ID"), environ.get("SLURM_ARRAY_TASK_COUNT")
        if task is None or count is None:
            raise InputError("--shard slurm: SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT are not set (not a SLURM "
                             "job array); pass --shard I/N or leave --shard out")
        try:
            offset = int(task) - int(environ.get("SLURM_ARRAY_TASK_MIN", 0))
            step, total = int(environ.get("SLURM_ARRAY_TASK_STEP") or 1), int(count)
        except ValueError:
            raise InputError(f"--shard slurm: SLURM_ARRAY_TASK_ID {task!r} / SLURM_ARRAY_TASK_COUNT {count!r} / "
                             "SLURM_ARRAY_TASK_MIN / SLURM_ARRAY_TASK_STEP: not whole numbers") from None
        if step < 1 or offset % step:
            raise InputError(f"--shard slurm: task {task} is not on the array's step {step} from "
                             f"{environ.get('SLURM_ARRAY_TASK_MIN', 0)}; pass --shard I/N")
        index = offset // step
        source = (f"--shard slurm (SLURM_ARRAY_TASK_ID {task}, MIN {environ.get('SLURM_ARRAY_TASK_MIN', 0)}, "
                  f"STEP {step}, COUNT {total})")
    else:
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", value)
        if not match:
            raise InputError(f"--shard {value}: expected I/N, e.g. 0/4 (this job's part I of N, counted from 0), "
                             "or slurm")
        index, total = int(match[1]), int(match[2])
        source = f"--shard {value}"
    if total < 1 or not 0 <= index < total:
        raise InputError(f"{source}: part {index} of {total} does not exist (expected 0 <= I < N)")
    return index, total


def shard_rows(rows: list[BatchRow], index: int, count: int) -> list[BatchRow]:
    """Part ``index`` of ``count`` of the rows (every ``count``-th row from ``index``): the parts
    of all jobs together hold each row exactly once."""
    return rows[index::count]


# -- steadydancer manifest ----------------------------------------------------------------------

def find_images(folder: Path) -> dict[str, Path]:
    """Reference images by id (file stem)."""
    if not folder.is_dir():
        raise InputError(f"--images {folder}: folder not found")
    images = {p.stem: p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS}
    if not images:
        raise InputError(f"--images {folder}: no images ({', '.join(IMAGE_EXTENSIONS)})")
    return images


def read_pairs(path: Path, images: dict[str, Path], videos: dict) -> list[tuple[str, str]]:
    """(image id, video id) pairs from a file of ``image,video`` lines (an optional header line
    ``image,video``); InputError for an id that is not in the folders."""
    if not path.is_file():
        raise InputError(f"--pairs {path}: file not found (or pass --pairs all)")
    pairs = []
    for number, fields in enumerate(csv.reader(io.StringIO(path.read_text(encoding="utf-8-sig"))), 1):
        fields = [f.strip() for f in fields]
        if not any(fields) or fields[0].startswith("#"):
            continue
        if len(fields) != 2:
            raise InputError(f"--pairs {path} line {number}: expected 'image,video', got {','.join(fields)!r}")
        if number == 1 and fields == ["image", "video"]:
            continue
        image_id, video_id = (Path(f).stem if f.lower().endswith(IMAGE_EXTENSIONS + (".mp4",)) else f for f in fields)
        if image_id not in images:
            raise InputError(f"--pairs {path} line {number}: no image {image_id!r} in --images")
        if video_id not in videos:
            raise InputError(f"--pairs {path} line {number}: no video {video_id!r} in --videos")
        pairs.append((image_id, video_id))
    if not pairs:
        raise InputError(f"--pairs {path}: no pairs")
    return pairs


def find_videos(folder: Path) -> dict[str, tuple[Path, str | None]]:
    """Driving videos by id: ``ID.mp4`` files, or ``ID/`` folders holding ``video.mp4`` (and an optional
    ``prompt.txt``, the layout of the bundled samples)."""
    from ..eval.protocols import VIDEO_EXTENSIONS

    if not folder.is_dir():
        raise InputError(f"--videos: folder not found: {folder}")
    videos: dict[str, tuple[Path, str | None]] = {}
    for entry in sorted(folder.iterdir()):
        if entry.is_file() and entry.suffix.lower() in VIDEO_EXTENSIONS:
            videos[entry.stem] = (entry, None)
        elif entry.is_dir() and (entry / "video.mp4").is_file():
            prompt_file = entry / "prompt.txt"
            prompt = prompt_file.read_text(encoding="utf-8").strip() if prompt_file.is_file() else None
            videos[entry.name] = (entry / "video.mp4", prompt or None)
    if not videos:
        raise InputError(f"--videos: no videos ({', '.join(VIDEO_EXTENSIONS)}, or folders with video.mp4) in {folder}")
    return videos


def make_manifest_rows(images_dir: Path, videos_dir: Path, pairs: str = "all") -> list[dict]:
    """Manifest rows for every image with every video (``pairs`` "all", X-Dance style) or for the
    pairs listed in the file ``pairs``; ids ``<image>__<video>``. No prompt column: the pose stage
    finds each row's prompt (prompt.txt beside the image; the video's only for the same id)."""
    images, videos = find_images(Path(images_dir)), find_videos(Path(videos_dir))
    chosen = ([(i, v) for i in images for v in videos] if pairs == "all"
              else read_pairs(Path(pairs), images, videos))
    rows = []
    for image_id, video_id in chosen:
        rows.append({"id": f"{image_id}__{video_id}", "image": str(images[image_id].resolve()),
                     "video": str(videos[video_id][0].resolve())})
    return rows


def write_manifest(rows: Iterable[dict], path: str | os.PathLike) -> Path:
    """Write manifest rows as CSV (``.csv``) or JSON Lines (anything else), atomically."""
    from ..fileio import atomic_path

    path = Path(path)
    rows = list(rows)
    with atomic_path(path) as tmp:
        if path.suffix.lower() == ".csv":
            columns = [c for c in COLUMNS if any(c in r for r in rows)]
            with open(tmp, "w", newline="", encoding="utf-8") as handle:
                writer = csv.DictWriter(handle, fieldnames=columns)
                writer.writeheader()
                writer.writerows(rows)
        else:
            tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path
