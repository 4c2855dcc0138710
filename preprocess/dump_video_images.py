"""Official entry point: ``python preprocess/dump_video_images.py VIDEO FOLDER`` writes FOLDER/NNNN.jpg."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from steadydancer.pose.scripts import dump_video_images_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(dump_video_images_main())
