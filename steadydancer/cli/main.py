"""``steadydancer`` command: subcommands prepare, generate, demo, eval, benchmark."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from ..errors import InputError

# subcommand -> module with add_arguments(parser) and run(args) -> int
SUBCOMMANDS = {
    "prepare": ("steadydancer.cli.prepare", "detect, align and draw poses; write the input folder"),
    "generate": ("steadydancer.cli.generate", "generate the video from an input folder (official flags)"),
    "demo": ("steadydancer.cli.demo", "prepare + generate on the bundled sample (tiny random model by default)"),
    "eval": ("steadydancer.cli.eval", "score generated videos: TikTok/HumanVid metrics, VBench-I2V, FVD; report + table + plots"),
    "benchmark": ("steadydancer.cli.benchmark", "xdance / tiktok protocol: make the rows, prepare, generate (resumable), score"),
}


def run_command(module_name: str, argv: list[str] | None, prog: str, description: str) -> int:
    """Parse ``argv`` with the module's arguments and run it; user errors become one line."""
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=prog, description=description)
    module.add_arguments(parser)
    args = parser.parse_args(argv)
    return guarded(module.run, args)


def guarded(fn, *args) -> int:
    """Call ``fn``; an :class:`InputError` prints ``error: ...`` and returns 2."""
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(levelname)s: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stdout)
    try:
        return int(fn(*args) or 0)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


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
