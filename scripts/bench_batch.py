#!/usr/bin/env python
"""Benchmark load-once batching: N pairs as one ``steadydancer batch`` against N separate
``generate_dancer.py`` runs (each loading T5, CLIP, the VAE and the DiT again).

Every run uses the same checkpoint, prepared folders and settings; the script prints a JSON
line with the wall seconds of both ways, their ratio, and the batch's model-load seconds (once
per process, from OUT/summary.json). Without ``--ckpt_dir`` a tiny random checkpoint is written
(loading it takes about a second, so the saving is mostly process start-up and imports; with the
14B checkpoint each separate run also re-reads ~60 GB of weights).

    python scripts/bench_batch.py                        # tiny checkpoint, 4 pairs, CPU
    python scripts/bench_batch.py --ckpt_dir SteadyDancer-14B --pairs 8 --size 1024*576 --frame_num 81
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def write_pair(folder: Path, frames: int, seed: int) -> Path:
    """A prepared-input folder of random pixels (speed does not depend on the content)."""
    rng = np.random.default_rng(seed)
    for name in ("positive", "negative"):
        (folder / name).mkdir(parents=True)
        for i in range(frames):
            Image.fromarray(rng.integers(0, 255, (112, 80, 3), dtype=np.uint8)).save(folder / name / f"{i:04d}.jpg")
    Image.fromarray(rng.integers(0, 255, (56, 40, 3), dtype=np.uint8)).save(folder / "ref_image.png")
    (folder / "prompt.txt").write_text("a person dances\n")
    return folder


def timed(cmd: list[str], cwd: Path) -> float:
    started = time.perf_counter()
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{result.stderr[-3000:]}")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt_dir", default=None, help="checkpoint (default: a tiny random one)")
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--size", default="832*480")
    parser.add_argument("--frame_num", type=int, default=5)
    parser.add_argument("--sample_steps", type=int, default=2)
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_batch_") as tmp:
        root = Path(tmp)
        ckpt = args.ckpt_dir
        if ckpt is None:
            sys.path.insert(0, str(REPO))
            from steadydancer.pipeline.tiny import write_tiny_checkpoint

            ckpt = str(write_tiny_checkpoint(root / "tiny_ckpt", seed=0))
        rows = [write_pair(root / f"pair{i}", args.frame_num, i) for i in range(args.pairs)]
        (root / "manifest.csv").write_text("id,input_dir\n" + "".join(f"p{i},{r}\n" for i, r in enumerate(rows)))
        flags = ["--ckpt_dir", ckpt, "--size", args.size, "--frame_num", str(args.frame_num),
                 "--sample_steps", str(args.sample_steps), "--base_seed", "0"]
        if args.device:
            flags += ["--device", args.device]
        separate = sum(timed([sys.executable, str(REPO / "generate_dancer.py"), "--input_dir", str(r),
                              "--save_file", str(root / "separate" / f"p{i}.mp4"), *flags], root)
                       for i, r in enumerate(rows))
        batch = timed([sys.executable, "-m", "steadydancer", "batch", "--manifest", str(root / "manifest.csv"),
                       "--out", str(root / "batch"), *flags], root)
        summary = json.loads((root / "batch" / "summary.json").read_text())
        print(json.dumps({"pairs": args.pairs, "size": args.size, "frame_num": args.frame_num,
                          "sample_steps": args.sample_steps, "checkpoint": args.ckpt_dir or "tiny (random)",
                          "separate_s": round(separate, 1), "batch_s": round(batch, 1),
                          "ratio": round(separate / batch, 2), "batch_model_load_s": summary["model_load_s"],
                          "batch_seconds_per_pair": summary["seconds_per_pair"]}))


if __name__ == "__main__":
    main()
