"""``steadydancer`` with a 64x96-pixel output area, for tests that launch the command in other
processes (torchrun, a killed run): the same code path, seconds instead of minutes per video on
the tiny checkpoint. Usage: ``python tests/small_area_steadydancer.py batch ...`` (or as
torchrun's script)."""

import sys

from steadydancer.cli.main import main
from steadydancer.pipeline import run

run.max_area_for = lambda size: 64 * 96

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
