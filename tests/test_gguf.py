"""GGUF weights: torch dequantisers equal the gguf package's, and a Q8_0 DiT file loads and runs."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch

from memory_helpers import TINY, tiny_conditions, tiny_dit, tiny_latents
from steadydancer.errors import InputError
from steadydancer.models.dit import SteadyDancerDiT
from steadydancer.models.quant.gguf import GGUFLinear, dequantize, load_gguf, save_gguf

# byte offsets of the float16 scale fields per block, set to sane values in the random blocks
F16_FIELDS = {"Q8_0": [0], "Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2],
              "Q2_K": [80, 82], "Q3_K": [108], "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208]}


@pytest.mark.parametrize("name", sorted(F16_FIELDS))
def test_torch_dequantiser_matches_gguf_package(name: str) -> None:
    qtype = gguf.GGMLQuantizationType[name]
    block_size, type_size = gguf.GGML_QUANT_SIZES[qtype]
    rng = np.random.default_rng(0)
    blocks = rng.integers(0, 256, size=(6, type_size), dtype=np.uint8)
    for offset in F16_FIELDS[name]:
        blocks[:, offset:offset + 2] = rng.uniform(-0.1, 0.1, 6).astype(np.float16).view(np.uint8).reshape(6, 2)
    want = gguf.quants.dequantize(blocks, qtype).reshape(-1)
    got = dequantize(torch.from_numpy(blocks), name, (6 * block_size,))
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-6, atol=1e-7)


def rel(a, b) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.mark.parametrize("qtype,tolerance", [("Q8_0", 0.02), ("Q4_0", 0.2)])
def test_dit_gguf_file_round_trip(tmp_path, qtype: str, tolerance: float) -> None:
    model = tiny_dit()
    path = tmp_path / f"dit-{qtype}.gguf"
    save_gguf(model, path, qtype)
    with torch.device("meta"):
        fresh = SteadyDancerDiT(**TINY)
    load_gguf(fresh, path, dtype=torch.float32)
    assert isinstance(fresh.blocks[2].ffn[0], GGUFLinear)
    assert fresh.blocks[2].ffn[0].weight.dtype == torch.uint8
    assert type(fresh.text_embedding[0]) is torch.nn.Linear
    # non-block tensors (the 5-D patch embedding included) come back exactly (stored in F32)
    assert torch.equal(fresh.patch_embedding.weight, model.patch_embedding.weight)
    args = (tiny_latents(), torch.tensor([400.0]))
    kwargs = tiny_conditions().as_kwargs()
    err = rel(fresh(*args, **kwargs), model(*args, **kwargs))
    assert 0 < err < tolerance


def test_gguf_that_does_not_fit_is_one_clear_line(tmp_path) -> None:
    path = tmp_path / "other.gguf"
    save_gguf(tiny_dit(num_layers=2), path)
    with pytest.raises(InputError, match=r"--gguf .*other\.gguf: not a SteadyDancer DiT for this model"):
        load_gguf(tiny_dit(), path)
    not_gguf = tmp_path / "x.gguf"
    not_gguf.write_bytes(b"hello world, not a gguf file at all")
    with pytest.raises(InputError, match="not a readable GGUF file"):
        load_gguf(tiny_dit(), not_gguf)
