"""Step caching with diffusers' MagCache / first-block-cache hooks on the tiny DiT (issue 23)."""

from __future__ import annotations

import pytest
import torch

from memory_helpers import tiny_conditions, tiny_dit, tiny_latents
from steadydancer.errors import InputError
from steadydancer.models.step_cache import (PASS_NAMES, StepCacheOptions, check_step_cache_options,
                                            read_cache_ratios, step_cache_session, write_cache_ratios)
from steadydancer.sampling import sample_dc_cfg
from steadydancer.sampling.batched import make_passes

STEPS = 12


def sample(model, options: StepCacheOptions | None, guide_scale: float = 5.0):
    """The DC-CFG loop (3 passes inside the pose window) with the step cache; -> (latent, cache)."""
    noise = tiny_latents(seed=5)[0]
    cond, neg_text, neg_pose = tiny_conditions(seed=1), tiny_conditions(seed=7), tiny_conditions(seed=8)
    skip = guide_scale == 1.0
    with torch.no_grad(), step_cache_session(model, options, STEPS,
                                             make_passes(skip_negative_text=skip)) as (passes, cache):
        latent = sample_dc_cfg(model, noise, cond, neg_text, neg_pose, steps=STEPS, shift=3.0,
                               guide_scale=guide_scale, progress=False, passes=passes)
    return latent, cache


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture(scope="module")
def model():
    return tiny_dit(seed=3)


@pytest.fixture(scope="module")
def reference(model):
    return sample(model, None)[0]


@pytest.fixture(scope="module")
def ratios(model, reference):
    latent, cache = sample(model, StepCacheOptions(calibrate=True))
    assert torch.equal(latent, reference)                 # calibration skips nothing
    return cache.calibration_ratios()


def test_calibration_measures_one_ratio_per_step_and_pass(ratios):
    assert set(ratios) == set(PASS_NAMES)
    for name in ("cond", "uncond_text"):
        assert len(ratios[name]) == STEPS and ratios[name][0] == 1.0
        assert all(r > 0 for r in ratios[name]) and any(abs(r - 1) > 1e-3 for r in ratios[name][1:])
    # the negative-pose pass runs only inside the window 0.1 < idx/N < 0.4: steps 2..4 of 12
    measured = [i for i, r in enumerate(ratios["uncond_pose"]) if r != 1.0]
    assert set(measured) <= {3, 4}


def test_magcache_at_threshold_zero_is_bit_identical(model, reference, ratios):
    latent, cache = sample(model, StepCacheOptions("magcache", threshold=0.0, ratios=ratios))
    assert cache.skipped == 0 and cache.forwards == 2 * STEPS + 3
    assert torch.equal(latent, reference)


def test_magcache_skips_at_a_threshold_and_stays_close(model, reference, ratios):
    latent, cache = sample(model, StepCacheOptions("magcache", threshold=0.3, ratios=ratios))
    assert cache.skipped > 0
    assert cache.summary() == f"step cache: {cache.skipped} of {cache.forwards} DiT forwards skipped"
    err = rel(latent, reference)
    assert 0 < err < 0.5
    print(f"magcache 0.3: {cache.summary()}, relative error {err:.4f}")


def test_fbcache_at_threshold_zero_is_bit_identical_and_skips_above(model, reference):
    latent, cache = sample(model, StepCacheOptions("fbcache", threshold=0.0))
    assert cache.skipped == 0 and torch.equal(latent, reference)
    latent, cache = sample(model, StepCacheOptions("fbcache", threshold=1.0))
    assert cache.skipped > 0
    err = rel(latent, reference)
    assert 0 < err < 0.5
    print(f"fbcache 1.0: {cache.summary()}, relative error {err:.4f}")


def test_hooks_are_removed_after_the_run(model, reference):
    sample(model, StepCacheOptions("fbcache", threshold=10.0))
    assert torch.equal(sample(model, None)[0], reference)


def test_guide_scale_one_keeps_the_skip_of_the_negative_text_pass(model):
    want = sample(model, None, guide_scale=1.0)[0]
    latent, cache = sample(model, StepCacheOptions("fbcache", threshold=0.0), guide_scale=1.0)
    assert torch.equal(latent, want) and cache.forwards == STEPS + 3


def test_ratios_file_round_trip_and_refusals(tmp_path, ratios):
    path = write_cache_ratios(tmp_path / "ratios.json", ratios, steps=STEPS, solver="unipc", shift=3.0)
    back = read_cache_ratios(path)
    assert set(back) == set(PASS_NAMES) and back["cond"] == [round(v, 6) for v in ratios["cond"]]
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(InputError, match=r"--cache_ratios: .*bad\.json is not a ratios file"):
        read_cache_ratios(tmp_path / "bad.json")
    with pytest.raises(InputError, match="--step_cache magcache needs --cache_ratios FILE"):
        check_step_cache_options("magcache", 0.1, None)
    with pytest.raises(InputError, match="--cache_threshold needs --step_cache"):
        check_step_cache_options("none", 0.1, None)
    with pytest.raises(InputError, match="--step_cache: expected one of none, magcache, fbcache"):
        check_step_cache_options("teacache", None, None)


def test_published_wan_ratios_read_for_every_pass():
    from steadydancer.models.step_cache import PUBLISHED_RATIOS

    for name in ("480p", "720p"):
        ratios = read_cache_ratios(PUBLISHED_RATIOS / f"wan21_i2v_14b_{name}.json")
        assert {k: len(v) for k, v in ratios.items()} == {p: 40 for p in PASS_NAMES}
        assert ratios["cond"][0] == 1.0 and 0.8 < min(ratios["cond"]) < max(ratios["cond"]) <= 1.0


def test_windowed_sampler_keeps_one_cache_per_window_and_pass(model):
    """Two static windows of 2 latent frames: at threshold 0 the windowed run is unchanged, and
    every window's passes run in their own contexts (forward count = windows x passes)."""
    from steadydancer.sampling.context_windows import sample_dc_cfg_windowed

    steps, frames, window = 5, 3, 2
    noise = torch.randn(16, frames, 4, 4, generator=torch.Generator().manual_seed(4))
    sets = [tiny_conditions(seed=s, frames=frames) for s in (1, 7, 8)]

    def window_conditions(start):
        return tuple(type(c)(**{**c.as_kwargs(), "image_cond": c.image_cond[:, :, start:start + window],
                                "pose_latents": c.pose_latents[:, :, start:start + window]}) for c in sets)

    def run(options):
        with torch.no_grad():
            return sample_dc_cfg_windowed(model, noise, window_conditions, lambda step: [0, 1], window,
                                          steps=steps, shift=3.0, progress=False, step_cache=options)

    from steadydancer.models import step_cache as module

    seen = []
    original = module.StepCache.pass_context
    module.StepCache.pass_context = lambda self, name, step, w=0: (seen.append((name, step, w)),
                                                                   original(self, name, step, w))[1]
    try:
        cached = run(StepCacheOptions("fbcache", threshold=0.0))
    finally:
        module.StepCache.pass_context = original
    assert torch.equal(cached, run(None))
    # pose window 0.1 < idx/5 < 0.4: step 1 only -> 2 windows x (2 x 5 + 1) forwards
    assert len(seen) == 2 * (2 * steps + 1)
    assert {w for _, _, w in seen} == {0, 1} and ("uncond_pose", 1, 1) in seen


def test_taylorseer_interval_one_is_bit_identical(model, reference):
    """A full forward every step: the extrapolation is never used, the run is the uncached one."""
    latent, cache = sample(model, StepCacheOptions("taylorseer", interval=1))
    assert cache.skipped == 0 and cache.forwards == 2 * STEPS + 3
    assert torch.equal(latent, reference)


def test_taylorseer_skips_on_its_schedule_per_pass_and_stays_close(model, reference):
    """diffusers' schedule: steps 0-2 full, then full where (step - 4) % interval == 0 (4, 6, 8,
    ...; step 3 is already extrapolated) for cond and neg_text, counted per pass: the negative-pose
    pass (steps 2..4 of 12, its own forwards 0..2) is still in its warm-up and never skipped. The
    skipped forwards extrapolate the head's output."""
    latent, cache = sample(model, StepCacheOptions("taylorseer", interval=2))
    full_steps = [0, 1, 2] + [s for s in range(3, STEPS) if (s - 4) % 2 == 0]
    assert cache.forwards == 2 * STEPS + 3
    assert cache.skipped == 2 * (STEPS - len(full_steps))
    err = rel(latent, reference)
    assert 0 < err < 0.6          # 0.47 measured: a random tiny DiT changes fast between steps
    print(f"taylorseer 2: {cache.summary()}, relative error {err:.4f}")
    assert torch.equal(sample(model, None)[0], reference)          # hooks gone afterwards


def test_taylorseer_flag_rules():
    for args, needle in [(("taylorseer", 0.1, None), "--cache_threshold: --step_cache taylorseer has no threshold"),
                         (("fbcache", None, None, "--", 3), "--cache_interval is for --step_cache taylorseer"),
                         (("taylorseer", None, None, "--", 0), "--cache_interval: expected a whole number"),
                         (("none", None, None, "--", 2), "--cache_interval needs --step_cache")]:
        with pytest.raises(InputError, match=needle):
            check_step_cache_options(*args)
    check_step_cache_options("taylorseer", None, None, interval=4)
