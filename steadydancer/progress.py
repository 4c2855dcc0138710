"""Progress bars that behave on a terminal and in a log file.

On a terminal this is tqdm as usual. When standard error is a file or a pipe (a job log, CI,
``2>&1 | tee``), tqdm's carriage-return redraws would pile up into one endless line, so each
update becomes a line of its own, at most every :data:`LOG_INTERVAL_S` seconds.
"""

from __future__ import annotations

import sys
from typing import Any, Iterable, TextIO

from tqdm import tqdm

# Seconds between progress lines when the output is not a terminal: frequent enough that a
# log never looks stalled, rare enough that a long run's log stays readable.
LOG_INTERVAL_S = 3.0


class _LineWriter:
    """File-like wrapper for tqdm: each redraw (``\\r`` + bar) becomes one ``\\n``-ended line."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> None:
        line = text.replace("\r", "").replace("\x1b[A", "").rstrip()
        if line:
            self.stream.write(line + "\n")

    def flush(self) -> None:
        self.stream.flush()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def progress(iterable: Iterable | None = None, *, desc: str, unit: str = "it", total: int | None = None,
             disable: bool = False, **kwargs: Any) -> tqdm:
    """A tqdm bar on standard error; one line per update (every few seconds) when not a terminal."""
    stream = sys.stderr
    if not _is_terminal(stream):
        kwargs.setdefault("mininterval", LOG_INTERVAL_S)
        kwargs.setdefault("maxinterval", LOG_INTERVAL_S)
        # print at the first update after the interval: tqdm's adaptive minimum of iterations
        # between prints skips the updates of bars that advance in chunks (the VAE's 4 frames)
        kwargs.setdefault("miniters", 1)
        kwargs.setdefault("ncols", 100)
        stream = _LineWriter(stream)
    return tqdm(iterable, desc=desc, unit=unit, total=total, disable=disable, file=stream,
                dynamic_ncols=False, **kwargs)
