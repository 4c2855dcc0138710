"""SteadyDancer: human image animation (Image-to-Video) inference toolkit.

The package follows the pipeline: pose -> encoders -> models -> sampling -> pipeline
-> distributed -> cli.
"""

__version__ = "0.1.0"
