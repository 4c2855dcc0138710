"""SteadyDancer: human image animation (Image-to-Video) inference toolkit.

The package follows the pipeline: pose -> encoders -> models -> sampling -> pipeline
-> distributed -> cli.
"""

__version__ = "0.1.0"

# The Python API (steadydancer/api.py), imported on first use so that ``import steadydancer``
# stays cheap (no torch, no models) for the command line and the pose tools.
_API_NAMES = ("SteadyDancerPipeline", "SteadyDancerPipelineOutput", "PreparedInputs", "prepare_pose",
              "export_to_video")


def __getattr__(name: str):
    if name in _API_NAMES:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'steadydancer' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API_NAMES])
