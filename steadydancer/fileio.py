"""Atomic outputs: write to a temporary name in the same folder, then rename.

A crash or Ctrl-C never leaves a half-written file or folder that looks complete.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it onto ``final`` on success.

    The temporary name keeps the suffix (``.mp4`` etc.) so that writers that pick a
    format from the extension work. On an exception the temporary file is removed.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.stem}.", suffix=f".partial{final.suffix}",
                               dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual file mode
    try:
        yield tmp_path
        os.replace(tmp_path, final)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def check_can_create(path: str | os.PathLike, flag: str) -> None:
    """InputError unless ``path`` (a file or folder to be made) can be created: its nearest existing
    ancestor must be a folder this process may write in. Checked before any work, so a read-only
    place is one line at the start, not a traceback at the end."""
    from .errors import InputError

    path = Path(path)
    where = path.parent
    while not where.exists():
        where = where.parent
    if not where.is_dir() or not os.access(where, os.W_OK | os.X_OK):
        raise InputError(f"{flag} {path}: cannot write in {where} (permission denied)")


def _must_stay(folder: Path) -> bool:
    """Whether ``folder`` itself must not be renamed away: it is (or holds) the current working
    folder, a symbolic link or a mount point. Its contents are replaced instead."""
    cwd = Path.cwd().resolve()
    real = folder.resolve()
    return folder.is_symlink() or os.path.ismount(folder) or real == cwd or real in cwd.parents


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``final``; on success it replaces ``final``.

    On an exception (Ctrl-C and SIGTERM included, see ``steadydancer.cli.main``) the temporary
    folder is removed and ``final`` is left as it was. When ``final`` must stay where it is
    (the current folder, a link, a mount point), the temporary folder is made inside it and its
    entries are moved in one by one at the end, replacing those of the same name.
    """
    final = Path(os.path.abspath(final))
    final.parent.mkdir(parents=True, exist_ok=True)
    in_place = final.is_dir() and _must_stay(final)
    where = final if in_place else final.parent
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=where))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; give the usual folder mode
    try:
        yield tmp
        if in_place:
            for entry in sorted(tmp.iterdir()):
                target = final / entry.name
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target)
                os.replace(entry, target)
            tmp.rmdir()
        elif final.exists():
            old = final.with_name(f".{final.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
