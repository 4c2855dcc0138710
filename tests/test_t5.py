"""umT5 text encoder: official parity cases, prompt cleaning, file errors."""

from __future__ import annotations

import pytest
import torch

from conftest import parity_cases
from steadydancer.encoders.t5 import TextEncoder, clean_prompt, t5_arch_from_state
from steadydancer.errors import InputError

CASES = parity_cases("t5")


@pytest.mark.parametrize("case", CASES or [pytest.param(None, marks=pytest.mark.skip("no t5 parity case"))])
def test_t5_parity(case):
    from steadydancer.parity.t5 import run_case

    errors = run_case(case)
    assert set(errors) == {"hidden", "hidden_trimmed"}
    assert max(errors.values()) < 1e-4, errors


def test_clean_prompt_matches_official_whitespace_clean():
    assert clean_prompt("  a &amp;amp; b \n\t c  ") == "a & b c"
    assert clean_prompt("caf\u00c3\u00a9  dance") == "café dance"  # ftfy repairs mojibake


def test_arch_read_from_shapes(tmp_path):
    from steadydancer.encoders.tiny import write_tiny_t5

    path = write_tiny_t5(tmp_path / "t5.pth", vocab=100, dim=16, dim_ffn=40, num_heads=2, num_layers=3,
                         num_buckets=8)
    arch = t5_arch_from_state(torch.load(path, weights_only=True), path)
    assert arch == dict(vocab=100, dim=16, dim_attn=16, dim_ffn=40, num_heads=2, num_layers=3, num_buckets=8)


def test_missing_checkpoint_names_the_file(tmp_path):
    missing = tmp_path / "models_t5_umt5-xxl-enc-bf16.pth"
    with pytest.raises(InputError, match="models_t5_umt5-xxl-enc-bf16.pth"):
        TextEncoder(missing, None)


def test_wrong_file_names_the_file(tmp_path):
    bad = tmp_path / "not_t5.pth"
    torch.save({"something.weight": torch.zeros(2)}, bad)
    with pytest.raises(InputError, match="not_t5.pth"):
        TextEncoder(bad, None)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(InputError, match="garbage.pth"):
        TextEncoder(garbage, None)


def _reference_forward(state: dict, arch: dict, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The official umT5 encoder math written out plainly (float32), for long sequences."""
    import math

    def rms(x, w):
        return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))

    def buckets(length, num_buckets, max_dist=128):
        rel = torch.arange(length)[None, :] - torch.arange(length)[:, None]
        half = num_buckets // 2
        out = (rel > 0).long() * half
        rel = rel.abs()
        exact = half // 2
        large = exact + (torch.log(rel.float() / exact) / math.log(max_dist / exact) * (half - exact)).long()
        return out + torch.where(rel < exact, rel, large.clamp(max=half - 1))

    w = {k: v.float() for k, v in state.items()}
    b, n = ids.shape
    heads = arch["num_heads"]
    x = w["token_embedding.weight"][ids]
    bucket = buckets(n, arch["num_buckets"])
    for i in range(arch["num_layers"]):
        p = f"blocks.{i}."
        h = rms(x, w[p + "norm1.weight"])
        q, k, v = (h @ w[p + f"attn.{t}.weight"].T for t in "qkv")
        q, k, v = (t.view(b, n, heads, -1) for t in (q, k, v))
        bias = w[p + "pos_embedding.embedding.weight"][bucket].permute(2, 0, 1)[None]
        bias = bias.masked_fill(mask.view(b, 1, 1, n) == 0, torch.finfo(torch.float32).min)
        attn = (torch.einsum("binc,bjnc->bnij", q, k) + bias).softmax(-1)
        x = x + torch.einsum("bnij,bjnc->binc", attn, v).reshape(b, n, -1) @ w[p + "attn.o.weight"].T
        h = rms(x, w[p + "norm2.weight"])
        gate = torch.nn.functional.gelu(h @ w[p + "ffn.gate.0.weight"].T, approximate="tanh")
        x = x + ((h @ w[p + "ffn.fc1.weight"].T) * gate) @ w[p + "ffn.fc2.weight"].T
    return rms(x, w["norm.weight"])


def test_long_sequences_match_the_official_math(tmp_path):
    """Relative positions far beyond the exact buckets and beyond max_distance 128."""
    from steadydancer.encoders.tiny import write_tiny_t5

    path = write_tiny_t5(tmp_path / "t5.pth", vocab=50, dim=16, dim_ffn=24, num_heads=2, num_layers=2,
                         num_buckets=32, seed=1)
    encoder = TextEncoder(path, None, dtype=torch.float32)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 50, (2, 150), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 90:] = 0
    ours = encoder.encode_ids(ids, mask)
    ref = _reference_forward(torch.load(path, weights_only=True), encoder.arch, ids, mask)
    assert ((ours - ref).norm() / ref.norm()) < 1e-5
