"""Multi-process flags are refused with one clear line; torchrun's environment is read; the seed
comes from rank 0; the whole generation pipeline on 2 gloo processes (Ulysses, FSDP DiT and T5)
gives the single-process video."""

from __future__ import annotations

import random

import pytest
import torch

from steadydancer.distributed.launch import TorchrunEnv, check_parallel_flags, init_distributed
from steadydancer.distributed.testing import run_on_gloo
from steadydancer.errors import InputError
from test_pipeline_support import random_pose_images


@pytest.mark.parametrize("kwargs, needle", [
    (dict(dit_fsdp=True, world_size=1), "--dit_fsdp needs several processes"),
    (dict(t5_fsdp=True, world_size=1), "torchrun --nproc_per_node"),
    (dict(ulysses_size=2, world_size=1), "--ulysses_size 2 needs several processes"),
    (dict(ulysses_size=2, ring_size=2, world_size=2), "must equal the number of processes (2)"),
    (dict(ulysses_size=4, world_size=2), "= 4 must equal"),
    (dict(ulysses_size=4, world_size=4, num_heads=6), "must divide the DiT's 6 attention heads"),
    (dict(ring_size=0, world_size=2), "--ring_size: expected a whole number >= 1"),
])
def test_wrong_combinations_stop_with_one_line(kwargs, needle):
    with pytest.raises(InputError) as info:
        check_parallel_flags(**kwargs)
    message = str(info.value)
    assert needle in message and "\n" not in message


def test_good_combinations_pass():
    check_parallel_flags(world_size=1)
    check_parallel_flags(ulysses_size=2, ring_size=2, world_size=4, num_heads=40)
    check_parallel_flags(ring_size=8, world_size=8, num_heads=40)  # ring needs no head split
    check_parallel_flags(dit_fsdp=True, t5_fsdp=True, world_size=2)


def test_single_process_setup_without_torchrun(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert TorchrunEnv.read() == TorchrunEnv(0, 1, 0)
    setup = init_distributed()
    assert setup.is_main and not setup.is_distributed and not setup.sequence_parallel
    assert setup.broadcast_seed(5) == 5
    assert setup.broadcast_seed(-1) >= 0
    with pytest.raises(InputError, match="--dit_fsdp"):
        init_distributed(dit_fsdp=True)


def _generate(pipeline) -> torch.Tensor:
    from steadydancer.pipeline.i2v import SamplingOptions

    ref, first, positive, negative = random_pose_images()
    sampling = SamplingOptions(steps=3)
    return pipeline.generate(ref, first, positive, negative, "a dancer", max_area=64 * 48, frame_num=5,
                             sampling=sampling, seed=11, progress=False)


def _pipeline_worker(rank: int, world_size: int, ckpt: str, config: dict) -> dict:
    from steadydancer.distributed.pipeline import DistributedDancerPipeline

    setup = init_distributed(**config)
    random.seed(rank)  # ranks would draw different random seeds
    seeds = (setup.broadcast_seed(-1), setup.broadcast_seed(100 + rank))
    return {"seeds": seeds, "video": _generate(DistributedDancerPipeline(ckpt, setup))}


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    from steadydancer.pipeline.tiny import write_tiny_checkpoint

    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "ckpt")


def test_two_process_pipeline_equals_single_process_and_seed_comes_from_rank_zero(tiny_checkpoint):
    """Ulysses 2 + FSDP DiT + FSDP T5 (ring and odd token counts: test_sequence_parallel_dit)."""
    from steadydancer.pipeline.i2v import DancerPipeline

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each gloo process: same reduction order, so bit-identical results
    try:
        single = _generate(DancerPipeline(tiny_checkpoint, device="cpu"))
    finally:
        torch.set_num_threads(threads)
    config = dict(ulysses_size=2, dit_fsdp=True, t5_fsdp=True)
    results = run_on_gloo(_pipeline_worker, 2, str(tiny_checkpoint), config)
    assert results[0]["seeds"] == results[1]["seeds"] and results[0]["seeds"][1] == 100
    assert results[0]["video"].shape == single.shape
    assert torch.equal(results[0]["video"], single)
    assert results[1]["video"] is None  # only rank 0 decodes, as the official code


def _generate_cli(argv: list[str], capsys) -> tuple[int, str]:
    from steadydancer.cli.main import run_command

    code = run_command("steadydancer.cli.generate", argv, "generate_dancer.py", "generate")
    return code, capsys.readouterr().err.strip()


def test_generate_command_refuses_bad_multi_gpu_flags(tiny_checkpoint, monkeypatch, capsys, tmp_path):
    base = ["--ckpt_dir", str(tiny_checkpoint), "--image", str(tmp_path / "ref.png"), "--prompt", "x"]
    code, err = _generate_cli(base + ["--dit_fsdp"], capsys)  # no torchrun
    assert code == 2 and err.startswith("error: --dit_fsdp needs several processes") and "\n" not in err
    monkeypatch.setenv("WORLD_SIZE", "2")  # as under torchrun --nproc_per_node=2
    code, err = _generate_cli(base + ["--ulysses_size", "2", "--ring_size", "2"], capsys)
    assert code == 2 and "= 4 must equal the number of processes (2)" in err and "\n" not in err
    code, err = _generate_cli(base + ["--ulysses_size", "2", "--offload_model", "True"], capsys)
    assert code == 2 and "--offload_model True: not available with several processes" in err
    monkeypatch.setenv("WORLD_SIZE", "4")
    code, err = _generate_cli(base + ["--ulysses_size", "4"], capsys)  # the tiny DiT has 2 heads
    assert code == 2 and "--ulysses_size 4 must divide the DiT's 2 attention heads" in err
