"""FSDP-sharded DiT (alone and with Ulysses sequence parallelism) and FSDP-sharded T5 on 2 gloo
processes give the single-process outputs of the parity cases (float32)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from conftest import parity_cases
from steadydancer.distributed.testing import run_on_gloo

DIT = parity_cases("dit")
T5 = parity_cases("t5")


def _dit_worker(rank: int, world_size: int, case_dir: str) -> dict:
    from steadydancer.distributed.fsdp import shard_dit
    from steadydancer.distributed.sequence_parallel import sequence_parallel_dit
    from steadydancer.models.loading import load_dit
    from steadydancer.parity.dit import case_conditions

    io = load_file(f"{case_dir}/io.safetensors")
    cond = case_conditions(io)[0]
    model = load_dit(f"{case_dir}/ckpt", device="cpu", dtype=torch.float32)
    with torch.no_grad():
        single = model(io["noise"][None], io["t"], **cond.as_kwargs())[0]
        full_block_numel = sum(p.numel() for p in model.blocks[0].parameters())
        shard_dit(model, "cpu")
        local_block_numel = sum(p.to_local().numel() for p in model.blocks[0].parameters())
        fsdp = model(io["noise"][None], io["t"], **cond.as_kwargs())[0]
        both = sequence_parallel_dit(model, ulysses_size=2, ring_size=1, backend="torch")(
            io["noise"][None], io["t"], **cond.as_kwargs())[0]
    return {"single": single, "fsdp": fsdp, "fsdp+sp": both,
            "sharded_fraction": local_block_numel / full_block_numel}


def _t5_worker(rank: int, world_size: int, case_dir: str) -> torch.Tensor:
    from steadydancer.distributed.fsdp import shard_text_encoder
    from steadydancer.encoders.t5 import TextEncoder

    io = load_file(f"{case_dir}/io.safetensors")
    encoder = TextEncoder(f"{case_dir}/models_t5_umt5-xxl-enc-bf16.pth", None, device="cpu", dtype=torch.float32)
    shard_text_encoder(encoder, "cpu")
    return encoder.encode_ids(io["ids"], io["mask"])


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.skipif(not DIT, reason="no dit parity case in ../shared/parity")
def test_fsdp_dit_and_fsdp_with_ulysses_equal_single_process():
    for result in run_on_gloo(_dit_worker, 2, str(DIT[0])):
        assert result["sharded_fraction"] <= 0.51  # each rank keeps about half of a block
        assert _rel(result["fsdp"], result["single"]) < 1e-6
        assert _rel(result["fsdp+sp"], result["single"]) < 1e-5


@pytest.mark.skipif(not T5, reason="no t5 parity case in ../shared/parity")
def test_fsdp_t5_equals_official_hidden_states():
    reference = load_file(str(T5[0] / "io.safetensors"))["hidden"]
    for hidden in run_on_gloo(_t5_worker, 2, str(T5[0])):
        assert _rel(hidden, reference) < 1e-4
