"""Write a tiny random-weight checkpoint folder in the released SteadyDancer-14B layout.

    python scripts/make_tiny_checkpoint.py OUT_DIR [--seed N]

Every file loads through the same code as the release; generation on it runs on a CPU in
about a minute (the video is noise). For tests, CI and trying the command lines offline.
"""

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # also runs from a clone that was not pip-installed
    sys.path.insert(0, str(REPO))

from steadydancer.pipeline.tiny import write_tiny_checkpoint  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", help="folder to create (replaced if it exists)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    args = parser.parse_args(argv)
    print(write_tiny_checkpoint(args.out_dir, seed=args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
