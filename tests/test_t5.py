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
