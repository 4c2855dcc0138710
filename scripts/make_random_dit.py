#!/usr/bin/env python
"""Write a random-weight DiT in the released layout, at the real 14B shape by default.

    python scripts/make_random_dit.py OUT_DIR [--dtype bf16] [--shards 7] [--dim 5120 ...]

Only the DiT (config.json, shards, index): for measuring loads (``scripts/bench.py --modes
load,load_fp8 --ckpt_dir OUT_DIR``) without the release. Tensors are drawn one shard at a time,
so a model larger than host memory can be written (14B in bf16: 28.6 GB on disk).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from steadydancer.models.dit import SteadyDancerDiT  # noqa: E402
from steadydancer.models.loading import save_dit_checkpoint  # noqa: E402
from steadydancer.models.memory import DTYPES  # noqa: E402

RELEASE_14B = dict(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40, text_dim=4096, clip_dim=1280,
                   in_dim=36, in_dim_c=16, out_dim=16, text_len=512)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", help="folder to write (its DiT files are replaced)")
    parser.add_argument("--dtype", default="bf16", choices=sorted(DTYPES), help="stored dtype")
    parser.add_argument("--shards", type=int, default=7, help="number of safetensors shards (release: 7)")
    parser.add_argument("--seed", type=int, default=0)
    for name in ("dim", "ffn_dim", "num_heads", "num_layers"):
        parser.add_argument(f"--{name}", type=int, default=None, help=f"override the 14B {name}")
    args = parser.parse_args(argv)
    if args.shards < 1:
        print(f"error: --shards: expected >= 1, got {args.shards}", file=sys.stderr)
        return 2
    config = {**RELEASE_14B, **{k: getattr(args, k) for k in ("dim", "ffn_dim", "num_heads", "num_layers")
                                 if getattr(args, k)}}
    with torch.device("meta"):
        model = SteadyDancerDiT(**config)
    # torch's cast, not diffusers' ModelMixin.to, which warns about float32 modules the DiT has not got
    torch.nn.Module.to(model, DTYPES[args.dtype])
    generator = torch.Generator().manual_seed(args.seed)

    def random_tensor(name: str, meta: torch.Tensor) -> torch.Tensor:
        return torch.empty(meta.shape, dtype=torch.float32).normal_(0.0, 0.02, generator=generator).to(meta.dtype)

    params = sum(p.numel() for p in model.parameters())
    print(f"writing {params / 1e9:.2f}B parameters as {args.dtype} to {args.out_dir}", flush=True)
    print(save_dit_checkpoint(model, args.out_dir, num_shards=args.shards, tensor_source=random_tensor))
    return 0


if __name__ == "__main__":
    sys.exit(main())
