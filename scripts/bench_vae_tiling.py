"""Host peak of one streamed VAE decode, tiled or not, on the tiny random VAE (docs/speed.md).

    python scripts/bench_vae_tiling.py plain 90 160    # 3 latent frames -> 9 frames at 1280x720
    python scripts/bench_vae_tiling.py tiled 90 160

Run each mode in its own process: the peak is the process's ru_maxrss (MiB), printed with the RSS
before the decode and the decode's seconds.
"""

import argparse
import resource
import tempfile
import time
from pathlib import Path

import torch

from steadydancer.encoders.tiny import write_tiny_vae
from steadydancer.encoders.vae import WanVAE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["plain", "tiled"])
    parser.add_argument("latent_height", type=int, help="latent rows (pixels / 8)")
    parser.add_argument("latent_width", type=int, help="latent columns (pixels / 8)")
    parser.add_argument("--latent_frames", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        vae = WanVAE(write_tiny_vae(Path(folder) / "Wan2.1_VAE.pth"))
    latent = torch.randn(16, args.latent_frames, args.latent_height, args.latent_width,
                         generator=torch.Generator().manual_seed(0))
    if args.mode == "tiled":
        vae.enable_tiling()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started, frames = time.perf_counter(), 0
    for chunk in vae.decode_stream(latent):
        frames += chunk.shape[1]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{args.mode}: {frames} frames at {8 * args.latent_width}x{8 * args.latent_height}, host peak "
          f"{peak:.0f} MiB ({before:.0f} MiB before the decode), {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
