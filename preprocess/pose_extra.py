"""Official entry point: draw the raw (unaligned) poses of a video (--vidfn --outfn_all --outfn_single)."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from steadydancer.pose.scripts import pose_extra_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(pose_extra_main())
