"""--token_chunk_size: a block's per-token work over chunks of tokens gives the same output and a lower peak."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO
from memory_helpers import tiny_conditions, tiny_dit, tiny_latents
from steadydancer.errors import InputError
from steadydancer.models.loading import save_dit_checkpoint
from steadydancer.models.memory import MemoryOptions, load_dit_with_options


@pytest.mark.parametrize("batch, dtype", [(1, torch.float32), (2, torch.float32), (1, torch.bfloat16)])
def test_token_chunking_is_exact_on_the_dit(tmp_path, batch: int, dtype: torch.dtype) -> None:
    save_dit_checkpoint(tiny_dit(dim=64, ffn_dim=256), tmp_path)
    kwargs = tiny_conditions(frames=3, h=16, w=24, batch=batch).as_kwargs()
    latents, t = tiny_latents(frames=3, h=16, w=24, batch=batch), torch.full((batch,), 500.0)   # 288 tokens
    autocast = torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32)
    with torch.no_grad(), autocast:
        want = load_dit_with_options(tmp_path, "cpu", dtype, MemoryOptions())(latents, t, **kwargs)
        for chunk in (64, 100, 288, 4096):   # even, ragged last chunk, exactly all, more than all
            model = load_dit_with_options(tmp_path, "cpu", dtype, MemoryOptions(token_chunk_size=chunk))
            assert all(block.token_chunk_size == chunk for block in model.blocks)
            assert torch.equal(model(latents, t, **kwargs), want), chunk


def test_chunk_size_below_one_is_one_line() -> None:
    import argparse

    from steadydancer.models.memory import add_memory_arguments, memory_options_from_args

    parser = argparse.ArgumentParser()
    add_memory_arguments(parser)
    with pytest.raises(InputError, match=r"^--token_chunk_size: expected a number of tokens >= 1, got 0$"):
        memory_options_from_args(parser.parse_args(["--token_chunk_size", "0"]))
    assert memory_options_from_args(parser.parse_args(["--token_chunk_size", "512"])).token_chunk_size == 512


# One block's forward at 16384 tokens: the FFN's hidden activation alone is 16384 x 1024 float32 = 64 MiB
# (twice: before and after the GELU); in chunks of 1024 tokens it is 4 MiB, and the other per-token
# temporaries shrink the same way.
CHILD = r"""
import sys, torch
from steadydancer.models.dit import DiTBlock, rope_frequencies

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024

torch.manual_seed(0)
block = DiTBlock(dim=64, ffn_dim=1024, num_heads=2, text_len=8).eval().requires_grad_(False)
block.token_chunk_size = int(sys.argv[1]) or None
x, e = torch.randn(1, 16384, 64), torch.randn(1, 6, 64)
freqs = rope_frequencies((16, 32, 32), 32, "cpu")
context = torch.randn(1, 8 + 257, 64)
with torch.no_grad():
    block(x[:, :64], e, freqs[:64], context)       # warm-up: kernels, thread pool
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = status("VmRSS")
    block(x, e, freqs, context)
print(status("VmHWM") - before)
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc peak-RSS reset")
def test_chunking_lowers_the_block_peak() -> None:
    def peak(chunk: int) -> int:
        out = subprocess.run([sys.executable, "-c", CHILD, str(chunk)], capture_output=True, text=True,
                             timeout=300, cwd=REPO, env={**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"})
        assert out.returncode == 0, out.stderr
        return int(out.stdout)

    whole, chunked = peak(0), peak(1024)
    saved = (whole - chunked) / 2 ** 20
    assert saved > 100, (whole / 2 ** 20, chunked / 2 ** 20)   # measured: 144 -> 22 MiB
