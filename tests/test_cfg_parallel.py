"""CFG parallelism (--cfg_parallel): the guidance passes of a step on separate ranks give the
single-process video. Pass dealing and exchange on gloo; the generate command under torchrun
(2 processes --cfg_parallel, 4 processes --cfg_parallel --ulysses_size 2) against one process."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from test_pipeline_support import random_pose_images, tiny_checkpoint, write_inputs

from steadydancer.distributed.cfg_parallel import CfgParallelSplit, cfg_group_ranks
from steadydancer.distributed.launch import check_parallel_flags
from steadydancer.distributed.testing import free_port, run_on_gloo
from steadydancer.errors import InputError
from steadydancer.pose.video import read_video
from steadydancer.sampling.batched import GuidancePasses

HERE = Path(__file__).resolve().parent
SMALL = str(HERE / "small_area_steadydancer.py")  # steadydancer at a 64x96 area (seconds per video)
# 5 steps: steps 1 and 2 fall inside the default pose window (0.1, 0.4), so 3-pass steps are covered
FAST = ["--sample_steps", "5", "--frame_num", "5", "--size", "832*480", "--base_seed", "7"]


def test_layout_is_xdit_order_sequence_parallel_innermost_then_cfg_then_data():
    assert cfg_group_ranks(2, 2, 1) == [[0, 1]]
    assert cfg_group_ranks(4, 2, 2) == [[0, 2], [1, 3]]            # SP blocks [0,1] and [2,3]
    assert cfg_group_ranks(8, 2, 2) == [[0, 2], [1, 3], [4, 6], [5, 7]]  # two data-parallel groups of 4
    assert cfg_group_ranks(6, 3, 1) == [[0, 1, 2], [3, 4, 5]]
    # pass j to rank j mod degree: cond + neg_pose on rank 0, neg_text on rank 1
    assert CfgParallelSplit(2, 0).assign([0, 1, 2]) == [0, 2] and CfgParallelSplit(2, 1).assign([0, 1, 2]) == [1]
    assert CfgParallelSplit(2, 1).assign([0, 2]) == [2]            # guide scale 1: neg_text is not run


@pytest.mark.parametrize("kwargs, needle", [
    (dict(cfg_parallel=2, world_size=1), "--cfg_parallel 2 needs several processes"),
    (dict(cfg_parallel=2, world_size=4), "--cfg_parallel 2 = 2 must equal the number of processes (4)"),
    (dict(cfg_parallel=2, ulysses_size=2, world_size=2), "= 4 must equal the number of processes (2)"),
    (dict(cfg_parallel=4, world_size=4), "--cfg_parallel: expected 2 or 3"),
    (dict(cfg_parallel=2, dit_fsdp=True, world_size=2), "--dit_fsdp with --cfg_parallel shards the DiT within"),
    (dict(cfg_parallel=2, ulysses_size=2, world_size=6, data_parallel=True), "= 4 processes per group must divide"),
])
def test_bad_cfg_parallel_layouts_stop_with_one_line(kwargs, needle):
    with pytest.raises(InputError) as info:
        check_parallel_flags(**kwargs)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_good_cfg_parallel_layouts_pass():
    check_parallel_flags(cfg_parallel=2, world_size=2)
    check_parallel_flags(cfg_parallel=3, world_size=3)
    check_parallel_flags(cfg_parallel=2, ulysses_size=2, world_size=4, dit_fsdp=True, t5_fsdp=True, num_heads=40)
    check_parallel_flags(cfg_parallel=2, ulysses_size=2, world_size=8, data_parallel=True)


def _fake_model(latents, timestep, text_context, **_):
    """A pass-dependent prediction: the text context's mean (cond vs neg_text) shifts the output."""
    return (latents * 0.5 + text_context.mean() + timestep.view(-1, 1, 1, 1, 1) / 1000).to(_fake_model.dtype)


def _exchange_worker(rank: int, world_size: int, dtype: torch.dtype, skip: bool) -> dict:
    from steadydancer.sampling.conditions import DiTConditions

    torch.manual_seed(0)
    latent = torch.randn(4, 2, 3, 3)
    sets = [DiTConditions(text_context=torch.full((1, 2, 4), float(k)), clip_image=torch.zeros(1), clip_pose=torch.zeros(1),
                          image_cond=torch.zeros(1), pose_latents=torch.zeros(1), ref_image=torch.zeros(1),
                          ref_pose=torch.zeros(1)) for k in range(3)]
    _fake_model.dtype = dtype
    calls = []

    def model(latents, timestep, **kw):
        calls.append(float(kw["text_context"].mean()))
        return _fake_model(latents, timestep, **kw)

    split = CfgParallelSplit(world_size, rank, None)
    passes = GuidancePasses(skip_negative_text=skip, split=split)
    got = passes(model, latent, torch.tensor([500.0]), sets, torch.device("cpu"))
    want = GuidancePasses(skip_negative_text=skip)(_fake_model, latent, torch.tensor([500.0]), sets, torch.device("cpu"))
    return {"equal": all(torch.equal(a, b) and a.dtype == b.dtype for a, b in zip(got, want)), "calls": calls}


@pytest.mark.parametrize("dtype, skip", [(torch.float32, False), (torch.bfloat16, True)])
def test_each_rank_runs_its_passes_and_gets_every_prediction_bit_for_bit(dtype, skip):
    results = run_on_gloo(_exchange_worker, 2, dtype, skip)
    assert all(r["equal"] for r in results)
    if skip:   # guide scale 1: cond on rank 0, neg_pose on rank 1, neg_text nowhere
        assert results[0]["calls"] == [0.0] and results[1]["calls"] == [2.0]
    else:      # cond + neg_pose on rank 0, neg_text on rank 1: three forwards cost two
        assert results[0]["calls"] == [0.0, 2.0] and results[1]["calls"] == [1.0]


def _pipeline_worker(rank: int, world_size: int, ckpt: str, memory_kwargs: dict, long_video: bool) -> torch.Tensor | None:
    from steadydancer.distributed.launch import init_distributed
    from steadydancer.distributed.pipeline import DistributedDancerPipeline

    setup = init_distributed(cfg_parallel=world_size)
    with _cache_lines() as lines:
        video = _generate(DistributedDancerPipeline(ckpt, setup, memory=_memory(memory_kwargs)), long_video)
    return video, lines


@contextmanager
def _cache_lines():
    """The step cache's summary lines logged inside the block."""
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    logger = logging.getLogger("steadydancer.models.step_cache")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _memory(kwargs: dict):
    from steadydancer.options import MemoryOptions

    return MemoryOptions(**kwargs)


def _generate(pipeline, long_video: bool) -> torch.Tensor | None:
    """5 frames in one window (the decoded video; None off the group's first rank), or 13 frames
    in context windows of 9 (the final latent, on every rank)."""
    from steadydancer.options import LongVideoOptions, SamplingOptions
    from steadydancer.pipeline.long_video import sample_context

    frames = 13 if long_video else 5
    ref, first, positive, negative = random_pose_images(frames)
    sampling = SamplingOptions(steps=5)
    if long_video:
        options = LongVideoOptions(context_frames=9, context_overlap=4)
        return sample_context(pipeline, ref, first, positive, negative, "a dancer", 64 * 48, frames, sampling,
                              options, seed=3, progress=False)
    return pipeline.generate(ref, first, positive, negative, "a dancer", max_area=64 * 48, frame_num=frames,
                             sampling=sampling, seed=3, progress=False)


@pytest.mark.parametrize("memory_kwargs, long_video, atol", [
    # batches of 2 + 1 on the two ranks against one batch of 3: the matmuls are blocked
    # differently (float rounding, ~1e-6 relative per forward, 1.7e-5 after 5 steps and the VAE)
    (dict(batch_guidance=True), False, 1e-4),
    (dict(step_cache="fbcache", cache_threshold=0.5), True, 0.0),
])
def test_two_cfg_ranks_equal_one_process(memory_kwargs, long_video, atol):
    """Batched guidance on each CFG rank; a step cache with one context per pass and window over
    context windows (fbcache at a threshold that skips): the video of one process."""
    from steadydancer.pipeline.i2v import DancerPipeline

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each gloo process
    try:
        with _cache_lines() as single_lines:
            single = _generate(DancerPipeline(tiny_checkpoint(), device="cpu", memory=_memory(memory_kwargs)),
                               long_video)
    finally:
        torch.set_num_threads(threads)
    results = run_on_gloo(_pipeline_worker, 2, str(tiny_checkpoint()), memory_kwargs, long_video)
    lines = [r[1] for r in results]
    results = [r[0] for r in results]
    # both ranks log the whole run's count (the passes of both CFG ranks), as one process does
    assert lines[0] == lines[1] == single_lines
    if "step_cache" in memory_kwargs:
        assert single_lines and not single_lines[0].startswith("step cache: 0 of"), single_lines
    if not long_video:
        assert results[1] is None  # the group's first rank alone decodes
    else:
        assert torch.equal(results[0], results[1])  # every rank stepped the sampler on the same numbers
    assert results[0].shape == single.shape
    torch.testing.assert_close(results[0], single, rtol=0, atol=atol)


def _torchrun(nproc: int, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", f"--master_port={free_port()}",
           SMALL, *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(HERE.parent), str(HERE)])}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=cwd, env=env)


def _psnr(a: Path, b: Path) -> float:
    x = np.stack(read_video(a)[0]).astype(np.float64)
    y = np.stack(read_video(b)[0]).astype(np.float64)
    assert x.shape == y.shape
    mse = np.mean((x - y) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255 ** 2 / mse))


def test_generate_under_torchrun_with_cfg_parallel_equals_one_process(tmp_path):
    """The issue's criterion: torchrun --nproc_per_node=2 ... --cfg_parallel, and --cfg_parallel
    --ulysses_size 2 on 4 processes (here also --dit_fsdp --t5_fsdp), each PSNR >= 40 dB against one
    process (gloo, tiny checkpoint)."""
    inputs = write_inputs(tmp_path / "prep", 5)
    common = ["generate", "--ckpt_dir", str(tiny_checkpoint()), "--input_dir", str(inputs), *FAST]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(HERE.parent), str(HERE)])}
    single = subprocess.run([sys.executable, SMALL, *common, "--save_file", str(tmp_path / "one.mp4"),
                             "--device", "cpu"], capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert single.returncode == 0, single.stderr[-3000:]
    two = _torchrun(2, [*common, "--save_file", str(tmp_path / "cfg2.mp4"), "--cfg_parallel"], tmp_path)
    assert two.returncode == 0, two.stderr[-3000:]
    # with FSDP: the DiT sharded within each Ulysses pair, T5 over all four
    four = _torchrun(4, [*common, "--save_file", str(tmp_path / "cfg2_sp2.mp4"), "--cfg_parallel",
                         "--ulysses_size", "2", "--dit_fsdp", "--t5_fsdp"], tmp_path)
    assert four.returncode == 0, four.stderr[-3000:]
    psnr = {name: _psnr(tmp_path / f"{name}.mp4", tmp_path / "one.mp4") for name in ("cfg2", "cfg2_sp2")}
    print("PSNR against one process:", psnr)
    assert min(psnr.values()) >= 40, psnr


def test_batch_groups_of_two_cfg_ranks(tmp_path):
    """`torchrun --nproc_per_node=4 ... batch --cfg_parallel`: two data-parallel groups of two CFG
    ranks (CFG inside, data parallel outside), each row made once as one process makes it."""
    import json

    for i in range(2):
        write_inputs(tmp_path / f"prep{i}", 5, seed=i)
    (tmp_path / "m.csv").write_text("id,input_dir\n" + "".join(f"r{i},prep{i}\n" for i in range(2)))
    common = ["batch", "--manifest", str(tmp_path / "m.csv"), "--ckpt_dir", str(tiny_checkpoint()), *FAST]
    parallel = _torchrun(4, [*common, "--out", str(tmp_path / "cfg"), "--cfg_parallel"], tmp_path)
    assert parallel.returncode == 0, parallel.stderr[-3000:]
    (run,) = json.loads((tmp_path / "cfg" / "summary.json").read_text())["runs"].values()
    assert run["groups"] == 2 and run["group_size"] == 2
    assert sorted(run["made_by_group"]) == ["r0", "r1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(HERE.parent), str(HERE)])}
    single = subprocess.run([sys.executable, SMALL, *common, "--out", str(tmp_path / "one"), "--device", "cpu"],
                            capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert single.returncode == 0, single.stderr[-3000:]
    for i in range(2):
        assert _psnr(tmp_path / "cfg" / f"r{i}" / f"r{i}.mp4", tmp_path / "one" / f"r{i}" / f"r{i}.mp4") >= 40
