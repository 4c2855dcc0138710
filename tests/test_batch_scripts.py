"""scripts/batch_node.sh and scripts/batch_slurm.sh: started from another folder with relative paths,
they keep that folder, call the installed ``steadydancer`` (or ``python -m steadydancer``), and pass a
SLURM array task's variables on (a stepped array, a one-task re-run). torchrun is a fake that logs
its arguments and folder and then runs the command as one process; OUT is a file on purpose, so each
real run ends with one line at the output check, after the flags, the manifest and the checkpoint (all
read relative to the caller's folder) were accepted, before any model loads."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from test_pipeline_support import tiny_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = {name: ROOT / "scripts" / name for name in ("batch_node.sh", "batch_slurm.sh")}

FAKE_TORCHRUN = """#!/bin/sh
# log where and how we were called, then run the command as one process (no WORLD_SIZE)
{ echo "cwd=$PWD"; for arg in "$@"; do echo "arg=$arg"; done; } > "$FAKE_TORCHRUN_LOG"
while [ $# -gt 0 ]; do
    case "$1" in
        --no-python) shift; exec "$@" ;;
        -m) exec python "$@" ;;
        *) shift ;;
    esac
done
"""


def _tool(folder: Path, name: str, text: str) -> None:
    path = folder / name
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


@pytest.fixture
def caller(tmp_path):
    """A folder away from the repository holding a manifest and its prepared folder, and a PATH with
    the fake torchrun, a python, and (``with_command``) a ``steadydancer`` command."""
    work = tmp_path / "work"
    (work / "prep").mkdir(parents=True)
    (work / "pairs.csv").write_text("id,input_dir\na,prep\n")
    (work / "ckpt").symlink_to(tiny_checkpoint())
    (work / "results").write_text("a file where OUT should be a folder")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _tool(bin_dir, "torchrun", FAKE_TORCHRUN)
    _tool(bin_dir, "python", f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp"), "PYTHONPATH": str(ROOT),
           "FAKE_TORCHRUN_LOG": str(tmp_path / "torchrun.log"), "MANIFEST": "pairs.csv", "OUT": "results",
           "CKPT_DIR": "ckpt", "NGPU": "2", "OMP_NUM_THREADS": "1"}

    def run(script: str, *args: str, with_command: bool = True, **extra: str):
        if with_command:
            _tool(bin_dir, "steadydancer", f'#!/bin/sh\nexec "{sys.executable}" -m steadydancer "$@"\n')
        else:
            (bin_dir / "steadydancer").unlink(missing_ok=True)
        result = subprocess.run(["bash", str(SCRIPTS[script]), *args], cwd=work, env={**env, **extra},
                                capture_output=True, text=True, timeout=300)
        log = (tmp_path / "torchrun.log").read_text().splitlines() if (tmp_path / "torchrun.log").exists() else []
        cwd = next((line[4:] for line in log if line.startswith("cwd=")), None)
        return result, cwd, [line[4:] for line in log if line.startswith("arg=")]

    run.work = work
    return run


def _value(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def test_node_script_keeps_the_callers_folder_and_relative_paths(caller):
    result, cwd, argv = caller("batch_node.sh")  # GROUP=1 and no extra flags: nothing empty is expanded
    assert cwd == str(caller.work)
    assert argv[:3] == ["--standalone", "--nproc_per_node=2", "--no-python"] and argv[3:5] == ["steadydancer", "batch"]
    assert (_value(argv, "--manifest"), _value(argv, "--out"), _value(argv, "--ckpt_dir")) == \
        ("pairs.csv", "results", "ckpt")
    assert "--ulysses_size" not in argv
    # the real command ran in the caller's folder: the manifest was found, the checkpoint is named there
    assert result.returncode == 2 and f"--out {caller.work / 'results'}: is a file" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert not (ROOT / "results").exists()


def test_node_script_without_the_command_uses_python_m_and_passes_groups(caller):
    result, cwd, argv = caller("batch_node.sh", "--frame_num", "9", with_command=False, GROUP="2")
    assert cwd == str(caller.work) and "-m" in argv and _value(argv, "-m") == "steadydancer"
    assert _value(argv, "--ulysses_size") == "2" and "--dit_fsdp" in argv and argv[-2:] == ["--frame_num", "9"]
    # run as one process here (the fake torchrun), a group of 2 is one line; python -m steadydancer ran
    assert result.returncode == 2 and result.stderr.startswith("error: ") and "Traceback" not in result.stderr, \
        result.stderr


def test_node_script_refuses_a_group_that_does_not_divide_the_gpus(caller):
    result, _, argv = caller("batch_node.sh", GROUP="3")
    assert result.returncode == 1 and "GROUP=3" in result.stderr and argv == []


@pytest.mark.parametrize("task, variables, shard", [
    ("stepped", {"SLURM_ARRAY_TASK_ID": "8", "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_STEP": "4",
                 "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_JOB_ID": "77"}, True),
    ("one task re-run", {"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_MIN": "2", "SLURM_ARRAY_TASK_COUNT": "1",
                         "SLURM_ARRAY_JOB_ID": "78"}, False),
])
def test_slurm_script_runs_from_the_submit_folder_with_array_variables(caller, task, variables, shard):
    extra = ["--shard", "slurm"] if shard else []
    env = {**variables, "SLURM_GPUS_ON_NODE": "4", "SLURM_SUBMIT_DIR": str(caller.work)}
    env.pop("NGPU", None)
    result, cwd, argv = caller("batch_slurm.sh", *extra, **env, NGPU="")
    assert cwd == str(caller.work), result.stderr
    assert "--nproc_per_node=4" in argv and (argv[-2:] == extra if extra else "--shard" not in argv)
    assert f"task {variables['SLURM_ARRAY_TASK_ID']}" in result.stdout
    # the shard was accepted (a stepped array's task 8 is part 2 of 4) and the run went on to the output check
    assert result.returncode == 2 and f"--out {caller.work / 'results'}: is a file" in result.stderr, result.stderr


def test_scripts_use_no_arrays():
    """bash < 4.4 (RHEL/CentOS 7: 4.2) stops on an empty array expanded under set -u; the scripts build
    their command lines with ``set --`` instead, so that no array is expanded at all."""
    for path in SCRIPTS.values():
        text = path.read_text()
        assert "set -euo pipefail" in text
        assert not re.search(r"\$\{\w+\[@\]\}", text) and not re.search(r"^\s*\w+=\(", text, re.MULTILINE), path
        assert 'cd "' not in text and "cd $" not in text, path  # the caller's folder is kept
