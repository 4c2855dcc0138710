"""A complete tiny random-weight checkpoint folder in the released layout (tests, demo, CI).

Every file loads through the same code as SteadyDancer-14B/; the output of such a model is
noise, but every stage of the pipeline runs, offline, in about a minute on a CPU.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..fileio import atomic_dir
from . import config as C

# widths of the tiny encoders, which the tiny DiT must match
TINY_T5_DIM = 32
TINY_CLIP_DIM = 64
TINY_DIT = dict(dim=64, ffn_dim=128, num_heads=2, num_layers=2, freq_dim=256, in_dim=36, in_dim_c=16,
                out_dim=16, text_len=512, text_dim=TINY_T5_DIM, clip_dim=TINY_CLIP_DIM)


def write_tiny_checkpoint(out_dir: str | os.PathLike, seed: int = 0) -> Path:
    """Write DiT (2 shards), T5, CLIP, VAE and both tokenizer folders into ``out_dir``; returns it.

    The folder appears complete or not at all (an existing one is replaced).
    """
    from ..encoders.tiny import write_tiny_clip, write_tiny_t5, write_tiny_tokenizers, write_tiny_vae
    from ..models.dit import SteadyDancerDiT
    from ..models.loading import save_dit_checkpoint

    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        tmp = Path(tmp)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = SteadyDancerDiT(**TINY_DIT)
            # Default init leaves some output projections at zero; give every weight some signal
            # so the tiny model's output depends on all of its inputs.
            with torch.no_grad():
                for param in model.parameters():
                    if param.abs().max() == 0:
                        param.normal_(0.0, 0.02)
        save_dit_checkpoint(model.eval(), tmp, num_shards=2)
        write_tiny_t5(tmp / C.T5_CHECKPOINT, dim=TINY_T5_DIM, seed=seed)
        write_tiny_clip(tmp / C.CLIP_CHECKPOINT, vision_dim=TINY_CLIP_DIM, seed=seed + 1)
        write_tiny_vae(tmp / C.VAE_CHECKPOINT, seed=seed + 2)
        write_tiny_tokenizers(tmp)
        _usual_modes(tmp)
    return out_dir


def _usual_modes(root: Path) -> None:
    """Temporary files and folders are created private (0600/0700); give them the usual modes."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [root, *root.rglob("*")]:
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)
