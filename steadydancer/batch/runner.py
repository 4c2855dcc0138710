"""Run a manifest: the pose stage for raw pairs, then every pair's video, with models loaded once
per process; resumable, one failed row never stops the others. See docs/batch.md.

Under torchrun the processes form groups of ``ulysses_size x ring_size`` (one process each by
default); each group makes every ``groups``-th pending row, its processes together (sequence
parallel, FSDP), its first process writing. Output per row, ``OUT/<id>/``:

* ``<id>.mp4``: the video (written atomically: it exists only when complete);
* ``record.json``: status (running, done, failed), the reason of a failure, the settings, the
  seed used, timings and versions; a row is skipped by a later run when its record says done
  with the same settings and its mp4 is still there (same size);
* ``inputs/``: the prepared folder when the row gave image + video.

Nothing else in ``OUT/<id>/`` is touched, so files a user keeps there survive.
"""

from __future__ import annotations

import json
import logging
import platform
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..errors import InputError
from ..options import draw_seed
from ..fileio import atomic_path, check_can_create
from ..pipeline import config as C
from ..progress import progress as progress_bar
from .manifest import BatchRow, split_between_groups

log = logging.getLogger(__name__)

RECORD_NAME = "record.json"
INPUTS_NAME = "inputs"
SUMMARY_NAME = "summary.json"
# our own temporary names (fileio.atomic_path / atomic_dir): left behind only by a killed process
_PARTIAL = re.compile(r"^\..+\.partial(\.[0-9A-Za-z]+)?$")


@dataclass
class BatchJob:
    """Everything a batch run needs besides the rows (the CLI fills it from the flags)."""

    ckpt_dir: str
    out: Path
    size: str = C.DEFAULT_SIZE
    frame_num: int | None = None  # rows without their own: up to 81 frames, as many as the poses hold
    sampling: Any = None  # SamplingOptions
    seed: int = -1  # rows without their own seed; negative: a random one per row (recorded)
    prompt: str | None = None  # for every row without its own (else the prepared folder's prompt.txt)
    negative_prompt: str | None = None
    memory: Any = None  # MemoryOptions
    long_video: Any = None  # LongVideoOptions
    device: str | None = None
    offload_model: bool | None = None
    t5_cpu: bool = False
    ulysses_size: int = 1
    ring_size: int = 1
    dit_fsdp: bool = False
    t5_fsdp: bool = False
    prepare: dict = field(default_factory=dict)  # prepare_inputs keyword arguments (flags of steadydancer prepare)
    manifest: str = ""
    shard: tuple[int, int] = (0, 1)

    def settings(self, row: BatchRow | None = None) -> dict:
        """What a row's video depends on besides its own inputs: a finished row is made again when
        these changed (flags that only change speed or memory are left out; the pose-stage flags
        count only for rows the batch prepares)."""
        memory = self.memory
        settings = {
            "ckpt_dir": str(Path(self.ckpt_dir).resolve()), "size": self.size, "frame_num": self.frame_num,
            "sampling": asdict(self.sampling) if self.sampling is not None else None, "seed": self.seed,
            "prompt": self.prompt, "negative_prompt": self.negative_prompt,
            "long_video": asdict(self.long_video) if self.long_video is not None else None,
            "weights": None if memory is None else {
                "dit_dtype": memory.dit_dtype, "dit_fp8_file": str(memory.dit_fp8_file or "") or None,
                "gguf": str(memory.gguf or "") or None, "fp8_matmul": memory.fp8_matmul,
                "loras": [[str(p), s] for p, s in memory.loras]},
        }
        if row is None or row.needs_prepare:
            settings["prepare"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in sorted(self.prepare.items())
                                   if k not in ("device", "progress")}
        return json.loads(json.dumps(settings))  # as a record reads back (tuples become lists)


@dataclass
class RowPaths:
    folder: Path

    @property
    def mp4(self) -> Path:
        return self.folder / f"{self.folder.name}.mp4"

    @property
    def record(self) -> Path:
        return self.folder / RECORD_NAME

    @property
    def inputs(self) -> Path:
        return self.folder / INPUTS_NAME


def row_paths(out: Path, row: BatchRow) -> RowPaths:
    return RowPaths(Path(out) / row.id)


def read_record(path: Path) -> dict | None:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def write_record(path: Path, record: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def versions() -> dict:
    return {"steadydancer": __version__, "torch": torch.__version__, "python": platform.python_version()}


def row_state(job: BatchJob, row: BatchRow) -> tuple[str, str]:
    """("done", "") when the row's video is finished with today's settings, else ("pending", why)."""
    paths = row_paths(job.out, row)
    record = read_record(paths.record)
    if record is None:
        return "pending", "new"
    if record.get("status") != "done":
        return "pending", f"was {record.get('status', 'unknown')}"
    if not paths.mp4.is_file() or paths.mp4.stat().st_size != record.get("mp4_bytes"):
        return "pending", "its mp4 is missing or changed"
    if record.get("row") != row.as_json() or record.get("settings") != job.settings(row):
        return "pending", "the manifest row or the settings changed"
    return "done", ""


def check_outputs_writable(job: BatchJob, rows: list[BatchRow]) -> None:
    """InputError (one line) before any work when OUT, or a row's folder, mp4 or record, cannot be
    written; a row folder that is a file, or an mp4 name that is a folder, is refused too."""
    check_can_create(job.out, "--out")
    if job.out.exists() and not job.out.is_dir():
        raise InputError(f"--out {job.out}: is a file; name a folder")
    for row in rows:
        paths = row_paths(job.out, row)
        if paths.folder.exists() and not paths.folder.is_dir():
            raise InputError(f"--out: {paths.folder} (row {row.id}) is a file; the row's outputs go in a folder "
                             "of that name")
        for path in (paths.mp4, paths.record):
            if path.is_dir():
                raise InputError(f"--out: {path} (row {row.id}) is a folder; it must be free for the row's output")
        check_can_create(paths.record, "--out")


def _clean_partials(folder: Path) -> None:
    """Remove the temporary files and folders a killed run left (only our own ``.*.partial`` names)."""
    if not folder.is_dir():
        return
    for entry in folder.iterdir():
        if _PARTIAL.match(entry.name):
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    message = text[0] if text else ""
    return message if isinstance(exc, InputError) else f"{type(exc).__name__}: {message}".rstrip(": ")


# -- the pose stage -------------------------------------------------------------------------------

def prepare_row(job: BatchJob, row: BatchRow, progress: bool = False) -> float:
    """Run the pose stage of a raw row into ``OUT/<id>/inputs``; returns the seconds it took."""
    from ..pose.prepare import prepare_inputs

    started = time.perf_counter()
    paths = row_paths(job.out, row)
    paths.folder.mkdir(parents=True, exist_ok=True)
    _clean_partials(paths.folder)
    for flag, path in (("image", row.image), ("video", row.video)):
        if not path.is_file():
            raise InputError(f"{flag} {path}: file not found")
    prepare_inputs(row.image, row.video, paths.inputs, prompt=row.prompt, progress=progress, **job.prepare)
    return time.perf_counter() - started


# -- one row's generation -------------------------------------------------------------------------

@dataclass
class RowPlan:
    """What the group's first process decided for a row (broadcast to the others)."""

    image: str
    positive: str
    negative: str
    prompt: str
    max_area: int
    frame_num: int
    seed: int


def plan_row(job: BatchJob, row: BatchRow) -> RowPlan:
    """Check a row's inputs (InputError, one line) and fix its prompt, frame count and seed."""
    from ..cli.generate import EXAMPLE_PROMPT
    from ..pipeline.inputs import PreparedFolder
    from ..pipeline.run import check_inputs

    folder = PreparedFolder(row.input_dir if row.input_dir is not None else row_paths(job.out, row).inputs)
    if not folder.folder.is_dir():
        raise InputError(f"input_dir {folder.folder}: folder not found")
    frame_num = row.frame_num if row.frame_num is not None else job.frame_num
    max_area, frame_num = check_inputs(job.ckpt_dir, folder.image, folder.positive, folder.negative, job.size,
                                       frame_num, save_file=row_paths(job.out, row).mp4, memory=job.memory,
                                       checkpoint_verified=True)
    prompt = row.prompt if row.prompt is not None else job.prompt
    if prompt is None:
        prompt = folder.prompt()
        prompt = EXAMPLE_PROMPT if prompt is None else prompt
    seed = row.seed if row.seed is not None else job.seed
    if seed < 0:
        seed = draw_seed()
    return RowPlan(str(folder.image), str(folder.positive), str(folder.negative), prompt, max_area, frame_num, seed)


class BatchRunner:
    """Runs one process's part of a batch (see the module docstring)."""

    def __init__(self, job: BatchJob, setup, progress: bool = True) -> None:
        self.job = job
        self.setup = setup
        self.progress = progress
        self.pipeline = None
        self.load_seconds = 0.0
        self.prepare_seconds: dict[str, float] = {}
        self.results: list[dict] = []  # this process's rows (the group leader's view)

    # -- models ---------------------------------------------------------------------------------

    def load_models(self) -> None:
        """Build the pipeline and load every model now (once for all rows), timed."""
        from ..pipeline.i2v import DancerPipeline

        job, setup = self.job, self.setup
        started = time.perf_counter()
        if setup.model_group_size > 1:
            from ..distributed.pipeline import DistributedDancerPipeline

            self.pipeline = DistributedDancerPipeline(job.ckpt_dir, setup, t5_cpu=job.t5_cpu, memory=job.memory,
                                                      keep_models=True)
        else:
            device = job.device if not setup.is_distributed else setup.device
            self.pipeline = DancerPipeline(job.ckpt_dir, device=device, offload_model=job.offload_model,
                                           t5_cpu=job.t5_cpu, keep_models=True, memory=job.memory)
        pipeline = self.pipeline
        pipeline.text_encoder()
        pipeline.clip()
        pipeline.vae()
        pipeline.dit()
        self.load_seconds = time.perf_counter() - started
        if setup.is_main:
            log.info("models loaded in %.1f s (once for all this process's rows)", self.load_seconds)

    # -- the run --------------------------------------------------------------------------------

    def run(self, rows: list[BatchRow]) -> dict:
        """Make every pending row of this process's group; returns the run's summary (on every rank)."""
        job, setup = self.job, self.setup
        started = time.perf_counter()
        states = setup.broadcast_world(lambda: [row_state(job, row) for row in rows])
        pending = [row for row, (state, _) in zip(rows, states) if state == "pending"]
        skipped = [row.id for row, (state, _) in zip(rows, states) if state == "done"]
        if setup.is_main:
            log.info("%d rows: %d done before (skipped), %d to make, on %d group(s) of %d process(es)",
                     len(rows), len(skipped), len(pending), setup.group_count, setup.model_group_size)
            for row, (state, why) in zip(rows, states):
                if state == "pending" and why != "new":
                    log.info("row %s: making it again (%s)", row.id, why)
        mine = split_between_groups(pending, setup.group_index, setup.group_count)
        failed_prepare = self.prepare_rows(mine)
        if any(row.id not in failed_prepare for row in mine):
            self.load_models()
        rows_bar = progress_bar(total=len(mine), desc=f"rows (group {setup.group_index + 1}/{setup.group_count})",
                                unit="row", disable=not (self.progress and setup.is_main))
        for row in mine:
            if row.id in failed_prepare:
                self.results.append(failed_prepare[row.id])
            else:
                self.results.append(self.generate_row(row))
            rows_bar.update(1)
        rows_bar.close()
        return self.summarise(rows, skipped, started)

    def prepare_rows(self, rows: list[BatchRow]) -> dict[str, dict]:
        """The pose stage of this group's raw rows, spread over the group's processes; returns the
        rows that failed (id -> result), the same on every process of the group."""
        setup = self.setup
        raw = [row for row in rows if row.needs_prepare]
        mine = raw[setup.rank - setup.group_leader::setup.model_group_size]
        outcome: dict[str, dict] = {}
        for row in mine:
            log.info("row %s: pose stage", row.id)
            try:
                seconds = prepare_row(self.job, row, progress=self.progress and setup.is_main)
                outcome[row.id] = {"ok": True, "prepare_s": round(seconds, 2)}
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as exc:  # noqa: BLE001 - a bad row must not stop the others
                reason = _one_line(exc)
                log.error("row %s failed in the pose stage: %s", row.id, reason)
                if not isinstance(exc, InputError):
                    log.debug("row %s", row.id, exc_info=True)
                result = {"id": row.id, "status": "failed", "stage": "prepare", "reason": reason}
                self._write(row, result)
                outcome[row.id] = {"ok": False, **result}
        merged: dict[str, dict] = {}
        for part in setup.gather_objects(outcome):
            merged.update(part)
        self.prepare_seconds = {k: v["prepare_s"] for k, v in merged.items() if v.get("ok")}
        return {k: {kk: vv for kk, vv in v.items() if kk != "ok"} for k, v in merged.items() if not v["ok"]}

    def _write(self, row: BatchRow, result: dict, **extra: Any) -> None:
        record = {**result, "row": row.as_json(), "settings": self.job.settings(row), "versions": versions(), **extra}
        write_record(row_paths(self.job.out, row).record, record)

    def generate_row(self, row: BatchRow) -> dict:
        """One row on this group; the leader checks it, writes the mp4 and the record."""
        from ..pipeline.run import generate_to_file

        job, setup = self.job, self.setup
        paths = row_paths(job.out, row)
        leader = setup.is_group_leader
        plan: RowPlan | str | None = None
        if leader:
            paths.folder.mkdir(parents=True, exist_ok=True)
            _clean_partials(paths.folder)
            try:
                plan = plan_row(job, row)
            except InputError as exc:
                plan = str(exc)
        plan = setup.broadcast_object(plan)
        if isinstance(plan, str):
            log.error("row %s failed: %s", row.id, plan)
            result = {"id": row.id, "status": "failed", "stage": "inputs", "reason": plan}
            if leader:
                self._write(row, result)
            return result
        if leader:
            log.info("row %s: %d frames, seed %d", row.id, plan.frame_num, plan.seed)
            self._write(row, {"id": row.id, "status": "running"}, seed=plan.seed)
        started = time.perf_counter()
        try:
            generate_to_file(self.pipeline, image=plan.image, cond_pos_folder=plan.positive,
                             cond_neg_folder=plan.negative, prompt=plan.prompt, save_file=paths.mp4,
                             max_area=plan.max_area, frame_num=plan.frame_num, sampling=job.sampling,
                             seed=plan.seed, negative_prompt=job.negative_prompt, progress=self.progress,
                             long_video=job.long_video, emit=leader, started=started)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # noqa: BLE001
            if setup.model_group_size > 1:
                raise  # the group's other processes are inside the same collectives: stop them all
            reason = _one_line(exc)
            log.error("row %s failed while generating: %s", row.id, reason)
            log.debug("row %s", row.id, exc_info=True)
            result = {"id": row.id, "status": "failed", "stage": "generate", "reason": reason}
            self._write(row, result, seed=plan.seed)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            return result
        seconds = time.perf_counter() - started
        result = {"id": row.id, "status": "done", "generate_s": round(seconds, 2),
                  "prepare_s": self.prepare_seconds.get(row.id), "group": setup.group_index}
        if leader:
            self._write(row, result, seed=plan.seed, frames=plan.frame_num, prompt=plan.prompt,
                        mp4=paths.mp4.name, mp4_bytes=paths.mp4.stat().st_size,
                        processes=setup.model_group_size)
            log.info("row %s done in %.1f s: %s", row.id, seconds, paths.mp4)
        return result

    # -- the summary ----------------------------------------------------------------------------

    def summarise(self, rows: list[BatchRow], skipped: list[str], started: float) -> dict:
        """This run's results from every group (gathered on every process); rank 0 writes
        OUT/summary.json with the state of every manifest row (including other jobs' shards)."""
        setup, job = self.setup, self.job
        mine = {"results": self.results if setup.is_group_leader else [], "load_s": round(self.load_seconds, 2),
                "rank": setup.rank}
        parts = setup.gather_world(mine)
        results = [r for part in parts for r in part["results"]]
        made = [r for r in results if r["status"] == "done"]
        failed = [r for r in results if r["status"] == "failed"]
        seconds = time.perf_counter() - started
        summary = {
            "manifest": job.manifest, "shard": f"{job.shard[0]}/{job.shard[1]}", "rows": len(rows),
            "done": len(made), "skipped": len(skipped), "failed": len(failed),
            "failures": {r["id"]: f"{r['stage']}: {r['reason']}" for r in failed},
            "seconds": round(seconds, 1),
            "seconds_per_pair": round(seconds / len(made), 2) if made else None,
            "processes": setup.world_size, "groups": setup.group_count, "group_size": setup.model_group_size,
            "model_load_s": {str(p["rank"]): p["load_s"] for p in parts},
            "made_by_group": {r["id"]: r["group"] for r in made},
            "versions": versions(),
        }
        if setup.is_main:
            summary["all_rows"] = overview(job.out)
            write_record(job.out / SUMMARY_NAME, summary)
        return summary


def overview(out: Path) -> dict:
    """Status counts of every row folder under OUT that has a record (all shards' rows)."""
    counts: dict[str, int] = {}
    for record_path in sorted(Path(out).glob(f"*/{RECORD_NAME}")):
        record = read_record(record_path) or {}
        status = record.get("status", "unknown")
        counts[status] = counts.get(status, 0) + 1
    return counts


def print_summary(summary: dict, out: Path) -> None:
    """The run's summary on the terminal (a few lines)."""
    per_pair = summary["seconds_per_pair"]
    print(f"batch: {summary['done']} made, {summary['skipped']} skipped (done before), {summary['failed']} failed "
          f"of {summary['rows']} rows in {summary['seconds']:.0f} s"
          + (f" ({per_pair:.1f} s per pair)" if per_pair else ""))
    for row_id, reason in summary["failures"].items():
        print(f"  failed {row_id}: {reason}")
    print(f"summary: {out / SUMMARY_NAME}")
