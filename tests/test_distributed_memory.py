"""Memory/speed flags under torchrun: a LoRA and --batch_guidance through Ulysses 2 + FSDP on 2 gloo
processes give the single-process video; what cannot combine (block swap, ...) and a LoRA that
does not fit the DiT stop with one line before the process group forms or any model loads."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from steadydancer.cli.main import main
from steadydancer.distributed.testing import run_on_gloo
from steadydancer.models.memory import MemoryOptions
from test_pipeline_support import random_pose_images, write_inputs

LORA_TARGETS = ("blocks.0.self_attn.q", "blocks.1.cross_attn.k", "blocks.1.ffn.0")
PROBE = "blocks.0.self_attn.q.weight"  # a weight the LoRA changes: checked after sharding


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(tiny checkpoint, PEFT LoRA for its DiT, prepared input folder)."""
    from steadydancer.models.loading import build_meta_dit, index_checkpoint
    from steadydancer.pipeline.tiny import write_tiny_checkpoint

    root = tmp_path_factory.mktemp("dist_memory")
    ckpt = write_tiny_checkpoint(root / "ckpt", seed=0)
    meta = build_meta_dit(ckpt, index_checkpoint(ckpt))
    g = torch.Generator().manual_seed(5)
    state = {}
    for name in LORA_TARGETS:
        out_dim, in_dim = meta.get_submodule(name).weight.shape
        state[f"diffusion_model.{name}.lora_A.weight"] = torch.randn(4, in_dim, generator=g) * 0.3
        state[f"diffusion_model.{name}.lora_B.weight"] = torch.randn(out_dim, 4, generator=g) * 0.3
    save_file(state, str(root / "lora.safetensors"))
    folder = write_inputs(root / "in", 5, ref_size=(64, 48), pose_size=(64, 48))
    return ckpt, root / "lora.safetensors", folder


def _generate_twice(pipeline) -> dict:
    """Videos at guidance 5 and 1 (the negative-text pass skipped), and the batch of every DiT call."""
    from steadydancer.pipeline.i2v import SamplingOptions

    batches: list[int] = []
    pipeline.dit().register_forward_pre_hook(lambda module, args: batches.append(args[0].shape[0]))
    ref, first, positive, negative = random_pose_images()
    out = {}
    for scale in (5.0, 1.0):
        out[scale] = pipeline.generate(ref, first, positive, negative, "a dancer", max_area=64 * 48, frame_num=5,
                                       sampling=SamplingOptions(steps=3, guide_scale=scale), seed=11, progress=False)
    out["batches"] = batches
    return out


def _worker(rank: int, world_size: int, ckpt: str, memory: MemoryOptions) -> dict:
    from steadydancer.distributed.launch import init_distributed
    from steadydancer.distributed.pipeline import DistributedDancerPipeline

    setup = init_distributed(ulysses_size=2, dit_fsdp=True)
    pipeline = DistributedDancerPipeline(ckpt, setup, memory=memory)
    result = _generate_twice(pipeline)
    weight = pipeline.dit().model.get_parameter(PROBE)  # FSDP: a DTensor holding this rank's half
    result["probe_local_rows"] = weight.to_local().shape[0]
    result["probe"] = weight.full_tensor()
    return result


def test_lora_and_batch_guidance_on_two_processes_equal_single_process(tiny):
    """Ulysses 2 + --dit_fsdp with a LoRA, --batch_guidance and --token_chunk_size: the single process's
    video, bit for bit."""
    from steadydancer.models.loading import load_dit
    from steadydancer.models.memory import load_dit_with_options
    from steadydancer.pipeline.i2v import DancerPipeline

    ckpt, lora, _ = tiny
    memory = MemoryOptions(loras=[(lora, 0.8)], batch_guidance=True, token_chunk_size=16)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each gloo process: the same reduction order
    try:
        single = _generate_twice(DancerPipeline(ckpt, device="cpu", memory=memory))
    finally:
        torch.set_num_threads(threads)
    results = run_on_gloo(_worker, 2, str(ckpt), memory)

    # guidance 5: 2 passes per step, 3 inside the pose-CFG window; guidance 1: 1 and 2
    assert single["batches"] == [2, 3, 2, 1, 2, 1]
    merged = load_dit_with_options(ckpt, "cpu", torch.float32, memory).get_parameter(PROBE)
    plain = load_dit(ckpt, device="cpu", dtype=torch.float32).get_parameter(PROBE)
    assert not torch.allclose(merged, plain, atol=1e-3)  # the LoRA changes this weight
    for rank, result in enumerate(results):
        assert result["batches"] == single["batches"], rank
        assert torch.equal(result["probe"], merged), rank  # merged before sharding
        assert result["probe_local_rows"] == merged.shape[0] // 2, rank  # and sharded
    for scale in (5.0, 1.0):
        assert torch.equal(results[0][scale], single[scale]), scale
        assert results[1][scale] is None  # only rank 0 decodes
    assert not torch.equal(single[5.0], single[1.0])


# -- the command under a torchrun environment (no processes started) ---------------------------------

def _argv(tiny, *flags: str) -> list[str]:
    ckpt, _, folder = tiny
    return ["generate", "--ckpt_dir", str(ckpt), "--input_dir", str(folder), "--frame_num", "5", "--size", "832*480",
            "--sample_steps", "2", "--prompt", "dance", "--save_file", str(folder.parent / "out.mp4"), *flags]


def _one_error_line(capsys, argv) -> str:
    assert main(argv) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.fixture
def torchrun_env(monkeypatch):
    """As torchrun --nproc_per_node=2 sets it for rank 0; joining a process group or loading a model fails."""
    import steadydancer.distributed.cli as dcli
    import steadydancer.models.loading as loading

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")

    def fail(*args, **kwargs):
        raise AssertionError("the process group was joined or a model loaded before the flags were checked")

    monkeypatch.setattr(dcli, "init_distributed", fail)
    monkeypatch.setattr(loading, "load_dit", fail)
    return monkeypatch


def test_refusals_under_torchrun_are_one_line_before_anything_loads(tiny, torchrun_env, capsys, tmp_path):
    line = _one_error_line(capsys, _argv(tiny, "--ulysses_size", "2", "--blocks_on_gpu", "1"))
    assert line.startswith("error: --blocks_on_gpu: block swap is a one-GPU mode")
    line = _one_error_line(capsys, _argv(tiny, "--ulysses_size", "2", "--compile"))
    assert line.startswith("error: --compile with --ulysses_size/--ring_size is not supported")
    line = _one_error_line(capsys, _argv(tiny, "--dit_fsdp", "--dit_dtype", "fp8"))
    assert line.startswith("error: --dit_fsdp with FP8 or GGUF weights is not supported")
    bad = tmp_path / "other_model.safetensors"  # a LoRA for the 14B model: wrong shapes for the tiny DiT
    save_file({"diffusion_model.blocks.0.self_attn.q.lora_A.weight": torch.randn(4, 5120),
               "diffusion_model.blocks.0.self_attn.q.lora_B.weight": torch.randn(5120, 4)}, str(bad))
    line = _one_error_line(capsys, _argv(tiny, "--ulysses_size", "2", "--dit_fsdp", "--lora", f"{bad}:0.5"))
    assert "other_model.safetensors" in line and "blocks.0.self_attn.q" in line
    if not torch.cuda.is_available():
        line = _one_error_line(capsys, _argv(tiny, "--ulysses_size", "2", "--dit_dtype", "fp8", "--fp8_matmul"))
        assert line.startswith("error: --fp8_matmul: FP8 matmuls need")
    assert not (tiny[2].parent / "out.mp4").exists()


def test_memory_flags_reach_the_distributed_pipeline(tiny, torchrun_env):
    import steadydancer.distributed.cli as dcli
    import steadydancer.distributed.pipeline as dpipeline

    class Setup:
        def broadcast_object(self, value):
            return value

        def shutdown(self):
            pass

    seen = {}
    torchrun_env.setattr(dcli, "init_distributed", lambda *a, **k: seen.update(init=(a, k)) or Setup())
    torchrun_env.setattr(dpipeline, "generate_video_distributed", lambda setup, **kw: seen.update(kw))
    _, lora, _ = tiny
    assert main(_argv(tiny, "--ulysses_size", "2", "--dit_fsdp", "--lora", f"{lora}:0.8", "--batch_guidance",
                      "--sample_guide_scale", "1")) == 0
    memory = seen["memory"]
    assert memory.loras == [(lora, 0.8)] and memory.batch_guidance
    assert seen["sampling"].guide_scale == 1.0
    assert seen["init"][0][:3] == (2, 1, True)  # ulysses 2, ring 1, dit_fsdp


def test_other_ranks_wait_before_printing_the_same_error(tiny, torchrun_env, capsys):
    """Rank 0 prints at once; rank 1 first waits (torchrun stops it meanwhile when rank 0 failed too)."""
    import steadydancer.distributed.cli as dcli

    waits = []
    torchrun_env.setattr(dcli.time, "sleep", waits.append)
    argv = _argv(tiny, "--ulysses_size", "2", "--blocks_on_gpu", "1")
    assert "--blocks_on_gpu" in _one_error_line(capsys, argv) and waits == []
    torchrun_env.setenv("RANK", "1")
    torchrun_env.setenv("LOCAL_RANK", "1")
    assert "--blocks_on_gpu" in _one_error_line(capsys, argv)  # still printed if nobody stops it
    assert waits == [dcli.QUIET_RANK_WAIT_S]
