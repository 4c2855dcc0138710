"""Shared test fixtures: where ../shared is, and skipping cleanly when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("STEADYDANCER_SHARED", REPO.parent / "shared"))
PARITY = SHARED / "parity"
SAMPLES = SHARED / "samples"


def parity_cases(kind: str | None = None) -> list[Path]:
    """Case folders under shared/parity (of one kind when given); empty when absent."""
    if not PARITY.is_dir():
        return []
    from steadydancer.parity import detect_kind

    cases = []
    for case in sorted(p for p in PARITY.iterdir() if p.is_dir()):
        try:
            case_kind = detect_kind(case)
        except ValueError:
            continue
        if kind is None or case_kind == kind:
            cases.append(case)
    return cases


@pytest.fixture
def samples_dir() -> Path:
    if not SAMPLES.is_dir():
        pytest.skip(f"real samples not found at {SAMPLES}")
    return SAMPLES
