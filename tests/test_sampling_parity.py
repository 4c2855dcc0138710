"""DiT forward + timesteps + whole DC-CFG loop against the official outputs (shared/parity dit cases)."""

from __future__ import annotations

import pytest

from conftest import parity_cases

CASES = parity_cases("dit")


@pytest.mark.skipif(not CASES, reason="no dit parity cases (../shared/parity absent)")
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_dit_case(case):
    pytest.importorskip("steadydancer.models.loading", reason="the DiT has not landed yet")
    from steadydancer.parity import dit

    errors = dit.run_case(case)
    assert set(errors) == {"forward_out", "timesteps", "sample_out"}
    assert errors["timesteps"] == 0.0
    for name, err in errors.items():
        assert err < 1e-4, f"{case.name} {name}: relative error {err:.2e}"
