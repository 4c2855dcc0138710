"""python -m steadydancer.parity CASE_DIR [CASE_DIR ...]"""

import argparse
import sys

from . import TOLERANCE, detect_kind, run_case


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m steadydancer.parity",
                                     description="check our outputs against an official parity case")
    parser.add_argument("cases", nargs="+", help="case folders (format of shared/parity)")
    parser.add_argument("--tolerance", type=float, default=TOLERANCE)
    args = parser.parse_args(argv)
    failed = False
    for case in args.cases:
        try:
            kind = detect_kind(case)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        errors = run_case(case)
        for name, err in errors.items():
            ok = err <= args.tolerance
            failed |= not ok
            print(f"{case} [{kind}] {name}: rel err {err:.3e} {'ok' if ok else 'FAIL'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
