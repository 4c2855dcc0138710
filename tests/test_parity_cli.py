"""python -m steadydancer.parity: --dtype runs the model in a lower precision (errors then say how far
it lands from the float32 oracle), --device errors are one line."""

from __future__ import annotations

import re

import pytest

from conftest import parity_cases
from steadydancer.parity.__main__ import main

DIT_CASES = parity_cases("dit")


@pytest.mark.skipif(not DIT_CASES, reason="no dit parity case")
def test_bf16_run_reports_its_precision(capsys) -> None:
    case = DIT_CASES[0]
    assert main([str(case), "--dtype", "bf16", "--tolerance", "0.05"]) == 0
    lines = capsys.readouterr().out.splitlines()
    errors = {m.group(1): float(m.group(2)) for m in
              (re.search(r"\[dit cpu bf16\] (\w+): rel err (\S+) ok", line) for line in lines) if m}
    assert set(errors) == {"forward_out", "timesteps", "sample_out"}
    assert 1e-4 < errors["forward_out"] < 0.03          # bf16 rounding: far above float32's ~2e-7
    assert errors["timesteps"] == 0.0
    assert main([str(case), "--dtype", "bf16"]) == 1     # above the default float32 tolerance


@pytest.mark.parametrize("device, message", [("gpu0", "error: --device: expected cpu, cuda or cuda:N, got 'gpu0'"),
                                             ("cuda", "error: --device cuda: no CUDA device here")])
def test_bad_device_is_one_line(capsys, device: str, message: str) -> None:
    import torch

    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("a CUDA device is here")
    assert main(["unused_case", "--device", device]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [message]
