"""The GPU kit on the CPU: scripts/device_kit.sh builds it under the size a device run may send, and
scripts/gpu_check.sh --dry-run lists what it would run there (docs/gpu_check.md)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import torch

from conftest import PARITY, REPO

KIT_CASES = ("dit", "dit_dpm", "t5", "clip", "vae")
LIMIT_MIB = 64


def _run(script: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(REPO / "scripts" / script), *args], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHON": sys.executable, **env})


def _rehearse(tmp_path, stage: str, **env: str):
    """gpu_check.sh STAGE with DEVICE=cpu and an empty kit; asserts status 0 and the stage's three
    result files; returns the results folder."""
    (tmp_path / "kit").mkdir()
    out = tmp_path / "out"
    proc = _run("gpu_check.sh", stage, DEVICE="cpu", KIT=str(tmp_path / "kit"), RESULTS=str(out), OMP_NUM_THREADS="1",
                **env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == ["bench.jsonl", "bench.md", "device.txt"]
    return out


def _manifest_total_mib(kit) -> float:
    text = (kit / "MANIFEST.txt").read_text()
    match = re.search(r"= ([0-9.]+) MiB of 64 MiB", text)
    assert match, text
    return float(match.group(1))


def test_dry_run_lists_every_stage_and_at_most_eight_result_files():
    proc = _run("gpu_check.sh", "--dry-run", "parity", "tests", "nccl", "bench", "bench_long", "bench_cache",
                "bench_speed")
    assert proc.returncode == 0, proc.stderr
    commands = [line for line in proc.stdout.splitlines() if line.startswith("+ ")]
    text = "\n".join(commands)
    assert "-m steadydancer.parity" in text and "--device cuda --dtype bf16" in text
    assert all(f".gpu_kit/parity/{case}" in text for case in KIT_CASES)
    assert "-m pytest" in text and "tests/test_gpu_paths.py" in text
    assert "scripts/bench.py --device cuda --modes plain," in text and "--frames 161" in text and "--jsonl" in text
    assert "--frames 33 --modes magcache:0.06,fbcache:0.05" in text          # the step-cache rows
    # the speed rows: each attention kernel forced, then the VAE untiled and tiled, same result files
    speed = [line for line in commands if "attention:" in line]
    assert len(speed) == 1 and speed[0].endswith("/bench.md")
    # the kit's speed wheels go to their own folder, on the path of this stage alone
    assert "--target /tmp/steadydancer_site_speed .gpu_kit/speed_wheels/" in text
    assert speed[0].startswith("+ env PYTHONPATH=/tmp/steadydancer_site_speed:")
    assert not any("steadydancer_site_speed" in line for line in commands if "bench.py" in line and line not in speed)
    assert ("scripts/bench.py --device cuda --modes attention:sdpa,attention:sage,attention:flash3,attention:flash2,"
            "vae:plain,vae:tiled --repeats 1 --jsonl ") in speed[0]
    files = {m.group(1) for m in re.finditer(r">> \S+/(\S+)$", text, re.M)} | {"device.txt"}
    assert len(files) <= 8, files                  # a device run brings back at most 8 files


def test_bad_stage_and_missing_kit_are_one_line():
    proc = _run("gpu_check.sh", "benchmark")
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0
    assert "unknown stage" in proc.stderr
    proc = _run("gpu_check.sh", "parity", KIT="/nonexistent/kit")
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error: no kit at /nonexistent/kit")


def test_parity_stage_fails_loudly_when_a_case_is_missing(tmp_path):
    (tmp_path / "parity" / "dit").mkdir(parents=True)
    proc = _run("gpu_check.sh", "parity", KIT=str(tmp_path))
    assert proc.returncode == 2
    assert "parity case dit_dpm missing" in proc.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_without_cuda_the_check_stops_before_running_anything(tmp_path):
    proc = _run("gpu_check.sh", "tests", KIT=str(tmp_path), RESULTS=str(tmp_path / "out"))
    assert proc.returncode == 2 and "no CUDA device visible" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_kit_without_wheels_copies_the_cases_and_fits(tmp_path):
    if not all((PARITY / case).is_dir() for case in KIT_CASES):
        pytest.skip(f"parity cases not found under {PARITY}")
    kit = tmp_path / "kit"
    proc = _run("device_kit.sh", "--no-wheels", KIT=str(kit), SHARED=str(PARITY.parent))
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (kit / "parity").iterdir() if p.is_dir()) == sorted(KIT_CASES)
    assert (kit / "parity" / "dit" / "io.safetensors").is_file()
    assert _manifest_total_mib(kit) < LIMIT_MIB


def test_kit_refuses_a_missing_shared_folder(tmp_path):
    proc = _run("device_kit.sh", "--no-wheels", KIT=str(tmp_path / "kit"), SHARED=str(tmp_path / "none"))
    assert proc.returncode == 1 and "not found under" in proc.stderr
    assert not (tmp_path / "kit").exists()


def test_kit_with_wheels_builds_under_the_limit(tmp_path):
    """Downloads the diffusers wheel for Python 3.12 (skipped where PyPI is out of reach)."""
    if not all((PARITY / case).is_dir() for case in KIT_CASES):
        pytest.skip(f"parity cases not found under {PARITY}")
    kit = tmp_path / "kit"
    proc = _run("device_kit.sh", KIT=str(kit), SHARED=str(PARITY.parent))
    if proc.returncode == 3:
        pytest.skip("no access to PyPI: " + proc.stderr.strip())
    assert proc.returncode == 0, proc.stderr
    wheels = sorted(p.name for p in (kit / "wheels").iterdir())
    assert len(wheels) == 1 and wheels[0].startswith("diffusers-") and wheels[0].endswith("-py3-none-any.whl")
    # SageAttention 1 (Triton), for the bench_speed stage only
    assert sorted(p.name for p in (kit / "speed_wheels").iterdir()) == ["sageattention-1.0.6-py3-none-any.whl"]
    assert "speed wheels (bench_speed only): sageattention-1.0.6" in (kit / "MANIFEST.txt").read_text()
    assert _manifest_total_mib(kit) < LIMIT_MIB


def _fake_launchers(tmp_path):
    """`python` and `torchrun` that print their arguments, first on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("python", "torchrun"):
        (bin_dir / name).write_text(f'#!/bin/sh\necho "{name} $*"\n')
        (bin_dir / name).chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}", "CKPT_DIR": "ckpt", "INPUT_DIR": "in"}


def test_torchrun_recipe_on_one_gpu_runs_the_single_gpu_command(tmp_path):
    env = _fake_launchers(tmp_path)
    proc = _run("generate_torchrun.sh", "--frame_num", "49", NGPU="1", **env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("python generate_dancer.py") and "--frame_num 49" in proc.stdout
    assert "--dit_fsdp" not in proc.stdout and "--ulysses_size" not in proc.stdout
    proc = _run("generate_torchrun.sh", NGPU="2", **env)
    assert proc.stdout.startswith("torchrun --standalone --nproc_per_node=2") and "--ulysses_size 2" in proc.stdout


@pytest.mark.slow
def test_cpu_rehearsal_of_the_bench_stage_saves_rows_as_they_finish(tmp_path):
    """DEVICE=cpu runs the real stage (not the dry run) at a tiny shape: files, rows, status."""
    out = _rehearse(tmp_path, "bench", BENCH_MODES="block_swap:1",
                    BENCH_ARGS="--dim 32 --ffn_dim 64 --num_heads 2 --num_layers 2 --frames 5 --size 64*64")
    table = (out / "bench.md").read_text()
    assert "| block_swap:1 |" in table
    assert len((out / "bench.jsonl").read_text().splitlines()) == 2          # header + the row
    assert "stage bench:" in (out / "device.txt").read_text()


@pytest.mark.slow
def test_cpu_rehearsal_of_the_speed_stage_keeps_refused_kernels_as_rows(tmp_path):
    """bench_speed on the CPU: sage cannot run here and says so in its row; the stage still passes."""
    out = _rehearse(tmp_path, "bench_speed", SPEED_MODES="attention:sage,attention:sdpa,vae:tiled",
                    BENCH_ARGS="--dim 32 --ffn_dim 64 --num_heads 2 --num_layers 2 --frames 5 --size 64*64 "
                               "--vae_dim 4 --vae_tile 32,24")
    table = (out / "bench.md").read_text()
    assert "| attention:sage | refused: --attention sage: " in table
    assert "| attention:sdpa (rel. error vs SDPA 0.00e+00) |" in table and "| vae:tiled (5 frames 64x64" in table
    assert len((out / "bench.jsonl").read_text().splitlines()) == 4          # header + 3 rows
    assert "stage bench_speed:" in (out / "device.txt").read_text()
