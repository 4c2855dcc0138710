"""python -m steadydancer.parity CASE_DIR [CASE_DIR ...]"""

import argparse
import sys

from ..models.memory import DTYPES
from . import TOLERANCE, detect_kind, run_case
from .metrics import METRIC_KINDS  # these run in float32 whatever --dtype says


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m steadydancer.parity",
                                     description="check our outputs against an official parity case")
    parser.add_argument("cases", nargs="+", help="case folders (format of shared/parity)")
    parser.add_argument("--tolerance", type=float, default=TOLERANCE,
                        help=f"largest relative error that passes (default {TOLERANCE}; bf16 lands near 1e-2)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (model kinds; default cpu)")
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES),
                        help="compute dtype of the model kinds (default fp32, the official outputs' dtype)")
    args = parser.parse_args(argv)
    import torch

    try:
        device = torch.device(args.device)
    except RuntimeError:
        print(f"error: --device: expected cpu, cuda or cuda:N, got {args.device!r}", file=sys.stderr)
        return 2
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda: no CUDA device here", file=sys.stderr)
        return 2
    if device.type == "cuda" and args.dtype == "fp32":
        # TF32 would round the official float32 computation's matmuls and convolutions to 10 bits
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    failed = False
    for case in args.cases:
        try:
            kind = detect_kind(case)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        errors = run_case(case, device=str(device), dtype=DTYPES[args.dtype])
        if kind == "pose" or (device.type == "cpu" and args.dtype == "fp32"):
            where = ""
        elif kind in METRIC_KINDS:
            where = "" if device.type == "cpu" else f" {device}"
        else:
            where = f" {device} {args.dtype}"
        for name, err in errors.items():
            ok = err <= args.tolerance
            failed |= not ok
            print(f"{case} [{kind}{where}] {name}: rel err {err:.3e} {'ok' if ok else 'FAIL'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
