"""Schedulers and the DC-CFG loop on a fake model (no checkpoint needed)."""

from __future__ import annotations

import pytest
import torch

from steadydancer.sampling import (DiTConditions, make_scheduler, pose_cfg_active, pose_cfg_steps,
                                   sample_dc_cfg)


def _conditions(text: torch.Tensor, pose: torch.Tensor) -> DiTConditions:
    f, h, w = pose.shape[1:]
    return DiTConditions(text_context=text[None], clip_image=torch.zeros(1, 257, 1280),
                         clip_pose=torch.zeros(1, 257, 1280), image_cond=torch.zeros(1, 20, f, h, w),
                         pose_latents=pose[None], ref_image=torch.zeros(1, 36, 1, h, w),
                         ref_pose=torch.zeros(1, 36, 1, h, w))


class RecordingModel:
    """Smooth fake flow model that records which condition set each call used."""

    def __init__(self, pos: torch.Tensor, neg: torch.Tensor, ctx: torch.Tensor, ctx_neg: torch.Tensor):
        self.pos, self.neg, self.ctx, self.ctx_neg = pos, neg, ctx, ctx_neg
        self.calls: list[tuple[int, str]] = []

    def __call__(self, latents, timestep, **kw):
        assert latents.shape[0] == 1 and timestep.shape == (1,)
        pose, text = kw["pose_latents"][0], kw["text_context"][0]
        kind = ("neg_pose" if torch.equal(pose, self.neg) else
                "neg_text" if torch.equal(text, self.ctx_neg) else "cond")
        self.calls.append((int(timestep[0]), kind))
        return torch.tanh(0.6 * latents + 0.3 * kw["pose_latents"] + text.mean()
                          + timestep.float()[:, None, None, None, None] / 1000)


@pytest.fixture
def problem():
    g = torch.Generator().manual_seed(3)
    noise = torch.randn(16, 2, 4, 6, generator=g)
    ctx, ctx_neg = torch.randn(5, 8, generator=g), torch.randn(9, 8, generator=g)
    pos, neg = torch.randn(16, 2, 4, 6, generator=g), torch.randn(16, 2, 4, 6, generator=g)
    model = RecordingModel(pos, neg, ctx, ctx_neg)
    conds = (_conditions(ctx, pos), _conditions(ctx_neg, pos), _conditions(ctx, neg))
    return model, noise, conds


def test_timesteps_match_official_values():
    # values the official Wan schedulers give (shared/parity dit and dit_dpm cases)
    _, unipc = make_scheduler("unipc", 6, 5.0)
    assert unipc.tolist() == [999, 961, 908, 833, 713, 499]
    _, dpm = make_scheduler("dpm++", 7, 5.0)
    assert dpm.tolist() == [1000, 967, 925, 869, 789, 666, 454]
    assert unipc.dtype == torch.int64


def test_unknown_solver_rejected():
    with pytest.raises(ValueError, match="unknown solver"):
        make_scheduler("heun", 4, 5.0)  # euler and lcm are few-step solvers now


def test_pose_cfg_window_is_strict():
    assert pose_cfg_steps(6, 0.1, 0.4) == [1, 2]
    assert pose_cfg_steps(40, 0.1, 0.4) == list(range(5, 16))  # 4/40 == 0.1 and 16/40 == 0.4 excluded
    assert not pose_cfg_active(4, 40, 0.1, 0.4) and not pose_cfg_active(16, 40, 0.1, 0.4)
    assert pose_cfg_steps(10, 0.0, 1.0) == list(range(1, 10))


@pytest.mark.parametrize("solver,steps", [("unipc", 6), ("dpm++", 7)])
def test_three_pass_bookkeeping(problem, solver, steps):
    model, noise, (cond, neg_text, neg_pose) = problem
    seen = []
    out = sample_dc_cfg(model, noise, cond, neg_text, neg_pose, solver, steps, 5.0, 5.0, 1.5, 0.1, 0.4,
                        progress=False, on_step=lambda i, t, n: seen.append((i, n)))
    assert out.shape == noise.shape and torch.isfinite(out).all()
    window = pose_cfg_steps(steps, 0.1, 0.4)
    assert [i for i, n in seen if n == 3] == window
    assert len(model.calls) == 2 * steps + len(window)
    _, timesteps = make_scheduler(solver, steps, 5.0)
    pose_calls = [t for t, kind in model.calls if kind == "neg_pose"]
    assert pose_calls == [int(timesteps[i]) for i in window]
    assert sum(kind == "neg_text" for _, kind in model.calls) == steps


def test_guidance_scales_act(problem):
    model, noise, (cond, neg_text, neg_pose) = problem
    base = sample_dc_cfg(model, noise, cond, neg_text, neg_pose, "unipc", 5, 5.0, 1.0, 0.0, 0.1, 0.4,
                         progress=False)
    # guide_scale 1 and no pose guidance == plain conditional sampling
    only_cond = sample_dc_cfg(model, noise, cond, cond, cond, "unipc", 5, 5.0, 3.0, 0.0, 0.1, 0.4,
                              progress=False)
    assert torch.allclose(base, only_cond, atol=1e-6)
    with_pose = sample_dc_cfg(model, noise, cond, neg_text, neg_pose, "unipc", 5, 5.0, 1.0, 2.0, 0.1, 0.4,
                              progress=False)
    assert (with_pose - base).abs().max() > 1e-3
    # an empty window makes the pose scale irrelevant
    no_window = sample_dc_cfg(model, noise, cond, neg_text, neg_pose, "unipc", 5, 5.0, 1.0, 2.0, 0.5, 0.5,
                              progress=False)
    assert torch.equal(no_window, base)


@pytest.mark.parametrize("steps,shift", [(6, 5.0), (40, 3.0)])
def test_scheduler_sigmas_are_wans(steps, shift):
    from steadydancer.sampling.schedulers import dpm_sigmas, unipc_sigmas

    unipc, _ = make_scheduler("unipc", steps, shift)
    assert torch.allclose(unipc.sigmas[:-1].double(), torch.from_numpy(unipc_sigmas(steps, shift)), atol=1e-7)
    assert unipc.sigmas[-1] == 0
    dpm, timesteps = make_scheduler("dpm++", steps, shift)
    assert dpm.sigmas[0] == 1.0 and timesteps[0] == 1000 and dpm.sigmas[-1] == 0
    assert torch.allclose(dpm.sigmas[:-1].double(), torch.from_numpy(dpm_sigmas(steps, shift)), atol=1e-7)


def test_guidance_is_combined_in_the_model_dtype_and_stepped_in_float32():
    """The official loop combines bf16 predictions in bf16; only the solver step is float32."""
    seen = []

    class HalfModel:
        def __call__(self, latents, timestep, **kw):
            out = torch.tanh(0.5 * latents + 0.2 * kw["pose_latents"]).to(torch.bfloat16)
            return out

    def spy(model, latent, timestep, conditions, out_device):
        from steadydancer.sampling.dc_cfg import run_passes
        preds = run_passes(model, latent, timestep, conditions, out_device)
        seen.extend(p.dtype for p in preds)
        return preds

    f, h, w = 2, 4, 6
    pose = torch.zeros(16, f, h, w)
    cond = _conditions(torch.zeros(3, 8), pose)
    out = sample_dc_cfg(HalfModel(), torch.randn(16, f, h, w), cond, cond, cond, steps=4, progress=False,
                        passes=spy)
    assert seen and all(d == torch.bfloat16 for d in seen)
    assert out.dtype == torch.float32
