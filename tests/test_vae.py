"""Wan 2.1 VAE: official parity cases, key layout, shapes, errors."""

from __future__ import annotations

import pytest
import torch

from conftest import parity_cases
from steadydancer.encoders.tiny import official_vae_keys
from steadydancer.encoders.vae import WanVAE
from steadydancer.errors import InputError

CASES = parity_cases("vae")


@pytest.mark.parametrize("case", CASES or [pytest.param(None, marks=pytest.mark.skip("no vae parity case"))])
def test_vae_parity(case):
    from steadydancer.parity.vae import run_case

    errors = run_case(case)
    assert set(errors) == {"encoded", "decoded"}
    assert max(errors.values()) < 1e-4, errors


@pytest.mark.parametrize("case", CASES or [pytest.param(None, marks=pytest.mark.skip("no vae parity case"))])
def test_official_key_layout_matches_the_case_file(case):
    state = torch.load(next(case.glob("*VAE*.pth")), weights_only=True)
    dim = state["encoder.conv1.weight"].shape[0]
    assert set(official_vae_keys(dim)) == set(state)


def test_missing_checkpoint_names_the_file(tmp_path):
    with pytest.raises(InputError, match="Wan2.1_VAE.pth"):
        WanVAE(tmp_path / "Wan2.1_VAE.pth")


def test_truncated_file_names_the_file(tmp_path):
    from steadydancer.encoders.tiny import write_tiny_vae

    path = write_tiny_vae(tmp_path / "Wan2.1_VAE.pth")
    state = torch.load(path, weights_only=True)
    del state["decoder.head.2.weight"]
    broken = tmp_path / "broken_VAE.pth"
    torch.save(state, broken)
    with pytest.raises(InputError, match="broken_VAE.pth"):
        WanVAE(broken)
