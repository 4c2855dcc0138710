"""encoders stage: umT5 text encoder, CLIP vision tower and Wan 2.1 VAE from the official files.

- ``t5.TextEncoder``: prompts -> umT5 states trimmed to the real token count.
- ``clip.ClipVisionEncoder``: images in [-1, 1] -> [B, 257, 1280] CLIP features.
- ``vae.WanVAE``: video <-> normalised 16-channel latent.
- ``tiny``: writers of tiny random-weight files in the official layout, for tests and demos.
"""

from .clip import ClipVisionEncoder
from .t5 import TextEncoder
from .vae import WanVAE

__all__ = ["ClipVisionEncoder", "TextEncoder", "WanVAE"]
