"""Atomic filesystem writes: a finished artifact appears in one rename, or not at all.

Every writer in leccr writes under a hidden temporary name beside its target and renames
it into place when complete, so an interrupted run never leaves a half-written file or
folder that looks finished. Temporary names start with a dot and contain `.partial-`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from pathlib import Path
from typing import Iterator

from leccr_cli.errors import LeccrError


def temporary_sibling(path: str | Path, kind: str = "partial") -> Path:
    """A fresh hidden name beside `path`: `.NAME.<kind>-<random>`."""
    path = Path(path)
    return path.parent / f".{path.name}.{kind}-{uuid.uuid4().hex[:8]}"


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path` to write; on success it is renamed onto `path`.

    On failure the temporary file is removed and `path` keeps its old content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_sibling(path)
    try:
        yield temporary
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically."""
    path = Path(path)
    with atomic_file(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return path


@contextlib.contextmanager
def atomic_directory(target: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty temporary sibling folder; on success it replaces `target`, on failure it is removed.

    An existing non-empty `target` is refused unless `overwrite` is true.
    """
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise LeccrError(f"{target} exists and is not a folder", "choose another output path")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise LeccrError(f"{target} exists and is not empty", "pass --overwrite to replace it, or choose another path")
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_sibling(target)
    temporary.mkdir()
    try:
        yield temporary
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    replace_directory(temporary, target)


def replace_directory(source: Path, target: Path) -> None:
    """Move the finished folder `source` to `target`, replacing what was there."""
    if target.exists():
        aside = temporary_sibling(target, "old")
        os.replace(target, aside)
        os.replace(source, target)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.replace(source, target)
