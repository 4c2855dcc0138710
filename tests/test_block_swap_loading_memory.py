"""Peak host memory while loading stays near the size of the stored weights (streamed loader)."""

from __future__ import annotations

import subprocess
import sys

import torch

from conftest import REPO

CHILD = r"""
import resource, sys, psutil, torch
from steadydancer.models.loading import load_dit
before = psutil.Process().memory_info().rss
peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
model = load_dit(sys.argv[1], device="cpu", dtype=getattr(torch, sys.argv[2]))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(max(peak - max(before, peak_before), 0), sum(p.numel() * p.element_size() for p in model.parameters()))
"""


def test_load_peak_host_memory_near_weights_size(tmp_path) -> None:
    from steadydancer.models.dit import SteadyDancerDiT
    from steadydancer.models.loading import save_dit_checkpoint

    torch.manual_seed(0)
    model = SteadyDancerDiT(dim=256, ffn_dim=1024, num_heads=4, num_layers=12, text_dim=256, clip_dim=64)
    save_dit_checkpoint(model, tmp_path, num_shards=3)
    stored = sum(p.stat().st_size for p in tmp_path.glob("*.safetensors"))    # float32 on disk
    del model
    for dtype, target_bytes in (("float32", stored), ("bfloat16", stored // 2)):
        out = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path), dtype], capture_output=True,
                             text=True, timeout=300, cwd=REPO)
        assert out.returncode == 0, out.stderr
        growth, model_bytes = (int(v) for v in out.stdout.split())
        assert abs(model_bytes - target_bytes) < 0.05 * target_bytes
        # the resident model plus one tensor in flight (the largest here is 1 MiB) and allocator slack
        assert growth < model_bytes + 16 * 2 ** 20, (dtype, growth / 2 ** 20, model_bytes / 2 ** 20)
