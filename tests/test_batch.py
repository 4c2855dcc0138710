"""`steadydancer batch` and `steadydancer manifest`: manifests, shards, a batch with good, raw and
broken rows (one process and under torchrun), resuming, groups of sequence-parallel processes."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_pipeline_support import tiny_checkpoint, write_inputs

from steadydancer.batch.manifest import make_manifest_rows, parse_shard, read_manifest, shard_rows, write_manifest
from steadydancer.distributed.testing import free_port
from steadydancer.errors import InputError
from steadydancer.pose.video import read_video

HERE = Path(__file__).resolve().parent
SMALL = str(HERE / "small_area_steadydancer.py")  # steadydancer at a 64x96 area (seconds per video)
FAST = ["--sample_steps", "2", "--frame_num", "5", "--size", "832*480", "--base_seed", "7"]


def _manifest(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# -- manifest, shards ----------------------------------------------------------------------------

def test_manifest_csv_and_json_lines(tmp_path):
    (tmp_path / "sub").mkdir()
    csv_rows = read_manifest(_manifest(tmp_path / "sub" / "m.csv",
                                       "id,input_dir,image,video,prompt,seed,frame_num\n"
                                       "a,prep/a,,,,3,9\n"
                                       "b,,/abs/i.png,v.mp4,\"a dancer, smiling\",,\n\n"))
    assert [r.id for r in csv_rows] == ["a", "b"]
    assert csv_rows[0].input_dir == tmp_path / "sub" / "prep" / "a" and csv_rows[0].needs_prepare is False
    assert (csv_rows[0].seed, csv_rows[0].frame_num) == (3, 9)
    assert csv_rows[1].image == Path("/abs/i.png") and csv_rows[1].video == tmp_path / "sub" / "v.mp4"
    assert csv_rows[1].prompt == "a dancer, smiling" and csv_rows[1].needs_prepare
    json_rows = read_manifest(_manifest(tmp_path / "m.jsonl", '{"id": "x", "image": "i.png", "video": "v.mp4"}\n'
                                                             '{"id": "y", "input_dir": "/p", "seed": 5}\n'))
    assert [(r.id, r.seed) for r in json_rows] == [("x", None), ("y", 5)]


@pytest.mark.parametrize("text, words", [
    ("id,image\na,i.png\n", ["line 2", "needs input_dir, or image and video"]),
    ("id,input_dir\na,p\na,q\n", ["id a on lines 2 and 3", "unique"]),
    ("id,input_dir,colour\na,p,red\n", ["unknown column", "colour"]),
    ("id,input_dir\na/b,p\n", ["id 'a/b'", "output folder"]),
    ("id,input_dir,frame_num\na,p,8\n", ["frame_num 8", "4n+1"]),
    ("id,input_dir,seed\na,p,x\n", ["seed 'x'"]),
    ("id,input_dir,image,video\na,p,i.png,v.mp4\n", ["one or the other"]),
    ("image,video\ni.png,v.mp4\n", ["first line must name the columns"]),
    ('{"id": "a", "input_dir": "p"\n', ["line 1", "not a JSON object"]),
    ("id,input_dir\n", ["no rows"]),
    ("id,input_dir\nok,p\nsummary.json,p\n", ["line 3", "'summary.json' is reserved"]),
    ("id,input_dir\nSummary.d,p\n", ["line 2", "is reserved"]),
    ("id,input_dir\nok,p\nOK,p\n", ["id ok and id OK on lines 2 and 3", "without case"]),
    ("id,input_dir\n" + "x" * 201 + ",p\n", ["line 2", "201 characters is too long", "at most 200"]),
])
def test_bad_manifests_are_one_line_naming_the_place(tmp_path, text, words):
    path = _manifest(tmp_path / ("m.jsonl" if text.startswith("{") else "m.csv"), text)
    with pytest.raises(InputError) as info:
        read_manifest(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    for word in words:
        assert word in message, message


def test_shards_take_every_row_exactly_once():
    rows = list(range(11))
    parts = [shard_rows(rows, i, 4) for i in range(4)]
    assert sorted(r for part in parts for r in part) == rows


def test_shard_flag_and_slurm_array_variables():
    assert parse_shard("2/5", {}) == (2, 5)
    assert parse_shard(None, {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "4"}) is None  # the queue
    assert parse_shard("slurm", {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "4"}) == (3, 4)
    assert parse_shard("slurm", {"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_COUNT": "4",
                                 "SLURM_ARRAY_TASK_MIN": "1"}) == (3, 4)
    # --array=0-12:4: tasks 0, 4, 8, 12 are parts 0..3 of 4
    stepped = {"SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_STEP": "4"}
    assert [parse_shard("slurm", {**stepped, "SLURM_ARRAY_TASK_ID": str(t)}) for t in (0, 4, 8, 12)] == \
        [(0, 4), (1, 4), (2, 4), (3, 4)]
    # sbatch --array=2 (one task re-run): part 0 of 1, the whole manifest (the claims keep it safe)
    assert parse_shard("slurm", {"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "1",
                                 "SLURM_ARRAY_TASK_MIN": "2"}) == (0, 1)
    for bad, word in (("4/4", "0 <= I < N"), ("1of2", "expected I/N"), ("0/0", "does not exist")):
        with pytest.raises(InputError, match=word):
            parse_shard(bad, {})
    with pytest.raises(InputError, match="not a SLURM job array"):
        parse_shard("slurm", {})
    with pytest.raises(InputError, match="does not exist"):
        parse_shard("slurm", {"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_COUNT": "4"})


def test_manifest_command_cross_product_and_given_pairs(samples_dir, tmp_path, capsys):
    from steadydancer.cli.main import main

    out = tmp_path / "all.csv"
    assert main(["manifest", "--images", str(samples_dir / "images"), "--videos", str(samples_dir / "videos"),
                 "--out", str(out)]) == 0
    rows = read_manifest(out)
    assert [r.id for r in rows] == ["00001__00001", "00001__00002", "00002__00001", "00002__00002"]
    assert rows[1].image == samples_dir.resolve() / "images" / "00001.png"
    assert rows[1].video == samples_dir.resolve() / "videos" / "00002" / "video.mp4"
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("image,video\n00002,00001\n")
    write_manifest(make_manifest_rows(samples_dir / "images", samples_dir / "videos", str(pairs)), tmp_path / "p.jsonl")
    assert [r.id for r in read_manifest(tmp_path / "p.jsonl")] == ["00002__00001"]
    pairs.write_text("00003,00001\n")
    assert main(["manifest", "--images", str(samples_dir / "images"), "--videos", str(samples_dir / "videos"),
                 "--pairs", str(pairs), "--out", str(tmp_path / "x.csv")]) == 2
    assert "no image '00003'" in capsys.readouterr().err


# -- a whole batch -------------------------------------------------------------------------------

def _batch_rows(tmp_path: Path, samples_dir: Path) -> Path:
    """A manifest: two prepared folders, a raw pair (pose stage in the batch), a broken row."""
    write_inputs(tmp_path / "prep_a", 5)
    write_inputs(tmp_path / "prep_b", 9, seed=1)
    (tmp_path / "broken.png").write_bytes(b"not an image")
    return _manifest(tmp_path / "m.csv", "id,input_dir,image,video,seed,frame_num\n"
                     "a,prep_a,,,,\n"
                     "b,prep_b,,,11,9\n"
                     f"raw,,{samples_dir}/images/00001.png,{samples_dir}/videos/00001/video.mp4,,\n"
                     f"broken,,broken.png,{samples_dir}/videos/00001/video.mp4,,\n")


def _frames(path: Path) -> int:
    return len(read_video(path)[0])


def _mtimes(out: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in out.glob("*/*.mp4")}


def test_batch_one_process_good_raw_and_broken_rows_then_resume(tmp_path, samples_dir, monkeypatch, capsys, caplog):
    from steadydancer.cli.main import main
    from steadydancer.pipeline import run

    caplog.set_level(logging.INFO, logger="steadydancer")

    monkeypatch.setattr(run, "max_area_for", lambda size: 64 * 96)
    manifest = _batch_rows(tmp_path, samples_dir)
    out = tmp_path / "out"
    (out / "a").mkdir(parents=True)
    (out / "a" / "notes.txt").write_text("mine")  # a user's file in a row folder survives
    argv = ["batch", "--manifest", str(manifest), "--out", str(out), "--ckpt_dir", str(tiny_checkpoint()),
            "--device", "cpu", "--max_frame", "8", *FAST]
    assert main(argv) == 1  # a row failed
    captured = capsys.readouterr()
    assert "3 made, 0 skipped (done before), 1 failed of 4 rows" in captured.out
    assert "failed broken: prepare: " in captured.out and "broken.png" in captured.out
    assert {p: _frames(out / p / f"{p}.mp4") for p in ("a", "b", "raw")} == {"a": 5, "b": 9, "raw": 5}
    assert (out / "a" / "notes.txt").read_text() == "mine"
    assert (out / "raw" / "inputs" / "keypoints.json").is_file()  # the raw pair's pose stage
    records = {p: json.loads((out / p / "record.json").read_text()) for p in ("a", "b", "raw", "broken")}
    assert {p: r["status"] for p, r in records.items()} == {"a": "done", "b": "done", "raw": "done",
                                                             "broken": "failed"}
    assert records["b"]["seed"] == 11 and records["a"]["seed"] == 7 and records["b"]["frames"] == 9
    assert records["broken"]["stage"] == "prepare" and "broken.png" in records["broken"]["reason"]
    assert records["a"]["settings"]["sampling"]["steps"] == 2 and "torch" in records["a"]["versions"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == {"done": 3, "failed": 1} and summary["rows"] == 4
    assert {k: v["status"] for k, v in summary["row_status"].items()} == {"a": "done", "b": "done", "raw": "done",
                                                                         "broken": "failed"}
    assert summary["failures"]["broken"].startswith("prepare: ")
    (run,) = summary["runs"].values()
    assert (run["done"], run["skipped"], run["failed"]) == (3, 0, 1) and list(run["model_load_s"]) == ["0"]
    # seconds per pair: generation only (model loading and the raw row's pose stage apart)
    generate_s = [records[p]["generate_s"] for p in ("a", "b", "raw")]
    assert run["seconds_per_pair"] == pytest.approx(sum(generate_s) / 3, abs=0.01)
    assert records["raw"]["prepare_s"] > 0 and run["pose_stage_s"] == pytest.approx(records["raw"]["prepare_s"])
    assert records["a"]["inputs"]["prompt.txt"] is not None and records["raw"]["inputs"]["video"][0] > 0
    assert records["a"]["row"]["input_dir"] == str((tmp_path / "prep_a").resolve())
    assert not [p for p in out.rglob("*") if ".partial" in p.name or ".claim" in p.name]

    before = _mtimes(out)
    assert main(argv) == 1  # the broken row is tried again and fails again
    assert "0 made, 3 skipped (done before), 1 failed" in capsys.readouterr().out
    assert _mtimes(out) == before  # finished rows untouched
    assert len(json.loads((out / "summary.json").read_text())["runs"]) == 2  # both runs' own summaries

    # an edited prompt.txt of a prepared folder: that row is made again, and the log says why
    (tmp_path / "prep_b" / "prompt.txt").write_text("a different prompt")
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert "1 made, 2 skipped" in captured.out
    assert "row b: to be made again (its inputs changed: prompt.txt)" in caplog.text
    assert json.loads((out / "b" / "record.json").read_text())["prompt"] == "a different prompt"

    # other settings: the finished rows are made again, not passed off as done
    argv[argv.index("--sample_steps") + 1] = "1"
    (tmp_path / "m2.csv").write_text("id,input_dir\na,prep_a\n")
    argv[argv.index("--manifest") + 1] = str(tmp_path / "m2.csv")
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "1 made, 0 skipped" in captured.out and "the settings changed: sampling.steps" in caplog.text
    assert json.loads((out / "a" / "record.json").read_text())["settings"]["sampling"]["steps"] == 1


def test_batch_checks_every_output_before_work(tmp_path, monkeypatch, capsys):
    from steadydancer.cli.main import main
    from steadydancer.pipeline.i2v import DancerPipeline

    write_inputs(tmp_path / "prep", 5)
    manifest = _manifest(tmp_path / "m.csv", "id,input_dir\na,prep\nb,prep\n")
    base = ["batch", "--manifest", str(manifest), "--ckpt_dir", str(tiny_checkpoint()), "--device", "cpu", *FAST]
    monkeypatch.setattr(DancerPipeline, "__init__", lambda *a, **k: pytest.fail("no model may load"))

    (tmp_path / "file").write_text("x")
    assert main([*base, "--out", str(tmp_path / "file")]) == 2
    assert "is a file" in capsys.readouterr().err

    out = tmp_path / "out"
    (out / "b").mkdir(parents=True)
    (out / "b" / "b.mp4").mkdir()
    assert main([*base, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --out") and "b.mp4" in err and "\n" not in err

    read_only = tmp_path / "ro"
    read_only.mkdir()
    real_access = os.access  # root may write anywhere: fake a read-only folder
    monkeypatch.setattr(os, "access", lambda p, mode, *a, **k: Path(p) != read_only and real_access(p, mode))
    assert main([*base, "--out", str(read_only / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot write in" in err and str(read_only) in err
    assert not (read_only / "out").exists()

    for bad_id in ("summary.json", "x" * 245):  # a reserved name; an id whose temporary mp4 name passes 255 bytes
        (tmp_path / "bad.csv").write_text(f"id,input_dir\na,prep\n{bad_id},prep\n")
        assert main([*base, "--manifest", str(tmp_path / "bad.csv"), "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: --manifest {tmp_path / 'bad.csv'} line 3: id") and "\n" not in err, err

    for flag in ("--image", "--save_file", "--input_dir"):
        assert main([*base, "--out", str(tmp_path / "o2"), flag, "x"]) == 2
        assert "the manifest gives each row's inputs" in capsys.readouterr().err


# -- several processes ---------------------------------------------------------------------------

def _torchrun(nproc: int, args: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={free_port()}",
           SMALL, *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(HERE.parent), str(HERE)])}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env)


def test_torchrun_two_processes_share_the_rows_and_resume(tmp_path, samples_dir):
    manifest = _batch_rows(tmp_path, samples_dir)
    out = tmp_path / "out"
    args = ["batch", "--manifest", str(manifest), "--out", str(out), "--ckpt_dir", str(tiny_checkpoint()),
            "--max_frame", "8", *FAST]
    result = _torchrun(2, args, tmp_path)
    assert result.returncode != 0, result.stderr[-3000:]
    assert "3 made, 0 skipped (done before), 1 failed of 4 rows" in result.stdout, result.stderr[-3000:]
    assert {p: _frames(out / p / f"{p}.mp4") for p in ("a", "b", "raw")} == {"a": 5, "b": 9, "raw": 5}
    summary = json.loads((out / "summary.json").read_text())
    (run,) = summary["runs"].values()
    assert run["processes"] == 2 and run["groups"] == 2
    assert sorted(run["made_by_group"]) == ["a", "b", "raw"]  # each row once, by whichever group was free
    assert json.loads((out / "broken" / "record.json").read_text())["status"] == "failed"
    before = _mtimes(out)
    again = _torchrun(2, args, tmp_path)
    assert "0 made, 3 skipped (done before), 1 failed" in again.stdout, again.stderr[-3000:]
    assert _mtimes(out) == before


def test_groups_of_two_sequence_parallel_processes_equal_one_process(tmp_path):
    """4 processes, --ulysses_size 2: two groups of two, each row made once, as one process makes it."""
    for i in range(4):
        write_inputs(tmp_path / f"prep{i}", 5, seed=i)
    manifest = _manifest(tmp_path / "m.csv", "id,input_dir\n" + "".join(f"r{i},prep{i}\n" for i in range(4)))
    common = ["batch", "--manifest", str(manifest), "--ckpt_dir", str(tiny_checkpoint()), *FAST]
    parallel = _torchrun(4, [*common, "--out", str(tmp_path / "sp"), "--ulysses_size", "2"], tmp_path)
    assert parallel.returncode == 0, parallel.stderr[-3000:]
    (run,) = json.loads((tmp_path / "sp" / "summary.json").read_text())["runs"].values()
    assert run["groups"] == 2 and run["group_size"] == 2
    assert sorted(run["made_by_group"]) == ["r0", "r1", "r2", "r3"] and set(run["made_by_group"].values()) <= {0, 1}
    assert {json.loads((tmp_path / "sp" / f"r{i}" / "record.json").read_text())["processes"] for i in range(4)} == {2}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the thread count of each torchrun process
    single = subprocess.run([sys.executable, SMALL, *common, "--out", str(tmp_path / "one"), "--device", "cpu"],
                            capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert single.returncode == 0, single.stderr[-3000:]
    for i in range(4):
        a = np.stack(read_video(tmp_path / "sp" / f"r{i}" / f"r{i}.mp4")[0]).astype(np.float64)
        b = np.stack(read_video(tmp_path / "one" / f"r{i}" / f"r{i}.mp4")[0]).astype(np.float64)
        mse = np.mean((a - b) ** 2)
        psnr = float("inf") if mse == 0 else 10 * np.log10(255 ** 2 / mse)
        assert a.shape == b.shape and psnr >= 40, (i, psnr)


def test_a_killed_batch_redoes_only_the_interrupted_row(tmp_path):
    for i in range(3):
        write_inputs(tmp_path / f"prep{i}", 9, seed=i)
    manifest = _manifest(tmp_path / "m.csv", "id,input_dir\n" + "".join(f"r{i},prep{i}\n" for i in range(3)))
    out = tmp_path / "out"
    cmd = [sys.executable, SMALL, "batch", "--manifest", str(manifest), "--out", str(out),
           "--ckpt_dir", str(tiny_checkpoint()), "--device", "cpu", *FAST, "--frame_num", "9", "--claim_timeout", "2"]
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path)

    def status(row: str) -> str | None:
        try:
            return json.loads((out / row / "record.json").read_text())["status"]
        except (OSError, ValueError, KeyError):
            return None

    deadline = time.monotonic() + 300
    while not (status("r0") == "done" and status("r1") == "running"):
        assert process.poll() is None and time.monotonic() < deadline, "the batch ended before it could be killed"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)  # no cleanup at all, as a node failure
    process.wait()
    assert not (out / "r1" / "r1.mp4").exists()  # nothing that looks complete
    done_before = (out / "r0" / "r0.mp4").stat().st_mtime_ns
    assert (out / "r1" / ".claim").is_file()  # the dead worker's claim stays ...
    time.sleep(2.5)  # ... until its heartbeat is older than --claim_timeout
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "row r1: to be made again (was running)" in again.stdout
    assert f"row r1: taking over the claim of host {socket.gethostname()} pid {process.pid}" in again.stdout
    assert "2 made, 1 skipped (done before), 0 failed of 3 rows" in again.stdout
    assert (out / "r0" / "r0.mp4").stat().st_mtime_ns == done_before
    assert [_frames(out / f"r{i}" / f"r{i}.mp4") for i in range(3)] == [9, 9, 9]
    assert not [p for p in out.rglob("*") if ".partial" in p.name or ".claim" in p.name]
    assert json.loads((out / "summary.json").read_text())["status"] == {"done": 3}


def test_a_finished_row_counts_as_done_only_with_the_same_settings_and_inputs(tmp_path):
    from steadydancer.batch.manifest import BatchRow
    from steadydancer.batch.runner import BatchJob, input_fingerprint, row_paths, row_state, write_record
    from steadydancer.pipeline.i2v import SamplingOptions

    write_inputs(tmp_path / "prep", 5)
    job = BatchJob(ckpt_dir=str(tmp_path), out=tmp_path / "out", sampling=SamplingOptions(
        solver="euler", steps=2, timesteps=(1000.0, 500.0)), prepare={"max_frame": 300})
    row = BatchRow("a", input_dir=tmp_path / "prep")
    paths = row_paths(job.out, row)
    paths.folder.mkdir(parents=True)
    paths.mp4.write_bytes(b"video")
    write_record(paths.record, {"status": "done", "row": row.as_json(), "settings": job.settings(row),
                                "inputs": input_fingerprint(row), "mp4_bytes": 5})
    assert row_state(job, row) == ("done", "")  # read back from JSON: the step tuple compares equal
    job.prepare = {"max_frame": 100}  # pose-stage flags do not concern a prepared folder
    assert row_state(job, row) == ("done", "")
    job.sampling = SamplingOptions(solver="euler", steps=2, timesteps=(1000.0, 250.0))
    assert row_state(job, row) == ("pending", "the settings changed: sampling.timesteps")
    job.sampling = SamplingOptions(solver="euler", steps=2, timesteps=(1000.0, 500.0))
    frame = tmp_path / "prep" / "positive" / "0003.jpg"
    os.utime(frame, ns=(frame.stat().st_atime_ns, frame.stat().st_mtime_ns + 10**9))  # a redrawn pose frame
    assert row_state(job, row) == ("pending", "its inputs changed: positive/.sha1")
    paths.mp4.write_bytes(b"other video")
    assert row_state(job, row) == ("pending", "its mp4 is missing or changed")
