"""Row claims: which worker makes a row, on a file system several hosts share (NFS, Lustre).

A worker takes a row by creating ``OUT/<id>/.claim`` with ``O_CREAT | O_EXCL`` (atomic on local
file systems and on NFSv3+/Lustre; no ``flock``, which NFS does not honour everywhere) and writes
its identity into it: host, pid, SLURM job id, start time and a random token. While it works, a
thread refreshes the file's modification time (the heartbeat). A claim whose heartbeat is older than
the timeout is stale: another worker moves it aside with ``rename`` (atomic: of several workers
only one succeeds), checks that what it moved is the stale claim it judged, and creates its own.

The same facts as ``SoftFileLock`` of tox-dev/filelock (``src/filelock/_soft.py`` at commit
533196686d3930eb9bb8922fc7b2c86ef22e4cbc: O_EXCL create holding pid and host, a stale lock broken
by renaming it to a private name); here staleness is a heartbeat age rather than a same-host pid
check, so that a claim of a dead process on another node is taken over too.

The heartbeat is the file's mtime as the file server sets it, compared with this host's clock: the
timeout must exceed the clock skew between nodes plus NFS attribute caching (60 s at most by
default), which the default (300 s) does.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

CLAIM_NAME = ".claim"
DEFAULT_CLAIM_TIMEOUT_S = 300.0
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)


def job_id(environ: dict | None = None) -> str | None:
    """The scheduler's name for this job (SLURM array task or job), None outside SLURM."""
    environ = os.environ if environ is None else environ
    array, task = environ.get("SLURM_ARRAY_JOB_ID"), environ.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        return f"{array}_{task}"
    return environ.get("SLURM_JOB_ID") or None


def worker_identity() -> dict:
    """What a claim says about its owner (shown to the user when another worker waits or takes over)."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "job": job_id(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


@dataclass
class ClaimState:
    """What a worker sees at a claim's path: nothing, or a claim and how long it has been silent."""

    owner: dict | None  # the claim's contents (None when the file is empty or unreadable: being written)
    silent_s: float  # seconds since its last heartbeat
    inode: tuple[int, int]  # (st_dev, st_ino): which file was judged, to recognise it after a rename

    def describe(self) -> str:
        owner = self.owner or {}
        job = f", job {owner['job']}" if owner.get("job") else ""
        return f"host {owner.get('host', '?')} pid {owner.get('pid', '?')}{job}, since {owner.get('started', '?')}"


def read_claim(path: Path) -> ClaimState | None:
    """The claim at ``path``, None when there is none. Opened and read rather than only stat'ed:
    on NFS an open revalidates the cached attributes (close-to-open consistency), so the mtime is
    the server's current one."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return None
    try:
        info = os.fstat(fd)
        with os.fdopen(fd, "rb", closefd=False) as handle:
            raw = handle.read(65536)
    finally:
        os.close(fd)
    try:
        owner = json.loads(raw.decode("utf-8"))
        owner = owner if isinstance(owner, dict) else None
    except (UnicodeDecodeError, ValueError):
        owner = None
    return ClaimState(owner, max(0.0, time.time() - info.st_mtime), (info.st_dev, info.st_ino))


class Claim:
    """This worker's claim on one row folder: :meth:`acquire`, then :meth:`release` (or use it as a
    context manager after a successful acquire). A thread refreshes the heartbeat until release."""

    def __init__(self, folder: Path, timeout_s: float = DEFAULT_CLAIM_TIMEOUT_S, label: str = "",
                 name: str = CLAIM_NAME) -> None:
        self.path = Path(folder) / name
        self.timeout_s = float(timeout_s)
        self.label = label or Path(folder).name
        self.token = uuid.uuid4().hex
        self.taken_over: ClaimState | None = None  # the stale claim this one replaced, if any
        self.holder: ClaimState | None = None  # the live claim that kept this worker out, if any
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lost = False

    @property
    def heartbeat_s(self) -> float:
        """How often the owner refreshes the claim: several times per timeout."""
        return min(60.0, max(0.2, self.timeout_s / 5))

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, _CREATE_FLAGS, 0o644)
        except FileExistsError:
            return False
        try:
            os.write(fd, json.dumps({**worker_identity(), "token": self.token}).encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)
        return True

    def acquire(self) -> bool:
        """Take the row: True when this worker now owns it (a stale claim is taken over, logged),
        False when another worker's live claim holds it (``holder`` says whose)."""
        for _ in range(5):  # a few rounds: other workers may be creating and breaking claims at once
            if self._create():
                self._start_heartbeat()
                return True
            state = read_claim(self.path)
            if state is None:
                continue  # released meanwhile: try again
            if state.silent_s <= self.timeout_s:
                self.holder = state
                return False
            if self._break(state):
                self.taken_over = state
                log.warning("%s: taking over the claim of %s, silent for %.0f s (--claim_timeout %.0f s)",
                            self.label, state.describe(), state.silent_s, self.timeout_s)
        self.holder = read_claim(self.path)
        return False

    def _break(self, judged: ClaimState) -> bool:
        """Move the stale claim ``judged`` aside; True when it was that one (and is now gone)."""
        aside = self.path.with_name(f"{self.path.name}.stale.{self.token}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return False  # another worker broke or released it first
        moved = read_claim(aside)
        if moved is not None and moved.inode != judged.inode and moved.silent_s <= self.timeout_s:
            # between our look and the rename another worker replaced the stale claim by a live one:
            # put it back (link fails if yet another claim exists; then that live one keeps the row)
            try:
                os.link(aside, self.path)
            except OSError:
                pass
            os.unlink(aside)
            return False
        os.unlink(aside)
        return True

    def _start_heartbeat(self) -> None:
        self._thread = threading.Thread(target=self._beat, name=f"claim {self.label}", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            if not self.owned():
                self._lost = True
                log.error("%s: this worker's claim was taken over by another (its heartbeat was late); "
                          "leaving it to that worker", self.label)
                return
            try:
                os.utime(self.path, None)  # None: the file server's clock, the one readers compare with
            except OSError:
                pass

    def owned(self) -> bool:
        """Whether the claim file is still this worker's (False once another worker took it over)."""
        if self._lost:
            return False
        state = read_claim(self.path)
        return state is not None and (state.owner or {}).get("token") == self.token

    def release(self) -> None:
        """Stop the heartbeat and remove the claim, if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self.owned():
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
