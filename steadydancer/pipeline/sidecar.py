"""The JSON sidecar of a video: ``X.json`` beside ``X.mp4``, one object whose top-level keys are
sections written by different parts of the package ("settings": the UI's settings that reproduce
the video; "provenance": what made it). Each writer merges its own sections and keeps the others'."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..fileio import atomic_path


def sidecar_path(video_path: str | os.PathLike) -> Path:
    """``X.mp4`` -> ``X.json``."""
    return Path(video_path).with_suffix(".json")


def read_sidecar(video_path: str | os.PathLike) -> dict[str, Any]:
    """The sidecar of ``video_path`` as a dict; empty when there is none (or it is not a JSON object)."""
    path = sidecar_path(video_path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def update_sidecar(video_path: str | os.PathLike, **sections: Any) -> Path:
    """Merge ``sections`` (top-level keys) into the sidecar of ``video_path`` and write it
    atomically (a reader never sees half a file); returns the sidecar's path."""
    path = sidecar_path(video_path)
    data = read_sidecar(video_path)
    data.update(sections)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path
