"""Official entry point: the positive stream plus the randomly re-shaped negative one (*_aug.mp4)."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from steadydancer.pose.scripts import pose_align_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(pose_align_main(with_aug=True))
