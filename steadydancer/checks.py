"""The file-free checks of generation settings moved to :mod:`steadydancer.options` (with the
option dataclasses); this module keeps the old import location working."""

from .options import (ARG_NAMES, FEW_STEP_SOLVERS, FLAG_NAMES, SOLVERS, check_frame_num, check_generation,  # noqa: F401
                      check_long_video_options, check_sampling, check_timesteps, max_area_for)
