"""VAE tiling (--vae_tiling): diffusers' AutoencoderKLWan tiling, with our streamed decode kept."""

import pytest
import torch

from steadydancer.encoders.tiny import write_tiny_vae
from steadydancer.encoders.vae import WanVAE
from steadydancer.errors import InputError


@pytest.fixture(scope="module")
def vae(tmp_path_factory):
    return WanVAE(write_tiny_vae(tmp_path_factory.mktemp("vae") / "Wan2.1_VAE.pth"))


def _latent(frames=3, height=12, width=20, seed=0):
    return torch.randn(16, frames, height, width, generator=torch.Generator().manual_seed(seed))


def test_streamed_tiled_decode_equals_diffusers_tiled_decode(vae):
    latent = _latent()
    vae.enable_tiling(tile_px=64, stride_px=48)  # 96x160 px: 2 x 3 tiles
    try:
        streamed = torch.cat(list(vae.decode_stream(latent)), dim=1)
        whole = vae.decode(latent)  # diffusers' tiled_decode (its _decode picks it)
    finally:
        vae.model.disable_tiling()
    assert streamed.shape == whole.shape == (3, 9, 96, 160)
    assert torch.equal(streamed, whole)


def test_tiled_decode_is_close_to_untiled(vae):
    latent = _latent(height=40, width=40, seed=1)  # 320x320 px: 2 x 2 of diffusers' default 256 px tiles
    plain = vae.decode(latent)
    vae.enable_tiling()
    try:
        tiled = torch.cat(list(vae.decode_stream(latent)), dim=1)
    finally:
        vae.model.disable_tiling()
    difference = (tiled - plain).abs().mean().item()
    # not exact (the middle block attends within a tile; this random VAE's receptive field is wider
    # than the 64 px blend), yet close: a misplaced or unblended tile would be of the frames' own size
    assert 0 < difference < 0.15 * plain.abs().mean().item()
    # a latent no larger than one tile is decoded untiled, bit for bit
    small = latent[:, :, :16, :24]
    vae.enable_tiling()
    try:
        assert torch.equal(torch.cat(list(vae.decode_stream(small)), dim=1), vae.decode(small))
    finally:
        vae.model.disable_tiling()
    assert torch.equal(vae.decode(small), torch.cat(list(vae.decode_stream(small)), dim=1))


def test_bad_tiles_are_one_line(vae):
    with pytest.raises(InputError, match="multiples of 8"):
        vae.enable_tiling(tile_px=64, stride_px=80)


def test_the_flag_reaches_the_pipelines_vae(tmp_path):
    import argparse

    from steadydancer.models.memory import add_memory_arguments, memory_options_from_args
    from steadydancer.pipeline.i2v import DancerPipeline
    from steadydancer.pipeline.tiny import write_tiny_checkpoint

    parser = argparse.ArgumentParser()
    add_memory_arguments(parser)
    memory = memory_options_from_args(parser.parse_args(["--vae_tiling"]))
    assert memory.vae_tiling and "--vae_tiling" in memory.flags_in_use()
    assert not memory_options_from_args(parser.parse_args([])).vae_tiling
    pipeline = DancerPipeline(write_tiny_checkpoint(tmp_path / "ckpt"), device="cpu", memory=memory)
    assert pipeline.vae().tiling
