"""The documentation points only at files that exist in the repository."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# a Markdown file named in prose or code: docs/pose.md, `README.md`, ../shared/X.md is outside
MD_REFERENCE = re.compile(r"(?<![\w./$-])((?:[\w-]+/)*[\w-]+\.md)\b")
# Markdown files that commands write (results), not documents of the repository
WRITTEN_BY_TOOLS = {"bench.md"}


def _texts():
    yield from sorted(REPO.glob("*.md"))
    yield from sorted((REPO / "docs").glob("*.md"))
    yield from sorted((REPO / "steadydancer").rglob("*.py"))


def test_every_referenced_markdown_file_exists():
    missing = []
    for path in _texts():
        if not path.is_file():
            continue
        for name in MD_REFERENCE.findall(path.read_text(encoding="utf-8", errors="replace")):
            if name.startswith("shared/") or name in WRITTEN_BY_TOOLS:  # beside the repository / results
                continue
            candidates = [REPO / name, REPO / "docs" / name, path.parent / name]
            if not any(c.is_file() for c in candidates):
                missing.append(f"{path.relative_to(REPO)} -> {name}")
    assert not missing, missing
