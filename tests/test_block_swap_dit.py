"""The memory options on the real (tiny) DiT: block swap and compile exact, FP8/LoRA wired, flags checked."""

from __future__ import annotations

import argparse

import pytest
import torch

from memory_helpers import tiny_conditions, tiny_dit, tiny_latents
from steadydancer.errors import InputError
from steadydancer.models.block_swap import BlockSwap
from steadydancer.models.loading import load_dit, save_dit_checkpoint
from steadydancer.models.memory import (MemoryOptions, add_memory_arguments, compile_blocks,
                                        load_dit_with_options, memory_options_from_args, sampler_passes)
from steadydancer.models.quant.fp8 import FP8Linear


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_dit")
    save_dit_checkpoint(tiny_dit(), folder, num_shards=2)
    return folder


def run(model) -> torch.Tensor:
    with torch.no_grad():
        return model(tiny_latents(), torch.tensor([300.0]), **tiny_conditions().as_kwargs())


def test_block_swap_on_the_dit_is_exact(ckpt) -> None:
    want = run(load_dit(ckpt, dtype=torch.float32))
    for resident in (0, 2):
        model = load_dit_with_options(ckpt, "cpu", torch.float32, MemoryOptions(blocks_on_gpu=resident))
        assert isinstance(model.block_swap, BlockSwap)
        assert torch.equal(run(model), want) and torch.equal(run(model), want)


def test_compile_of_blocks_is_exact(ckpt) -> None:
    model = load_dit(ckpt, dtype=torch.float32)
    want = run(model)
    compile_blocks(model, backend="eager")
    assert torch.equal(run(model), want)


def test_fp8_and_lora_through_the_options(ckpt, tmp_path) -> None:
    from safetensors.torch import save_file

    want = run(load_dit(ckpt, dtype=torch.float32))
    model = load_dit_with_options(ckpt, "cpu", torch.float32, MemoryOptions(dit_dtype="fp8"))
    assert isinstance(model.blocks[0].self_attn.q, FP8Linear)
    err = ((run(model) - want).norm() / want.norm()).item()
    assert 0 < err < 0.08
    lora = tmp_path / "l.safetensors"
    save_file({"diffusion_model.blocks.1.ffn.2.lora_A.weight": torch.randn(2, 64),
               "diffusion_model.blocks.1.ffn.2.lora_B.weight": torch.randn(32, 2)}, str(lora))
    model = load_dit_with_options(ckpt, "cpu", torch.float32, MemoryOptions(loras=[(lora, 0.5)], blocks_on_gpu=1))
    assert not torch.allclose(run(model), want, atol=1e-4)


def test_fp8_quantised_while_streaming_equals_quantising_the_loaded_model(ckpt) -> None:
    from steadydancer.models.quant.fp8 import quantize_model_fp8

    want = load_dit(ckpt, dtype=torch.float32)
    quantize_model_fp8(want)
    seen = []
    model = load_dit(ckpt, dtype=torch.float32, on_block_loaded=lambda block: (
        seen.append(block), quantize_model_fp8(block, under="")))
    assert [id(b) for b in seen] == [id(b) for b in model.blocks]          # each block once, all of them
    got, expected = model.state_dict(), want.state_dict()
    assert got.keys() == expected.keys()
    for name, tensor in expected.items():
        assert got[name].dtype == tensor.dtype and torch.equal(got[name].float(), tensor.float()), name
    streamed = load_dit_with_options(ckpt, "cpu", torch.float32, MemoryOptions(dit_dtype="fp8"))
    assert torch.equal(run(streamed), run(want))


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_memory_arguments(parser)
    return parser.parse_args(list(argv))


def test_flags_parse_and_refuse_in_one_line(ckpt, tmp_path) -> None:
    lora = tmp_path / "x.safetensors"
    lora.write_bytes(b"0")
    opts = memory_options_from_args(parse("--dit_dtype", "fp8", "--lora", f"{lora}:0.5", "--blocks_on_gpu", "3",
                                          "--batch_guidance"))
    assert opts.dit_dtype == "fp8" and opts.loras == [(lora, 0.5)] and opts.blocks_on_gpu == 3 and opts.batch_guidance
    with pytest.raises(InputError, match="^--fp8_matmul: needs FP8 weights"):
        memory_options_from_args(parse("--fp8_matmul"))
    with pytest.raises(InputError, match="^--gguf: file not found"):
        memory_options_from_args(parse("--gguf", str(tmp_path / "none.gguf")))
    with pytest.raises(InputError, match="^--blocks_on_gpu: expected a whole number from 0 to 3"):
        load_dit_with_options(ckpt, "cpu", torch.float32, MemoryOptions(blocks_on_gpu=4))
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="^--fp8_matmul: FP8 matmuls need"):
            load_dit_with_options(ckpt, "cpu", torch.float32, MemoryOptions(dit_dtype="fp8", fp8_matmul=True))


def test_sampler_passes_skip_negative_text_only_at_guidance_one() -> None:
    calls = []
    model = lambda latents, t, **kw: calls.append(latents.shape[0]) or latents  # noqa: E731
    sets = [tiny_conditions(), tiny_conditions(), tiny_conditions()]
    latent, t = tiny_latents()[0], torch.tensor([1.0])
    sampler_passes(None, 5.0)(model, latent, t, sets, torch.device("cpu"))
    sampler_passes(MemoryOptions(batch_guidance=True), 1.0)(model, latent, t, sets, torch.device("cpu"))
    assert calls == [1, 1, 1, 2]


def test_run_time_lora_factors_follow_the_compute_dtype_under_block_swap(ckpt, tmp_path) -> None:
    """Block swap loads the DiT into host memory: the LoRA factors of its FP8 layers must still be
    the compute dtype (bf16), not float32."""
    from safetensors.torch import save_file

    lora = tmp_path / "l.safetensors"
    save_file({"diffusion_model.blocks.1.ffn.2.lora_A.weight": torch.randn(2, 64),
               "diffusion_model.blocks.1.ffn.2.lora_B.weight": torch.randn(32, 2)}, str(lora))
    model = load_dit_with_options(ckpt, "cpu", torch.bfloat16, MemoryOptions(
        dit_dtype="fp8", loras=[(lora, 0.5)], blocks_on_gpu=1))
    layer = model.blocks[1].ffn[2]
    assert isinstance(layer, FP8Linear)
    assert layer.lora_down.dtype == layer.lora_up.dtype == torch.bfloat16
