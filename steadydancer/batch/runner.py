"""Run a manifest: the pose stage for raw pairs, then every pair's video, with models loaded once
per process; resumable, one failed row never stops the others, and any number of runs may share
one OUT. See docs/batch.md.

Under torchrun the processes form groups of ``ulysses_size x ring_size x cfg_parallel`` (one process each by
default); the group's first process (its leader) takes the next row nobody holds with a claim
(``batch/claims.py``), the group makes it together (sequence parallel, FSDP), the leader writes.
Several runs (SLURM array tasks, nodes, a resubmission) on one OUT share the rows the same way.
Output per row, ``OUT/<id>/``:

* ``<id>.mp4``: the video (written atomically: it exists only when complete);
* ``record.json``: status (running, done, failed), the reason of a failure, the settings, a
  fingerprint of the inputs, the seed used, timings and versions; a row is skipped by a later run
  when its record says done with the same settings and inputs and its mp4 is still there;
* ``inputs/``: the prepared folder when the row gave image + video;
* ``.claim``: while a worker makes the row.

At OUT's top level: ``summary.json`` (every row's status, merged from all runs) and
``summary.d/<run>.json`` (each run's own summary). Nothing else in OUT is touched.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import re
import shutil
import socket
import time
import uuid
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
from .claims import CLAIM_NAME, DEFAULT_CLAIM_TIMEOUT_S, Claim, job_id, read_claim, worker_identity
from .manifest import SUMMARY_PARTS_NAME, BatchRow

log = logging.getLogger(__name__)

RECORD_NAME = "record.json"
INPUTS_NAME = "inputs"
SUMMARY_NAME = "summary.json"
PATH_MAX_BYTES = 4096  # Linux PATH_MAX
SUMMARY_CLAIM_NAME = ".summary.claim"  # held while a run merges summary.json
# our own temporary names (fileio.atomic_path / atomic_dir): left behind only by a killed process
_PARTIAL = re.compile(r"^\..+\.partial(\.[0-9A-Za-z]+)?$")
# prompt files the pose stage reads for a raw row (pose.prepare.resolve_prompt)
_PROMPT_FILES = ("prompt.txt", "{stem}.txt")


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
    cfg_parallel: int = 1
    dit_fsdp: bool = False
    t5_fsdp: bool = False
    prepare: dict = field(default_factory=dict)  # prepare_inputs keyword arguments (flags of steadydancer prepare)
    manifest: str = ""
    shard: tuple[int, int] | None = None  # None: every row, shared with other workers through the claims
    claim_timeout: float = DEFAULT_CLAIM_TIMEOUT_S  # seconds without a heartbeat after which a claim is stale

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


# -- what a row's video depends on ----------------------------------------------------------------

def _file_stamp(path: Path) -> list[int] | None:
    """[bytes, mtime in ns] of a file, None when it is missing: a changed file changes the stamp."""
    try:
        info = path.stat()
    except OSError:
        return None
    return [info.st_size, info.st_mtime_ns] if path.is_file() else None


def _folder_stamp(folder: Path) -> dict | None:
    """Files, total bytes and a digest of every (name, size, mtime) of a folder's files."""
    if not folder.is_dir():
        return None
    digest, count, total = hashlib.sha1(), 0, 0
    for entry in sorted(folder.iterdir()):
        stamp = _file_stamp(entry)
        if stamp is None:
            continue
        digest.update(f"{entry.name}\0{stamp[0]}\0{stamp[1]}\n".encode("utf-8", "surrogateescape"))
        count, total = count + 1, total + stamp[0]
    return {"files": count, "bytes": total, "sha1": digest.hexdigest()}


def _text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None


def input_fingerprint(row: BatchRow) -> dict:
    """What a row's video depends on in its files: for a prepared folder the reference image and
    the pose folders (size and mtime of each file) and the prompt.txt text; for a raw row the
    image, the video and the prompt files the pose stage would read. A changed entry redoes the row."""
    from ..pipeline.inputs import PreparedFolder

    if row.input_dir is not None:
        folder = PreparedFolder(row.input_dir)
        return {"ref_image.png": _file_stamp(folder.image), "positive/": _folder_stamp(folder.positive),
                "negative/": _folder_stamp(folder.negative), "prompt.txt": _text(folder.prompt_file)}
    prompts = {}
    for name in [p.format(stem=row.image.stem) for p in _PROMPT_FILES]:
        text = _text(row.image.parent / name)
        if text is not None:
            prompts[str(row.image.parent / name)] = text
    video_prompt = _text(row.video.parent / "prompt.txt")
    if video_prompt is not None:
        prompts[str(row.video.parent / "prompt.txt")] = video_prompt
    return {"image": _file_stamp(row.image), "video": _file_stamp(row.video), "prompt files": prompts}


def changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """The dotted names of the entries that differ between two JSON values (for the log)."""
    if isinstance(old, dict) and isinstance(new, dict):
        names = []
        for key in sorted(set(old) | set(new), key=str):
            names += changed_keys(old.get(key), new.get(key), f"{prefix}{key}.")
        return names
    return [] if old == new else [prefix.rstrip(".") or "(all)"]


def row_state(job: BatchJob, row: BatchRow) -> tuple[str, str]:
    """("done", "") when the row's video is finished with today's settings and inputs, else
    ("pending", why), ``why`` naming the setting or input that changed."""
    paths = row_paths(job.out, row)
    record = read_record(paths.record)
    if record is None:
        return "pending", "new"
    if record.get("status") != "done":
        return "pending", f"was {record.get('status', 'unknown')}"
    if not paths.mp4.is_file() or paths.mp4.stat().st_size != record.get("mp4_bytes"):
        return "pending", "its mp4 is missing or changed"
    if record.get("row") != row.as_json():
        return "pending", "its manifest row changed: " + ", ".join(changed_keys(record.get("row"), row.as_json()))
    if record.get("settings") != job.settings(row):
        return "pending", "the settings changed: " + ", ".join(changed_keys(record.get("settings"), job.settings(row)))
    if record.get("inputs") != input_fingerprint(row):
        return "pending", "its inputs changed: " + ", ".join(changed_keys(record.get("inputs"), input_fingerprint(row)))
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
        longest = paths.folder / f".{row.id}.XXXXXXXX.partial.mp4"  # the mp4's temporary name
        if len(str(longest).encode("utf-8")) >= PATH_MAX_BYTES:
            raise InputError(f"--out {job.out}: the path of row {row.id}'s files would be longer than the "
                             f"{PATH_MAX_BYTES}-byte limit of a path; use a shorter --out or shorter ids")


def _clean_partials(folder: Path) -> None:
    """Remove the temporary files and folders a killed run left (only our own ``.*.partial`` names).
    Called by the row's claim owner only: another worker's partial files are its own business."""
    if not folder.is_dir():
        return
    for entry in folder.iterdir():
        if _PARTIAL.match(entry.name):
            shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() and not entry.is_symlink() else \
                entry.unlink(missing_ok=True)


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


def new_run_id() -> str:
    """A name for one run (all its processes): time, host, pid and a random part, sortable by time."""
    host = re.sub(r"[^0-9A-Za-z_-]", "-", socket.gethostname())[:40]
    return f"{time.strftime('%Y%m%dT%H%M%S')}-{host}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class BatchRunner:
    """Runs one process's part of a batch (see the module docstring)."""

    def __init__(self, job: BatchJob, setup, progress: bool = True) -> None:
        self.job = job
        self.setup = setup
        self.progress = progress
        self.pipeline = None
        self.load_seconds = 0.0
        self.results: list[dict] = []  # this group's rows (the leader's view)
        self.elsewhere: dict[str, str] = {}  # rows left to other workers (leader): id -> why
        self.claim: Claim | None = None  # the leader's claim on the row it makes now
        self.run_id = ""
        self.attempt = ""  # a new name for each row this group makes (records say which attempt wrote them)

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
        if setup.is_group_leader:
            log.info("models loaded in %.1f s (once for all this process's rows)", self.load_seconds)

    # -- the run --------------------------------------------------------------------------------

    def run(self, rows: list[BatchRow], manifest_rows: list[BatchRow] | None = None) -> dict:
        """Make the pending rows this process's group can claim; returns the run's summary (on every
        rank). ``manifest_rows``: every row of the manifest (for summary.json; default ``rows``)."""
        job, setup = self.job, self.setup
        started = time.perf_counter()
        self.run_id = setup.broadcast_world(new_run_id)
        scan = setup.broadcast_world(lambda: [(*row_state(job, row), _attempt(job, row)) for row in rows])
        pending = [(row, attempt) for row, (state, _, attempt) in zip(rows, scan) if state == "pending"]
        skipped = [row.id for row, (state, _, _) in zip(rows, scan) if state == "done"]
        if setup.is_main:
            log.info("run %s: %d rows: %d done before (skipped), %d to make, by %d group(s) of %d process(es) "
                     "taking the next free row", self.run_id, len(rows), len(skipped), len(pending),
                     setup.group_count, setup.model_group_size)
            for row, (state, why, _) in zip(rows, scan):
                holder = live_claim(job, row) if state == "pending" else None
                if holder is not None:
                    log.info("row %s: being made by %s", row.id, holder.describe())
                elif state == "pending" and why != "new":
                    log.info("row %s: to be made again (%s)", row.id, why)
        by_id = {row.id: row for row, _ in pending}
        queue = list(pending)
        rows_bar = progress_bar(desc=f"rows (group {setup.group_index + 1}/{setup.group_count})", unit="row",
                                disable=not (self.progress and setup.is_main))
        while True:
            chosen = self._take_next(queue) if setup.is_group_leader else None
            chosen = setup.broadcast_object(chosen)
            if chosen is None:
                break
            try:
                self.results.append(self.make_row(by_id[chosen]))
            finally:
                if self.claim is not None:
                    self.claim.release()
                    self.claim = None
            rows_bar.update(1)
        rows_bar.close()
        return self.summarise(rows, manifest_rows or rows, skipped, started)

    def _take_next(self, queue: list[tuple[BatchRow, str | None]]) -> str | None:
        """(Group leader) claim the next pending row nobody else holds or has handled since the
        run began; its id, or None when no row is left for this group."""
        while queue:
            row, attempt = queue.pop(0)
            if _handled_elsewhere(self.job, row, attempt):
                self.elsewhere[row.id] = "handled by another worker meanwhile"
                continue
            folder = row_paths(self.job.out, row).folder
            folder.mkdir(parents=True, exist_ok=True)
            claim = Claim(folder, self.job.claim_timeout, label=f"row {row.id}")
            if not claim.acquire():
                holder = claim.holder.describe() if claim.holder is not None else "another worker"
                log.info("row %s: held by %s; left to it", row.id, holder)
                self.elsewhere[row.id] = f"held by {holder}"
                continue
            if _handled_elsewhere(self.job, row, attempt):  # finished between our look and our claim
                claim.release()
                self.elsewhere[row.id] = "handled by another worker meanwhile"
                continue
            self.claim = claim
            return row.id
        return None

    def _record(self, row: BatchRow, result: dict, **extra: Any) -> None:
        """Write the row's record (leader): the result with the row, settings and this run."""
        record = {**result, "row": row.as_json(), "settings": self.job.settings(row), "run": self.run_id,
                  "attempt": self.attempt, "versions": versions(), **extra}
        write_record(row_paths(self.job.out, row).record, record)

    def make_row(self, row: BatchRow) -> dict:
        """One claimed row on this group: the pose stage (raw rows), the checks, the generation;
        the leader writes the record and the mp4. A failure is logged once, by the leader."""
        job, setup = self.job, self.setup
        paths = row_paths(job.out, row)
        leader = setup.is_group_leader
        self.attempt = uuid.uuid4().hex
        plan: RowPlan | dict | None = None
        timings: dict[str, float] = {}
        inputs: dict | None = None
        if leader:
            inputs = input_fingerprint(row)  # before the work: an edit meanwhile redoes the row next time
            _clean_partials(paths.folder)  # this worker owns the row: what a killed worker left goes
            self._record(row, {"id": row.id, "status": "running", "stage": "prepare" if row.needs_prepare
                               else "generate"}, worker=worker_identity())
            plan = self._prepare_and_plan(row, timings)
            if isinstance(plan, dict):
                self._record(row, plan, inputs=inputs, **timings)
        plan = setup.broadcast_object(plan)
        if isinstance(plan, dict):
            return plan
        if self.pipeline is None:
            self.load_models()  # a collective in a group: every process of the group is here
        if leader:
            log.info("row %s: %d frames, seed %d", row.id, plan.frame_num, plan.seed)
            self._record(row, {"id": row.id, "status": "running", "stage": "generate"}, seed=plan.seed,
                         inputs=inputs, **timings)
        started = time.perf_counter()
        try:
            from ..pipeline.run import generate_to_file

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
            self._record(row, result, seed=plan.seed, inputs=inputs, **timings)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            return result
        timings["generate_s"] = round(time.perf_counter() - started, 2)
        result = {"id": row.id, "status": "done", "group": setup.group_index, **timings}
        if leader:
            if self.claim is not None and not self.claim.owned():
                log.error("row %s: made, but another worker took the row over meanwhile; its record is left "
                          "to that worker", row.id)
                return {**result, "status": "lost", "stage": "claim", "reason": "claim taken over"}
            self._record(row, result, seed=plan.seed, frames=plan.frame_num, prompt=plan.prompt,
                         mp4=paths.mp4.name, mp4_bytes=paths.mp4.stat().st_size, inputs=inputs,
                         processes=setup.model_group_size)
            log.info("row %s done in %.1f s: %s", row.id, timings["generate_s"], paths.mp4)
        return result

    def _prepare_and_plan(self, row: BatchRow, timings: dict) -> RowPlan | dict:
        """(Leader) the pose stage of a raw row and the row's checks: a plan, or the failure."""
        if row.needs_prepare:
            log.info("row %s: pose stage", row.id)
            try:
                timings["prepare_s"] = round(prepare_row(self.job, row, progress=self.progress and self.setup.is_main),
                                             2)
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as exc:  # noqa: BLE001 - a bad row must not stop the others
                reason = _one_line(exc)
                log.error("row %s failed in the pose stage: %s", row.id, reason)
                if not isinstance(exc, InputError):
                    log.debug("row %s", row.id, exc_info=True)
                return {"id": row.id, "status": "failed", "stage": "prepare", "reason": reason}
        try:
            return plan_row(self.job, row)
        except InputError as exc:
            log.error("row %s failed: %s", row.id, exc)
            return {"id": row.id, "status": "failed", "stage": "inputs", "reason": str(exc)}

    # -- the summary ----------------------------------------------------------------------------

    def summarise(self, rows: list[BatchRow], manifest_rows: list[BatchRow], skipped: list[str],
                  started: float) -> dict:
        """This run's results from every group (gathered on every process). Rank 0 writes them to
        OUT/summary.d/<run>.json and merges every run's part with the rows' records into
        OUT/summary.json (under a claim, so that runs ending together do not overwrite each other)."""
        setup, job = self.setup, self.job
        mine = {"results": self.results if setup.is_group_leader else [], "load_s": round(self.load_seconds, 2),
                "elsewhere": self.elsewhere if setup.is_group_leader else {}, "rank": setup.rank}
        parts = setup.gather_world(mine)
        results = [r for part in parts for r in part["results"]]
        made = [r for r in results if r["status"] == "done"]
        failed = [r for r in results if r["status"] == "failed"]
        made_ids = {r["id"] for r in results}
        elsewhere = {k: v for part in parts for k, v in part["elsewhere"].items() if k not in made_ids}
        generate_s = sum(r.get("generate_s") or 0.0 for r in made)
        summary = {
            "run": self.run_id, "manifest": job.manifest,
            "shard": None if job.shard is None else f"{job.shard[0]}/{job.shard[1]}", "rows": len(rows),
            "done": len(made), "skipped": len(skipped), "failed": len(failed), "elsewhere": len(elsewhere),
            "failures": {r["id"]: f"{r['stage']}: {r['reason']}" for r in failed},
            "left_to_others": elsewhere,
            "seconds": round(time.perf_counter() - started, 1),
            # generation only: model loading and the pose stage are reported apart
            "seconds_per_pair": round(generate_s / len(made), 2) if made else None,
            "pose_stage_s": round(sum(r.get("prepare_s") or 0.0 for r in results), 2),
            "processes": setup.world_size, "groups": setup.group_count, "group_size": setup.model_group_size,
            "model_load_s": {str(p["rank"]): p["load_s"] for p in parts},
            "made_by_group": {r["id"]: r["group"] for r in made},
            "host": socket.gethostname(), "job": job_id(), "versions": versions(),
        }
        if setup.is_main:
            write_record(job.out / SUMMARY_PARTS_NAME / f"{self.run_id}.json", summary)
            merge_summary(job, manifest_rows)
        return summary


def _attempt(job: BatchJob, row: BatchRow) -> str | None:
    """Which attempt the row's record is from (None: no record)."""
    record = read_record(row_paths(job.out, row).record)
    return None if record is None else str(record.get("attempt") or record.get("run") or "")


def _handled_elsewhere(job: BatchJob, row: BatchRow, attempt_at_start: str | None) -> bool:
    """Whether another worker made or failed the row (or holds it) since this run looked at it."""
    record = read_record(row_paths(job.out, row).record)
    if record is None:
        return False
    now = str(record.get("attempt") or record.get("run") or "")
    return now != (attempt_at_start or "") and record.get("status") in ("done", "failed")


def live_claim(job: BatchJob, row: BatchRow):
    """The row's claim when a worker holds it now (heartbeat within --claim_timeout), else None."""
    folder = row_paths(job.out, row).folder
    claim = read_claim(folder / CLAIM_NAME) if folder.is_dir() else None
    return claim if claim is not None and claim.silent_s <= job.claim_timeout else None


def row_status(job: BatchJob, row: BatchRow) -> dict:
    """A row's true status for summary.json: done or failed (from its record), running (a live
    claim), interrupted (a record saying running with no live claim), pending (never started)."""
    paths = row_paths(job.out, row)
    record = read_record(paths.record) or {}
    status = record.get("status", "pending")
    claim = live_claim(job, row)
    if claim is not None:
        entry = {"status": "running", "by": claim.describe()}
    elif status == "running":
        entry = {"status": "interrupted", "stage": record.get("stage")}
    else:
        entry = {"status": status}
        if status == "done" and row_state(job, row)[0] != "done":
            entry["status"] = "stale"  # made with other settings or inputs: the next run makes it again
    for key in ("stage", "reason", "generate_s", "prepare_s", "run", "seed", "mp4"):
        if key in record and key not in entry and entry["status"] != "running":
            entry[key] = record[key]
    return entry


def merge_summary(job: BatchJob, rows: list[BatchRow]) -> dict:
    """Write OUT/summary.json: every manifest row's true status (from the records and claims), the
    counts, and every run's own summary (OUT/summary.d/) for this manifest; returns it."""
    lock = Claim(job.out, min(job.claim_timeout, 60.0), label="summary.json", name=SUMMARY_CLAIM_NAME)
    deadline = time.monotonic() + 3 * lock.timeout_s
    while not lock.acquire():  # another run is merging (a second or so): wait for it
        if time.monotonic() > deadline:
            log.warning("summary.json: still held by %s; not updated (each run's part is in %s)",
                        lock.holder.describe() if lock.holder else "another run", SUMMARY_PARTS_NAME)
            return {}
        time.sleep(0.2)
    try:
        statuses = {row.id: row_status(job, row) for row in rows}
        counts: dict[str, int] = {}
        for entry in statuses.values():
            counts[entry["status"]] = counts.get(entry["status"], 0) + 1
        runs = {}
        for path in sorted((job.out / SUMMARY_PARTS_NAME).glob("*.json")):
            part = read_record(path)
            if part is not None and part.get("manifest") == job.manifest:
                runs[path.stem] = part
        made = [e for e in statuses.values() if e["status"] == "done" and e.get("generate_s") is not None]
        summary = {
            "manifest": job.manifest, "rows": len(rows), "status": counts,
            "failures": {k: f"{e.get('stage')}: {e.get('reason')}" for k, e in statuses.items()
                         if e["status"] == "failed"},
            "seconds_per_pair": round(sum(e["generate_s"] for e in made) / len(made), 2) if made else None,
            "row_status": statuses,
            "runs": runs,
            "model_load_s": {run: part.get("model_load_s") for run, part in runs.items()},
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        write_record(job.out / SUMMARY_NAME, summary)
        return summary
    finally:
        lock.release()


def print_summary(summary: dict, out: Path) -> None:
    """The run's summary on the terminal (a few lines)."""
    per_pair = summary["seconds_per_pair"]
    print(f"batch: {summary['done']} made, {summary['skipped']} skipped (done before), {summary['failed']} failed "
          f"of {summary['rows']} rows in {summary['seconds']:.0f} s"
          + (f" ({per_pair:.1f} s of generation per pair)" if per_pair else ""))
    if summary["elsewhere"]:
        print(f"  {summary['elsewhere']} row(s) left to other workers on {out} (held, or made meanwhile)")
    for row_id, reason in summary["failures"].items():
        print(f"  failed {row_id}: {reason}")
    print(f"summary: {out / SUMMARY_NAME}")
