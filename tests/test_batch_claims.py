"""Row claims (steadydancer/batch/claims.py): one owner at a time, a heartbeat that keeps a live
claim, a stale claim (also a SIGKILLed owner's) taken over only after the timeout, with a log line;
and the checks that refuse groups spanning nodes."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from steadydancer.batch.claims import CLAIM_NAME, Claim, job_id, read_claim
from steadydancer.distributed.groups import check_groups_within_nodes
from steadydancer.errors import InputError

ROOT = Path(__file__).resolve().parents[1]


def _age(path: Path, seconds: float) -> None:
    """Make a claim look silent for ``seconds`` (its heartbeat is the file's mtime)."""
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_one_owner_at_a_time_and_release(tmp_path):
    first, second = Claim(tmp_path, 60, "row a"), Claim(tmp_path, 60, "row a")
    assert first.acquire() and first.owned()
    owner = json.loads((tmp_path / CLAIM_NAME).read_text())
    assert owner["pid"] == os.getpid() and owner["token"] == first.token and owner["host"]
    assert not second.acquire()
    assert second.holder is not None and f"pid {os.getpid()}" in second.holder.describe()
    first.release()
    assert not (tmp_path / CLAIM_NAME).exists()
    assert second.acquire()
    second.release()


def test_a_stale_claim_is_taken_over_once_with_a_log_line(tmp_path, caplog):
    dead = Claim(tmp_path, 60, "row a")
    assert dead._create()  # a claim whose owner never beats again
    _age(tmp_path / CLAIM_NAME, 30)
    assert not Claim(tmp_path, 60, "row a").acquire()  # 30 s silent < 60 s: still live
    caplog.set_level(logging.WARNING, logger="steadydancer")
    taker, late = Claim(tmp_path, 10, "row a"), Claim(tmp_path, 10, "row a")
    assert taker.acquire() and taker.taken_over is not None
    assert "row a: taking over the claim of host" in caplog.text and "silent for 30 s" in caplog.text
    assert not late.acquire()  # the new claim is fresh: nobody takes it over again
    assert not dead.owned() and taker.owned()
    assert sorted(p.name for p in tmp_path.iterdir()) == [CLAIM_NAME]  # nothing moved aside is left
    taker.release()


def test_the_heartbeat_keeps_a_working_claim_live_and_notices_a_takeover(tmp_path):
    owner = Claim(tmp_path, 0.5, "row a")
    assert owner.acquire()
    time.sleep(1.5)  # three timeouts: without the heartbeat the claim would be stale
    assert read_claim(tmp_path / CLAIM_NAME).silent_s < 0.5
    assert not Claim(tmp_path, 0.5, "row a").acquire()
    # another worker replaced it (the owner was silent too long, e.g. a frozen node): the owner sees it
    (tmp_path / CLAIM_NAME).unlink()
    thief = Claim(tmp_path, 60, "row a")
    assert thief._create()
    time.sleep(0.5)
    assert not owner.owned()
    owner.release()  # must not remove the other worker's claim
    assert thief.owned()


def test_a_sigkilled_owner_keeps_the_row_until_the_timeout(tmp_path):
    """A worker killed with SIGKILL: its claim stays live for --claim_timeout, then is taken over."""
    script = ("import sys, time; from steadydancer.batch.claims import Claim; "
              "c = Claim(sys.argv[1], 1.0, 'row a'); assert c.acquire(); print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert holder.stdout.readline().strip() == "held"
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert not Claim(tmp_path, 1.0, "row a").acquire()  # just killed: its last heartbeat is recent
    time.sleep(1.3)
    taker = Claim(tmp_path, 1.0, "row a")
    assert taker.acquire() and f"pid {holder.pid}" in taker.taken_over.describe()
    taker.release()


def test_job_id_from_slurm_variables():
    assert job_id({"SLURM_ARRAY_JOB_ID": "77", "SLURM_ARRAY_TASK_ID": "4", "SLURM_JOB_ID": "81"}) == "77_4"
    assert job_id({"SLURM_JOB_ID": "81"}) == "81" and job_id({}) is None


@pytest.mark.parametrize("group, world, local, refused", [
    (4, 12, 6, True),     # 2 nodes x 6 GPUs, groups of 4: ranks 4-7 would be on both nodes
    (2, 12, 6, False), (3, 12, 6, False), (6, 12, 6, False),
    (8, 16, 4, False),    # groups of two whole nodes
    (12, 12, 6, False),   # one group: the whole run (as generate's multi-node layout)
    (4, 8, None, False),  # not torchrun
])
def test_groups_that_would_span_nodes_are_one_line(group, world, local, refused):
    if refused:
        with pytest.raises(InputError) as info:
            check_groups_within_nodes(group, world, local)
        assert "LOCAL_WORLD_SIZE" in str(info.value) and "span two nodes" in str(info.value)
    else:
        check_groups_within_nodes(group, world, local)


def test_batch_refuses_groups_across_nodes_before_any_model_loads(tmp_path, monkeypatch, capsys):
    from test_pipeline_support import tiny_checkpoint, write_inputs

    from steadydancer.cli.main import main
    from steadydancer.pipeline.i2v import DancerPipeline

    write_inputs(tmp_path / "prep", 5)
    (tmp_path / "m.csv").write_text("id,input_dir\na,prep\n")
    monkeypatch.setattr(DancerPipeline, "__init__", lambda *a, **k: pytest.fail("no model may load"))
    for name, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "12", "LOCAL_WORLD_SIZE": "6"}.items():
        monkeypatch.setenv(name, value)
    assert main(["batch", "--manifest", str(tmp_path / "m.csv"), "--out", str(tmp_path / "out"), "--ckpt_dir",
                 str(tiny_checkpoint()), "--ulysses_size", "4"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: groups of 4 processes") and "LOCAL_WORLD_SIZE" in err and "\n" not in err


def test_the_queue_skips_held_rows_and_rows_finished_elsewhere(tmp_path, caplog):
    """What a group's leader takes next: the first row nobody holds and nobody made or failed since
    its run looked at the rows; a row another worker holds is left to it (logged once)."""
    from steadydancer.batch.manifest import BatchRow
    from steadydancer.batch.runner import BatchJob, BatchRunner, row_paths, write_record

    job = BatchJob(ckpt_dir=str(tmp_path), out=tmp_path / "out", claim_timeout=60)
    rows = [BatchRow(name, input_dir=tmp_path / name) for name in ("a", "b", "c", "d")]
    for row in rows:
        row_paths(job.out, row).folder.mkdir(parents=True)
    other = Claim(row_paths(job.out, rows[0]).folder, 60, "row a")  # another worker works on a
    assert other.acquire()
    write_record(row_paths(job.out, rows[1]).record, {"status": "failed", "attempt": "old"})
    mine = BatchRunner(job, setup=None, progress=False)
    caplog.set_level(logging.INFO, logger="steadydancer")
    queue = [(rows[0], None), (rows[1], "old"), (rows[2], None), (rows[3], None)]
    assert mine._take_next(queue) == "b"  # a is held; b failed before this run began: tried again
    assert "row a: held by host" in caplog.text and mine.elsewhere == {"a": mine.elsewhere["a"]}
    mine.claim.release()
    # meanwhile another run made c: not made again
    write_record(row_paths(job.out, rows[2]).record, {"status": "done", "attempt": "theirs"})
    assert mine._take_next(queue) == "d" and mine.elsewhere["c"] == "handled by another worker meanwhile"
    assert mine._take_next(queue) is None
    mine.claim.release()
    other.release()


def test_summary_json_gives_each_rows_true_status(tmp_path):
    from steadydancer.batch.manifest import BatchRow
    from steadydancer.batch.runner import BatchJob, merge_summary, row_paths, write_record

    job = BatchJob(ckpt_dir=str(tmp_path), out=tmp_path / "out", claim_timeout=60, manifest="m.csv")
    rows = {name: BatchRow(name, input_dir=tmp_path / name) for name in ("held", "dead", "bad", "new")}
    for row in rows.values():
        row_paths(job.out, row).folder.mkdir(parents=True)
    holder = Claim(row_paths(job.out, rows["held"]).folder, 60, "row held")
    assert holder.acquire()
    write_record(row_paths(job.out, rows["held"]).record, {"status": "running", "stage": "generate"})
    write_record(row_paths(job.out, rows["dead"]).record, {"status": "running", "stage": "prepare"})
    write_record(row_paths(job.out, rows["bad"]).record, {"status": "failed", "stage": "inputs", "reason": "no poses"})
    write_record(job.out / "summary.d" / "r1.json", {"manifest": "m.csv", "done": 0})
    write_record(job.out / "summary.d" / "r2.json", {"manifest": "other.csv", "done": 3})
    summary = merge_summary(job, list(rows.values()))
    holder.release()
    status = summary["row_status"]
    assert status["held"]["status"] == "running" and f"pid {os.getpid()}" in status["held"]["by"]
    assert status["dead"] == {"status": "interrupted", "stage": "prepare"}
    assert status["bad"]["status"] == "failed" and summary["failures"] == {"bad": "inputs: no poses"}
    assert status["new"] == {"status": "pending"}
    assert summary["status"] == {"running": 1, "interrupted": 1, "failed": 1, "pending": 1}
    assert list(summary["runs"]) == ["r1"]  # only this manifest's runs
    assert json.loads((job.out / "summary.json").read_text()) == summary
    assert not (job.out / ".summary.claim").exists()
