"""End to end on a tiny checkpoint: block swap + batched guidance give the plain pipeline's video."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from steadydancer.models.block_swap import BlockSwap
from steadydancer.models.memory import MemoryOptions
from steadydancer.pipeline.i2v import DancerPipeline, SamplingOptions


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    from steadydancer.pipeline.tiny import write_tiny_checkpoint

    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "ckpt", seed=0)


def frames(count: int, size: tuple[int, int], seed: int) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)) for _ in range(count)]


def test_block_swap_and_batched_guidance_match_plain_pipeline(ckpt) -> None:
    image = frames(1, (40, 56), 0)[0]
    positive, negative = frames(5, (40, 56), 1), frames(5, (40, 56), 2)
    sampling = SamplingOptions(steps=3, shift=5.0, st_cond_cfg=0.0, end_cond_cfg=0.9)
    pipeline = DancerPipeline(ckpt, device="cpu")
    kwargs = dict(max_area=32 * 48, frame_num=5, sampling=sampling, seed=3, progress=False)
    plain = pipeline.generate(image, positive[0], positive, negative, "a dance", **kwargs)
    pipeline._dit = None
    pipeline.memory = MemoryOptions(blocks_on_gpu=1, batch_guidance=True)
    swapped = pipeline.generate(image, positive[0], positive, negative, "a dance", **kwargs)
    assert isinstance(pipeline._dit.block_swap, BlockSwap)
    assert plain.std() > 0.01
    torch.testing.assert_close(swapped, plain, rtol=1e-4, atol=1e-4)
