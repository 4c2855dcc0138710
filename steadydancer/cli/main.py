"""``steadydancer`` command: subcommands prepare, generate, demo, eval, benchmark, batch, manifest, ui, calibrate-cache."""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
from typing import Any, Callable

from ..errors import InputError, Terminated

# subcommand -> module with add_arguments(parser) and run(args) -> int
SUBCOMMANDS = {
    "prepare": ("steadydancer.cli.prepare", "detect, align and draw poses; write the input folder"),
    "generate": ("steadydancer.cli.generate", "generate the video from an input folder (official flags)"),
    "demo": ("steadydancer.cli.demo", "prepare + generate on the bundled sample (tiny random model by default)"),
    "eval": ("steadydancer.cli.eval", "score generated videos: TikTok/HumanVid metrics, VBench-I2V, FVD; report + table + plots"),
    "benchmark": ("steadydancer.cli.benchmark", "xdance / tiktok protocol: make the rows, prepare, generate (resumable), score"),
    "batch": ("steadydancer.cli.batch", "every pair of a manifest, models loaded once (torchrun groups, SLURM arrays, resumable)"),
    "manifest": ("steadydancer.cli.manifest", "write a batch manifest: every image with every video, or given pairs"),
    "ui": ("steadydancer.cli.ui", "web UI (Gradio): upload, prepare the poses, generate; models loaded once"),
    "calibrate-cache": ("steadydancer.cli.calibrate_cache",
                        "measure MagCache's magnitude ratios of a checkpoint and schedule (--step_cache magcache)"),
}


def run_command(module_name: str, argv: list[str] | None, prog: str, description: str) -> int:
    """Parse ``argv`` with the module's arguments and run it; user errors become one line."""
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=prog, description=description)
    module.add_arguments(parser)
    add_hyphen_aliases(parser)
    args = parser.parse_args(argv)
    return guarded(module.run, args)


def add_hyphen_aliases(parser: argparse.ArgumentParser) -> None:
    """Accept ``--frame-num`` wherever ``--frame_num`` exists (and the reverse), as hidden
    aliases: the help keeps the official underscore spelling."""
    for option, action in list(parser._option_string_actions.items()):
        if option.startswith("--"):
            for alias in (option.replace("_", "-"), option[:2] + option[2:].replace("-", "_")):
                parser._option_string_actions.setdefault(alias, action)


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated()


def guarded(fn: Callable[..., Any], *args: Any) -> int:
    """Call ``fn``; an :class:`InputError` prints ``error: ...`` and returns 2.

    Ctrl-C (SIGINT) and SIGTERM both unwind through the callers, so partial outputs are removed
    (see ``steadydancer.fileio``); the exit codes are 130 and 143, as a shell reports them.
    """
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(levelname)s: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stdout)
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        return int(fn(*args) or 0)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("terminated (SIGTERM); partial outputs removed", file=sys.stderr)
        return 143
    except ImportError as exc:
        if "libGL" not in str(exc):
            raise
        # mediapipe's OpenCV GUI build won the shared cv2/ folder on a machine without OpenGL
        print(f"error: OpenCV's GUI build is installed and needs {exc.name or 'libGL.so.1'}, which this machine "
              "lacks: run `bash scripts/headless_opencv.sh` (keeps the headless build)", file=sys.stderr)
        return 2
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in SUBCOMMANDS:
        print("usage: steadydancer {" + ",".join(SUBCOMMANDS) + "} [options]\n")
        for name, (_, text) in SUBCOMMANDS.items():
            print(f"  {name:10s} {text}")
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nerror: unknown command {argv[0]!r}", file=sys.stderr)
            return 2
        return 0
    module_name, text = SUBCOMMANDS[argv[0]]
    return run_command(module_name, argv[1:], f"steadydancer {argv[0]}", text)


if __name__ == "__main__":
    sys.exit(main())
