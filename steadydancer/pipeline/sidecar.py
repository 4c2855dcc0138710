"""The JSON sidecar beside a generated video: ``X.mp4`` -> ``X.json``, one JSON object whose top-level
keys are sections written by different stages (``provenance``: which driving frames made the video,
read by ``steadydancer eval`` to pair frames; ``settings``: how it was generated).

Sections are merged: a writer replaces only the keys it names, so stages never erase each other's.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..fileio import atomic_path


def sidecar_path(video_path: str | os.PathLike) -> Path:
    """``X.mp4`` -> ``X.json`` (same folder, same stem)."""
    return Path(video_path).with_suffix(".json")


def read_sidecar(video_path: str | os.PathLike) -> dict:
    """The sidecar of ``video_path`` as a dict; an empty dict when there is none.

    A sidecar that is not a JSON object is an InputError naming the file (it was damaged or
    is another tool's file)."""
    path = sidecar_path(video_path)
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not a readable JSON sidecar ({exc})") from None
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object (the sidecar of {Path(video_path).name})")
    return data


def update_sidecar(video_path: str | os.PathLike, **sections: Any) -> Path:
    """Merge ``sections`` (top-level keys, each a JSON value) into the sidecar of ``video_path`` and
    write it atomically; returns the sidecar's path."""
    path = sidecar_path(video_path)
    data = read_sidecar(video_path)
    data.update(sections)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False, allow_nan=False) + "\n", encoding="utf-8")
    return path
