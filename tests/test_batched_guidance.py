"""Batched guidance passes equal the separate passes; guidance 1 skips the negative-text pass."""

from __future__ import annotations

import torch

from memory_helpers import tiny_conditions, tiny_dit, tiny_latents
from steadydancer.sampling.batched import make_passes, run_passes_batched
from steadydancer.sampling.dc_cfg import run_passes, sample_dc_cfg


def three_sets():
    cond = tiny_conditions(seed=1, text_tokens=5)
    neg_text = tiny_conditions(seed=1, text_tokens=9)
    neg_text.text_context = torch.randn(1, 9, cond.text_context.shape[2])     # other prompt, same pose
    neg_pose = tiny_conditions(seed=1, text_tokens=5)
    neg_pose.pose_latents = torch.randn_like(cond.pose_latents)               # same prompt, other pose
    return cond, neg_text, neg_pose


def test_batched_passes_equal_separate_passes() -> None:
    model = tiny_dit()
    latent = tiny_latents()[0]
    sets = list(three_sets())
    t = torch.tensor([650.0])
    with torch.no_grad():
        separate = run_passes(model, latent, t, sets, torch.device("cpu"))
        batched = run_passes_batched(model, latent, t, sets, torch.device("cpu"))
    for a, b in zip(separate, batched):
        # float32 rounding only: BLAS blocks a batch-3 matmul differently from batch-1 ones
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(separate[0], separate[2])


def test_whole_loop_batched_equals_separate() -> None:
    model = tiny_dit()
    noise = tiny_latents()[0]
    cond, neg_text, neg_pose = three_sets()
    args = (model, noise, cond, neg_text, neg_pose, "unipc", 5, 5.0, 5.0, 1.5, 0.1, 0.6, False)
    with torch.no_grad():
        want = sample_dc_cfg(*args)
        got = sample_dc_cfg(*args, passes=make_passes(batch_guidance=True))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)


def test_guidance_one_skips_negative_text_pass() -> None:
    model = tiny_dit()
    noise = tiny_latents()[0]
    cond, neg_text, neg_pose = three_sets()
    calls: list[int] = []

    def counting(latents, timestep, **kw):
        calls.append(latents.shape[0])
        return model(latents, timestep, **kw)

    args = (noise, cond, neg_text, neg_pose, "unipc", 5, 5.0, 1.0, 1.5, 0.1, 0.6, False)
    with torch.no_grad():
        want = sample_dc_cfg(model, *args)
        got = sample_dc_cfg(counting, *args, passes=make_passes(batch_guidance=True, skip_negative_text=True))
    # 5 steps: pose window (0.1, 0.6) covers steps 1, 2 -> batches of 2 there, 1 elsewhere
    assert calls == [1, 2, 2, 1, 1]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
