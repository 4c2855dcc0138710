"""Sequence-parallel DiT on 2 gloo processes equals the single-process DiT on the parity
checkpoint (float32), for a token count that divides by 2 and one that does not; and a short
DC-CFG sampling run gives the single-process latent."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import parity_cases
from steadydancer.distributed.testing import run_on_gloo

CASES = parity_cases("dit")
pytestmark = pytest.mark.skipif(not CASES, reason="no dit parity case in ../shared/parity")


def _crop(io: dict[str, torch.Tensor], frames: int, height: int, width: int) -> dict[str, torch.Tensor]:
    """Inputs cut to a smaller latent grid (tokens (frames+2) * height/2 * width/2)."""
    out = dict(io)
    for name in ("noise", "y", "condition", "condition_neg"):
        out[name] = io[name][:, :frames, :height, :width].contiguous()
    for name in ("ref_x", "ref_c"):
        out[name] = io[name][:, :, :height, :width].contiguous()
    return out


def _worker(rank: int, world_size: int, case_dir: str, grids: list[tuple[int, int]], sample_steps: int) -> dict:
    from steadydancer.distributed.sequence_parallel import sequence_parallel_dit
    from steadydancer.models.loading import load_dit
    from steadydancer.parity.dit import case_conditions
    from steadydancer.sampling import DiTConditions, sample_dc_cfg

    io_full = load_file(f"{case_dir}/io.safetensors")
    meta = json.loads(open(f"{case_dir}/meta.json").read())
    f, h, w = io_full["noise"].shape[1:]
    # an odd token count: every grid axis odd ((F'+2) * h'/2 * w'/2)
    odd_f = f if f % 2 else f - 1
    odd_h = h if (h // 2) % 2 else h - 2
    odd_w = w if (w // 2) % 2 else w - 2
    inputs = {"full": io_full, "odd": _crop(io_full, odd_f, odd_h, odd_w)}
    model = load_dit(f"{case_dir}/ckpt", device="cpu", dtype=torch.float32)

    def sample(net, io):
        cond, neg_text, neg_pose = case_conditions(io)
        return sample_dc_cfg(net, io["noise"], cond, neg_text, neg_pose, solver=meta["solver"], steps=sample_steps,
                             shift=float(meta["shift"]), guide_scale=float(meta["guide_scale"]),
                             condition_guide_scale=float(meta["condition_guide_scale"]),
                             st_cond_cfg=float(meta["st_cond_cfg"]), end_cond_cfg=float(meta["end_cond_cfg"]),
                             progress=False)

    result: dict = {"tokens": {}}
    with torch.no_grad():
        for name, io in inputs.items():
            cond = case_conditions(io)[0]
            result[("single", name)] = model(io["noise"][None], io["t"], **cond.as_kwargs())[0]
            n, hh, ww = io["noise"].shape[1:]
            result["tokens"][name] = (n + 2) * (hh // 2) * (ww // 2)
        result[("single", "sample")] = sample(model, inputs["odd"])
        # batch of 2 (batched guidance: positive and negative-text passes in one forward)
        odd = inputs["odd"]
        pair = DiTConditions.cat(list(case_conditions(odd)[:2]))
        noise2 = odd["noise"][None].expand(2, -1, -1, -1, -1)
        result[("single", "batch2")] = model(noise2, odd["t"].expand(2), **pair.as_kwargs())
        for ulysses, ring in grids:
            sp_model = sequence_parallel_dit(model, ulysses_size=ulysses, ring_size=ring, backend="torch")
            for name, io in inputs.items():
                cond = case_conditions(io)[0]
                result[((ulysses, ring), name)] = sp_model(io["noise"][None], io["t"], **cond.as_kwargs())[0]
            result[((ulysses, ring), "sample")] = sample(sp_model, inputs["odd"])
            result[((ulysses, ring), "batch2")] = sp_model(noise2, odd["t"].expand(2), **pair.as_kwargs())
            sp_model.remove()
    return result


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def test_two_processes_forward_and_sampling_equal_single_process():
    case = CASES[0]
    results = run_on_gloo(_worker, 2, str(case), [(2, 1), (1, 2)], 3)
    tokens = results[0]["tokens"]
    assert tokens["full"] % 2 == 0, tokens
    assert tokens["odd"] % 2 == 1, tokens
    official = load_file(str(case / "io.safetensors"))["forward_out"]
    for result in results:
        assert _rel(result[("single", "full")], official) < 1e-4
        for grid in [(2, 1), (1, 2)]:
            for name in ("full", "odd", "sample", "batch2"):
                err = _rel(result[(grid, name)], result[("single", name)])
                assert err < 1e-5, (grid, name, err)
            assert result[(grid, "full")].shape == official.shape
