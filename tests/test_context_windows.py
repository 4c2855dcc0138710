"""Context-window math (plans, fusion weights, FreeNoise), the windowed DC-CFG loop, and the
few-step (euler/lcm) schedules: no checkpoint needed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from steadydancer.sampling import DiTConditions, sample_dc_cfg
from steadydancer.sampling.context_windows import (apply_freenoise, freenoise_order, fusion_weights,
                                                   latent_overlap, latent_window, ordered_halving,
                                                   sample_dc_cfg_windowed, static_windows, uniform_offsets,
                                                   uniform_windows, window_count, window_plan)
from steadydancer.sampling.schedulers import (FewStepFlowScheduler, dpm_sigmas, few_step_sigmas, lcm_noise_seed,
                                              make_scheduler)

PLANS = [(18, 9, 4), (21, 21 - 1, 5), (40, 9, 2), (81, 21, 4), (22, 9, 4), (10, 3, 1)]


def test_window_sizes_in_latent_frames():
    assert latent_window(33) == 9 and latent_window(81) == 21
    assert latent_overlap(16) == 4 and latent_overlap(1) == 1 and latent_overlap(5) == 2


def _overlaps(starts, window):
    return [a + window - b for a, b in zip(starts, starts[1:])]


def test_static_plan_is_evenly_spaced_with_the_fewest_windows():
    # 161 frames in 81-frame windows (41 latent frames, windows of 21, overlap >= 4): 3 windows
    assert static_windows(41, 21, 4) == [0, 10, 20] and _overlaps([0, 10, 20], 21) == [11, 11]
    assert static_windows(18, 9, 4) == [0, 5, 9]  # 69 frames, 33-frame windows, 16 overlap
    assert static_windows(9, 9, 4) == [0] and window_count(9, 9, 4) == 1
    for frames, window, overlap in PLANS:
        starts = static_windows(frames, window, overlap)
        assert starts[0] == 0 and starts[-1] + window == frames
        overlaps = _overlaps(starts, window)
        assert min(overlaps) >= overlap and max(overlaps) - min(overlaps) <= 1, (frames, starts)
        # the fewest windows: one less could not keep the overlap
        assert (len(starts) - 2) * (window - overlap) < frames - window


def test_uniform_plan_moves_its_seams_from_step_to_step():
    assert [ordered_halving(i) for i in range(4)] == [0.0, 0.5, 0.25, 0.75]
    assert uniform_offsets(41, 21, 4) == (7, 7)
    plans = [uniform_windows(step, 41, 21, 4) for step in range(40)]
    assert plans[0] == static_windows(41, 21, 4)
    assert sorted({p[1] for p in plans}) == list(range(3, 18))  # offsets -7 .. +7
    for frames, window, overlap in PLANS + [(41, 21, 4)]:
        for step in range(16):
            starts = uniform_windows(step, frames, window, overlap)
            assert len(starts) == len(static_windows(frames, window, overlap))
            assert starts[0] == 0 and starts[-1] + window == frames
            assert all(b > a for a, b in zip(starts, starts[1:])) and min(_overlaps(starts, window) or [overlap]) >= overlap
    # no slack (W - O divides F - W): uniform is the static plan
    assert {tuple(uniform_windows(s, 19, 9, 4)) for s in range(8)} == {tuple(static_windows(19, 9, 4))}


@pytest.mark.parametrize("fuse", ["linear", "pyramid"])
@pytest.mark.parametrize("schedule", ["static", "uniform"])
def test_fusion_weights_sum_to_one_on_every_frame(fuse, schedule):
    for frames, window, overlap in PLANS:
        plan = window_plan(schedule, frames, window, overlap)
        for step in range(5):
            starts = plan(step)
            weights = fusion_weights(starts, window, frames, fuse)
            assert weights.shape == (len(starts), window)
            # every latent but the first of a window starting after frame 0 counts
            assert (weights[:, 1:] > 0).all() and weights[0, 0] == 1 and (weights[1:, 0] == 0).all()
            total = torch.zeros(frames)
            for k, start in enumerate(starts):
                total[start:start + window] += weights[k]
            torch.testing.assert_close(total, torch.ones(frames), rtol=0, atol=1e-6)


def test_linear_fusion_ramps_linearly_over_the_overlap():
    # 14 latent frames, windows of 9 overlapping by 4: starts 0 and 5, overlap frames 5..8
    starts = static_windows(14, 9, 4)
    assert starts == [0, 5]
    weights = fusion_weights(starts, 9, 14, "linear")
    ramp = torch.tensor([0, 1, 2, 3]) / 4  # kijai's linspace(0, 1, L): the one-frame first latent gets 0
    torch.testing.assert_close(weights[1, :4], ramp)
    torch.testing.assert_close(weights[0, 5:], 1 - ramp)
    assert torch.equal(weights[0, :5], torch.ones(5)) and torch.equal(weights[1, 4:], torch.ones(5))
    # a middle window ramps up and down
    middle = fusion_weights([0, 5, 10], 9, 19, "linear")[1]
    torch.testing.assert_close(middle, torch.tensor([0, 1, 2, 3, 4, 4, 3, 2, 1]) / 4)


def test_pyramid_fusion_peaks_in_the_window_middle():
    weights = fusion_weights([0, 5, 10], 9, 19, "pyramid")
    middle = weights[1]
    assert middle.argmax() == 4 and middle[0] < middle[2] < middle[4]


def test_freenoise_later_windows_are_permutations_of_earlier_frames():
    window, overlap, frames = 9, 4, 30
    noise = torch.randn(16, frames, 3, 2, generator=torch.Generator().manual_seed(0))
    mixed = apply_freenoise(noise, window, overlap, seed=5)
    order = freenoise_order(frames, window, overlap, torch.Generator().manual_seed(5))
    assert torch.equal(mixed[:, :window], noise[:, :window])  # the first window keeps its own noise
    stride = window - overlap
    for start in range(0, frames - window, stride):
        place = start + window
        block = order[place:min(place + stride, frames)]
        assert sorted(block.tolist()) == sorted(order[start:start + len(block)].tolist())
    for f in range(window, frames):  # every later frame is an exact copy of an earlier frame's noise
        assert order[f] < window and torch.equal(mixed[:, f], noise[:, order[f]])
    assert not torch.equal(order[window:window + stride], order[:stride])  # shuffled, not copied in order
    assert torch.equal(mixed, apply_freenoise(noise, window, overlap, seed=5))


# -- the windowed loop ------------------------------------------------------------------------------

class ToyModel(torch.nn.Module):
    """Flow prediction that depends on the latent, timestep, pose and image condition per frame."""

    def forward(self, latents, timestep, **cond):
        scale = timestep.float().view(-1, 1, 1, 1, 1) / 1000
        return (0.3 * latents * scale + 0.1 * cond["pose_latents"] + 0.05 * cond["image_cond"][:, :16]
                + 0.01 * cond["text_context"].mean())


def _conditions(frames: int, seed: int) -> tuple[DiTConditions, DiTConditions, DiTConditions]:
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731

    def one(text, pose):
        return DiTConditions(text_context=text, clip_image=r(1, 257, 8), clip_pose=r(1, 257, 8),
                             image_cond=y, pose_latents=pose, ref_image=r(1, 36, 1, 2, 2), ref_pose=r(1, 36, 1, 2, 2))
    y = r(1, 20, frames, 2, 2)
    pos, neg = r(1, 16, frames, 2, 2), r(1, 16, frames, 2, 2)
    text, null = r(1, 4, 8), r(1, 4, 8)
    return one(text, pos), one(null, pos), one(text, neg)


@pytest.mark.parametrize("solver", ["unipc", "dpm++", "euler"])
def test_one_window_covering_the_video_is_the_plain_loop_bit_for_bit(solver):
    noise = torch.randn(16, 5, 2, 2, generator=torch.Generator().manual_seed(1))
    sets = _conditions(5, 2)
    plain = sample_dc_cfg(ToyModel(), noise, *sets, solver=solver, steps=6, progress=False)
    windowed = sample_dc_cfg_windowed(ToyModel(), noise, lambda start: sets, lambda step: [0], window=5,
                                      solver=solver, steps=6, progress=False)
    assert torch.equal(plain, windowed)


def test_windowed_loop_runs_each_window_with_its_own_conditions():
    frames, window = 14, 9
    whole = _conditions(frames, 3)
    seen = []

    def window_conditions(start):
        return tuple(DiTConditions(**{**c.as_kwargs(), "image_cond": c.image_cond[:, :, start:start + window],
                                      "pose_latents": c.pose_latents[:, :, start:start + window]}) for c in whole)

    noise = torch.randn(16, frames, 2, 2, generator=torch.Generator().manual_seed(1))
    out = sample_dc_cfg_windowed(ToyModel(), noise, window_conditions, window_plan("static", frames, window, 4),
                                 window=window, steps=4, progress=False, on_window=lambda i, a: seen.append((i, a)))
    assert seen == [(i, a) for i in range(4) for a in (0, 5)]
    assert out.shape == noise.shape and torch.isfinite(out).all()
    # the toy model acts per frame, so fused windows equal the whole-video loop
    plain = sample_dc_cfg(ToyModel(), noise, *whole, steps=4, progress=False)
    torch.testing.assert_close(out, plain, rtol=1e-5, atol=1e-5)


# -- few-step solvers -----------------------------------------------------------------------------

def test_lightx2v_step_list_gives_the_shifted_sigmas():
    sigmas = few_step_sigmas(4, 5.0, [1000, 750, 500, 250])
    np.testing.assert_allclose(sigmas, [1.0, 0.9375, 2.5 / 3, 0.625], rtol=0, atol=1e-12)
    for solver in ("euler", "lcm"):
        scheduler, timesteps = make_scheduler(solver, 4, 5.0, sample_timesteps=[1000, 750, 500, 250])
        torch.testing.assert_close(timesteps, torch.tensor([1000.0, 937.5, 2500 / 3, 625.0]))
        assert scheduler.sigmas[-1] == 0.0
    np.testing.assert_allclose(few_step_sigmas(7, 3.0), dpm_sigmas(7, 3.0))
    with pytest.raises(ValueError, match="euler or lcm"):
        make_scheduler("unipc", 4, 5.0, sample_timesteps=[1000, 500])


def test_euler_step_is_x0_plus_next_sigma_times_v():
    scheduler, _ = make_scheduler("euler", 2, 1.0, sample_timesteps=[1000, 400])
    x, v = torch.randn(1, 16, 3, 2, 2), torch.randn(1, 16, 3, 2, 2)
    sigma, sigma_next = scheduler.sigmas[0], scheduler.sigmas[1]
    out = scheduler.step(v, 1000, x)[0]
    torch.testing.assert_close(out, (x - sigma * v) + sigma_next * v)
    last = scheduler.step(v, 400, out)[0]
    torch.testing.assert_close(last, out - sigma_next * v)  # sigma 0 after the last step: x0


def test_lcm_step_renoises_the_prediction_with_fresh_noise():
    scheduler = FewStepFlowScheduler("lcm", few_step_sigmas(3, 5.0, [1000, 750, 500]), seed=lcm_noise_seed(7))
    x, v = torch.randn(1, 16, 3, 2, 2), torch.randn(1, 16, 3, 2, 2)
    expected_noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(8))
    sigma, sigma_next = scheduler.sigmas[0], scheduler.sigmas[1]
    out = scheduler.step(v, 1000, x)[0]
    x0 = x - sigma * v
    torch.testing.assert_close(out, (1 - sigma_next) * x0 + sigma_next * expected_noise)
    scheduler.step(v, 937.5, out)
    final = scheduler.step(v, 833.3, out)[0]
    torch.testing.assert_close(final, out - scheduler.sigmas[2] * v)  # no noise after the last step
