"""Official entry point: ``python generate_dancer.py --task i2v-14B --ckpt_dir ... --image ... ``.

Thin wrapper over ``steadydancer generate`` (same flags).
"""

import sys

from steadydancer.cli.main import run_command

if __name__ == "__main__":
    sys.exit(run_command("steadydancer.cli.generate", None, "generate_dancer.py",
                         "generate a SteadyDancer video (official flags)"))
