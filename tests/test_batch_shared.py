"""Several runs on one --out and one manifest at the same time (a resubmitted job, a SLURM array, two
nodes): every row is made exactly once between them, no run ends in a traceback, and summary.json
lists every row with its true status. Two single-process runs, and two torchrun runs of 2 processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from test_pipeline_support import tiny_checkpoint, write_inputs

from steadydancer.distributed.testing import free_port

HERE = Path(__file__).resolve().parent
SMALL = str(HERE / "small_area_steadydancer.py")  # steadydancer at a 64x96 area (seconds per video)
FAST = ["--sample_steps", "2", "--frame_num", "5", "--size", "832*480", "--base_seed", "7"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(HERE.parent), str(HERE)])}


def _manifest(tmp_path: Path, prepared: int, raw: tuple[Path, Path] | None = None) -> Path:
    """``prepared`` prepared rows p0.., an optional raw row, and a row whose folder is missing."""
    lines = ["id,input_dir,image,video"]
    for i in range(prepared):
        write_inputs(tmp_path / f"prep{i}", 5, seed=i)
        lines.append(f"p{i},prep{i},,")
    if raw is not None:
        lines.append(f"raw,,{raw[0]},{raw[1]}")
    lines.append("missing,no_such_folder,,")
    path = tmp_path / "m.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def _start(cmd: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=cwd, env=ENV)


def _check_shared_out(out: Path, outputs: list[str], good: list[str]) -> None:
    for text in outputs:  # torchrun's own report of a non-zero exit (ChildFailedError) is not ours
        assert "Traceback" not in text or "ChildFailedError" in text, text[-3000:]
        assert not [line for line in text.splitlines() if line.strip().startswith("File ") and "steadydancer" in line
                    and "distributed/run.py" not in line], text[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert {k: v["status"] for k, v in summary["row_status"].items()} == {**{r: "done" for r in good},
                                                                         "missing": "failed"}
    assert summary["status"] == {"done": len(good), "failed": 1}
    runs = list(summary["runs"].values())
    assert len(runs) == 2
    made = [row for run in runs for row in run["made_by_group"]]
    assert sorted(made) == sorted(good)  # each row made by exactly one run
    assert sum(run["done"] for run in runs) == len(good)  # and once within each run
    assert sum(run["failed"] for run in runs) == 1  # the bad row tried once
    for row in good:
        record = json.loads((out / row / "record.json").read_text())
        assert record["status"] == "done" and record["run"] in summary["runs"]
    assert not [p for p in out.rglob("*") if ".partial" in p.name or ".claim" in p.name]


def test_two_runs_on_one_out_make_every_row_once(tmp_path, samples_dir):
    manifest = _manifest(tmp_path, 3, (samples_dir / "images" / "00001.png",
                                       samples_dir / "videos" / "00001" / "video.mp4"))
    out = tmp_path / "out"
    cmd = [sys.executable, SMALL, "batch", "--manifest", str(manifest), "--out", str(out), "--ckpt_dir",
           str(tiny_checkpoint()), "--device", "cpu", "--max_frame", "8", *FAST]
    runs = [_start(cmd, tmp_path) for _ in range(2)]
    outputs = [run.communicate(timeout=900)[0] for run in runs]
    assert sorted(run.returncode for run in runs) == [0, 1], outputs  # one run met the bad row
    _check_shared_out(out, outputs, ["p0", "p1", "p2", "raw"])
    made_lines = [line for text in outputs for line in text.splitlines() if " done in " in line]
    assert sorted(line.split()[line.split().index("row") + 1] for line in made_lines) == ["p0", "p1", "p2", "raw"]


def test_two_torchrun_runs_of_two_processes_on_one_out(tmp_path):
    manifest = _manifest(tmp_path, 4)
    out = tmp_path / "out"
    args = ["batch", "--manifest", str(manifest), "--out", str(out), "--ckpt_dir", str(tiny_checkpoint()), *FAST]
    runs = [_start([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                    f"--master_port={free_port()}", SMALL, *args], tmp_path) for _ in range(2)]
    outputs = [run.communicate(timeout=900)[0] for run in runs]
    assert sorted(run.returncode for run in runs) == [0, 1], [o[-3000:] for o in outputs]
    _check_shared_out(out, outputs, ["p0", "p1", "p2", "p3"])
