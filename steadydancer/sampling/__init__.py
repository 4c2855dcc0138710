"""sampling stage: flow-matching schedulers (UniPC, DPM++) and the DC-CFG loop."""

from .batched import run_passes
from .conditions import DiTConditions
from .dc_cfg import combine_guidance, pose_cfg_active, pose_cfg_steps, sample_dc_cfg
from .schedulers import SOLVERS, make_scheduler

__all__ = ["DiTConditions", "SOLVERS", "combine_guidance", "make_scheduler", "pose_cfg_active",
           "pose_cfg_steps", "run_passes", "sample_dc_cfg"]
