"""Shared helpers of the pipeline/CLI tests (no tests here): a cached tiny checkpoint, input folders."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image


@functools.lru_cache(maxsize=None)
def tiny_checkpoint() -> Path:
    """One tiny random checkpoint folder per test session (written once, ~10 s)."""
    from steadydancer.pipeline.tiny import write_tiny_checkpoint

    root = Path(tempfile.mkdtemp(prefix="sd-tiny-ckpt-"))
    atexit.register(shutil.rmtree, root, True)
    return write_tiny_checkpoint(root / "ckpt", seed=0)


def write_inputs(folder: Path, frames: int, neg_frames: int | None = None, ref_size=(40, 56),
                 pose_size=(80, 112), seed: int = 0) -> Path:
    """A prepared-input folder: ref_image.png, prompt.txt, positive/ and negative/ random frames."""
    rng = np.random.default_rng(seed)
    (folder / "positive").mkdir(parents=True)
    (folder / "negative").mkdir()
    Image.fromarray(rng.integers(0, 255, (ref_size[1], ref_size[0], 3), dtype=np.uint8)).save(folder / "ref_image.png")
    for name, count in (("positive", frames), ("negative", frames if neg_frames is None else neg_frames)):
        for i in range(count):
            pixels = rng.integers(0, 255, (pose_size[1], pose_size[0], 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / name / f"{i:04d}.jpg")
    (folder / "prompt.txt").write_text("a person dances")
    return folder


def random_pose_images(frames: int = 5, size: tuple[int, int] = (64, 48), seed: int = 0):
    """(reference, first pose, positive poses, negative poses) as random PIL images of ``size`` (W, H)."""
    rng = np.random.default_rng(seed)

    def image() -> Image.Image:
        return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))

    ref, positive, negative = image(), [image() for _ in range(frames)], [image() for _ in range(frames)]
    return ref, positive[0], positive, negative
