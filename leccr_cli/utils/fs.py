"""Crash-safe files and folders, and the writer lock of a corpus or run folder.

Every writer in leccr writes under a hidden temporary name beside its target and renames it
into place when complete, so an interrupted run never leaves a half-written file or folder
that looks finished. Temporary names are `.NAME.partial-<hex>`; a folder being replaced is
moved aside as `.NAME.old-<hex>`.

**Replacing** what exists takes two renames per target (the old version aside, the new one
in), so it is journaled: before the first rename a journal `.NAME.replace` names every target
with its new and old version (several targets of one folder can change together, e.g.
`captions/` and `corpus.json`), and the writer holds an `flock` on the journal until its
renames are done. A kill at any instant therefore leaves the old content, the new content, or
a journal from which `recover` finishes the replacement (readers call it before reading; it
waits for a live writer's renames, which take microseconds). `.NAME.old-*` leftovers are
garbage as soon as they exist, and anyone may delete them.

**Writer lock.** Commands that change a corpus or a run folder hold `writer_lock(folder)`:
an exclusive `flock` on `folder/.leccr.lock`, which records the holder's pid, command line
and start time. A second writer is refused at once with one line naming the holder; readers
never take the lock. Locks of dead processes vanish with them (the kernel drops them), so
under the lock every `.NAME.partial-*` left in the folder belongs to a dead writer and is
removed (`clean_stale`). The lock is re-entrant within a process.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shlex
import shutil
import socket
import sys
import time
import uuid
from pathlib import Path
from typing import Iterator

from leccr_cli.errors import DiskFull, FolderBusy, LeccrError, Param, parts

LOCK_FILE = ".leccr.lock"
JOURNAL_SUFFIX = ".replace"
# `.NAME.partial-<hex>` / `.NAME.old-<hex>` of fs writers, `.step_N.partial` of checkpoints
_STALE = re.compile(r"^\..+\.(partial|old)(-[0-9a-f]{8})?$")
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


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
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically."""
    path = Path(path)
    with atomic_file(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return path


def is_empty_folder(folder: Path) -> bool:
    """Whether `folder` holds nothing but (perhaps) its lock file."""
    return not any(entry.name != LOCK_FILE for entry in folder.iterdir())


@contextlib.contextmanager
def atomic_directory(target: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield an empty temporary sibling folder; on success it replaces `target`, on failure it is removed.

    An existing non-empty `target` is refused unless `overwrite` is true.
    """
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise LeccrError(f"{target} exists and is not a folder", "choose another output path")
    if target.is_dir() and not is_empty_folder(target) and not overwrite:
        raise LeccrError(f"{target} exists and is not empty", output_taken_hint())
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_sibling(target)
    temporary.mkdir()
    try:
        yield temporary
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    try:
        replace_directory(temporary, target)
    except BaseException:
        if not journal_path(target).exists():
            shutil.rmtree(temporary, ignore_errors=True)
        raise


def output_taken_hint():
    """What to do about an output folder that holds something already."""
    return parts("pass ", Param("overwrite", True), " to replace it, or choose another path")


# ------------------------------------------------------------------ journaled replacement


def journal_path(target: Path) -> Path:
    """The journal of an unfinished replacement of `target` (and of any others made with it): `.NAME.replace`."""
    return target.parent / f".{target.name}{JOURNAL_SUFFIX}"


def replace_directory(source: Path, target: Path) -> None:
    """Move the finished folder `source` to `target`, replacing what was there, crash-safely.

    A kill at any instant leaves the old or the new content readable through `recover(target)`.
    """
    replace_together([(Path(source), Path(target))])


def replace_together(moves: list[tuple[Path, Path]]) -> None:
    """Move finished files or folders (source, target) onto their targets, all or none, crash-safely.

    The targets share one folder. Once the journal is written every move is done, also after
    a kill (by `recover`); before it none is.
    """
    moves = [(Path(source), Path(target)) for source, target in moves]
    folder = moves[0][1].parent
    recover_folder(folder)
    if len(moves) == 1 and not os.path.lexists(moves[0][1]):
        os.replace(*moves[0])  # nothing to replace: one rename is atomic
        return
    for source, target in moves:
        lock = target / LOCK_FILE
        if lock.is_file() and source.is_dir() and not (source / LOCK_FILE).exists():
            # the lock file moves along (a hard link: the same inode), so a held lock stays held
            with contextlib.suppress(OSError):
                os.link(lock, source / LOCK_FILE)
    record = {
        "moves": [
            {"target": target.name, "new": source.name, "old": temporary_sibling(target, "old").name}
            for source, target in moves
        ]
    }
    journal = journal_path(moves[0][1])
    written = temporary_sibling(journal)
    fd = os.open(written, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, json.dumps(record).encode("utf-8"))
        os.fsync(fd)
        os.replace(written, journal)
        _roll_forward(folder, record["moves"], journal)
    except BaseException:
        with contextlib.suppress(OSError):
            written.unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_replacement(*targets: Path) -> Iterator[list[Path]]:
    """Yield a fresh temporary name beside each target (the caller writes a file or folder there);
    on success they replace the targets together (`replace_together`), on failure they are removed."""
    targets = tuple(Path(t) for t in targets)
    temporaries = [temporary_sibling(target) for target in targets]
    committed = False
    try:
        yield temporaries
        targets[0].parent.mkdir(parents=True, exist_ok=True)
        committed = True
        replace_together(list(zip(temporaries, targets)))
    except BaseException:
        if not (committed and journal_path(targets[0]).exists()):
            for temporary in temporaries:
                _remove(temporary)
        raise


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)


def _roll_forward(folder: Path, moves: list[dict], journal: Path) -> None:
    """Finish a journaled replacement; every step may be repeated after a kill."""
    for move in moves:
        target, new, old = folder / move["target"], folder / move["new"], folder / move["old"]
        if os.path.lexists(new):
            if os.path.lexists(target):
                os.replace(target, old)
            os.replace(new, target)
    journal.unlink(missing_ok=True)
    for move in moves:
        _remove(folder / move["old"])


def recover(target: str | Path) -> None:
    """Finish an interrupted replacement of `target` (if any) and drop its `.NAME.old-*` leftovers.

    Waits for a live writer that is between its renames (microseconds); the replacement of a
    dead writer is rolled forward.
    """
    target = Path(target)
    recover_folder(target.parent)
    try:
        for old in target.parent.glob(f".{_glob_escape(target.name)}.old-*"):
            _remove(old)
    except OSError:
        pass


def _glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


def recover_folder(folder: str | Path) -> None:
    """Finish every replacement journaled in `folder` (not below it)."""
    folder = Path(folder)
    try:
        journals = list(folder.glob(f".*{JOURNAL_SUFFIX}")) if folder.is_dir() else []
        for journal in journals:
            _recover_journal(folder, journal)
    except OSError as error:
        raise LeccrError(
            f"{folder}: an interrupted write could not be finished ({error})",
            "rerun the command with write access to that folder",
        ) from None


def _recover_journal(folder: Path, journal: Path) -> None:
    try:
        fd = os.open(journal, os.O_RDONLY)
    except FileNotFoundError:
        return  # finished meanwhile
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # a live writer holds it until its renames are done
        try:
            linked = os.stat(journal).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            linked = False
        if not linked:
            return  # its writer finished while we waited
        try:
            moves = json.loads(os.pread(fd, 1 << 20, 0).decode("utf-8"))["moves"]
            valid = all(isinstance(m.get(k), str) and "/" not in m[k] for m in moves for k in ("target", "new", "old"))
        except (UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError):
            valid = False
        if not valid:  # journals get their name only once written completely: this one is not leccr's
            raise LeccrError(f"{journal} is not a leccr journal", "remove it")
        _roll_forward(folder, moves, journal)
    finally:
        os.close(fd)


def clean_stale(folder: str | Path, depth: int = 2) -> None:
    """Finish interrupted replacements and remove temporary files and folders of dead writers.

    Only safe under `writer_lock(folder)`: a live writer's temporaries look the same. Hidden
    folders (resumable shards) are not entered; `depth` levels of sub-folders are.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return
    recover_folder(folder)
    with os.scandir(folder) as entries:
        listed = list(entries)
    for entry in listed:
        if _STALE.match(entry.name):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
        elif depth > 0 and not entry.name.startswith(".") and entry.is_dir(follow_symlinks=False):
            clean_stale(entry.path, depth - 1)


def clear_folder(folder: Path) -> None:
    """Remove everything in `folder` but its lock file (moved aside first, then deleted)."""
    aside = temporary_sibling(folder / "contents", "old")
    aside.mkdir()
    for entry in list(folder.iterdir()):
        if entry.name != LOCK_FILE and entry != aside:
            os.replace(entry, aside / entry.name)
    shutil.rmtree(aside, ignore_errors=True)


# ------------------------------------------------------------------------- writer lock


_held: dict[str, list] = {}  # lock file path -> [fd, depth], for re-entrant locking


def command_line() -> str:
    """The command line of this process as the user would type it (`leccr ...`)."""
    argv = list(sys.argv)
    if argv and (Path(argv[0]).name in ("leccr", "__main__.py", "-m") or argv[0].endswith("leccr_cli")):
        argv[0] = "leccr"
    return shlex.join(argv) if argv else "python"


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 1 << 16, 0).decode("utf-8"))
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["started"]))
        return f"`{info['command']}` (pid {info['pid']} on {info['host']}, started {started})"
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, OSError, OverflowError):
        return "another leccr command (it has not said which yet)"


@contextlib.contextmanager
def writer_lock(folder: str | Path, *, clean: bool = True) -> Iterator[Path]:
    """Hold the writer lock of `folder` (created if missing); refuse at once when another process holds it.

    On acquiring it, interrupted replacements in and of the folder are finished and temporaries
    of dead writers (in it, and whole new versions of it beside it) are removed, unless `clean`
    is false.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    key = os.path.realpath(folder / LOCK_FILE)
    if key in _held:
        _held[key][1] += 1
        try:
            yield folder
        finally:
            _held[key][1] -= 1
        return
    fd = os.open(key, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            os.close(fd)
            raise
        holder = _holder(fd)
        os.close(fd)
        raise FolderBusy(folder, holder) from None
    _held[key] = [fd, 1]
    try:
        info = {"pid": os.getpid(), "command": command_line(), "host": socket.gethostname(), "started": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode("utf-8"), 0)
        if clean:
            recover(folder)
            for stale in folder.parent.glob(f".{_glob_escape(folder.name)}.partial-*"):
                _remove(stale)  # a whole new version of the folder, written by a dead writer of it
            clean_stale(folder)
        yield folder
    finally:
        del _held[key]
        os.close(fd)


# ---------------------------------------------------------------------------- disk full


def is_disk_full(error: BaseException) -> bool:
    """Whether `error` says the disk (or the user's quota) is full."""
    if isinstance(error, OSError) and error.errno in _DISK_FULL:
        return True
    text = str(error)
    return "No space left on device" in text or "Disk quota exceeded" in text


def free_space(path: str | Path) -> str:
    """The free space on the disk holding `path` (or its nearest existing parent), e.g. '12.0 MB'."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        free = shutil.disk_usage(path).free
    except OSError:
        return "unknown space"
    for unit in ("bytes", "KB", "MB", "GB"):
        if free < 1024 or unit == "GB":
            return f"{free:.0f} {unit}" if unit == "bytes" else f"{free:.1f} {unit}"
        free /= 1024
    return f"{free:.1f} TB"


@contextlib.contextmanager
def disk_full_reported(path: str | Path, kept: str) -> Iterator[None]:
    """Turn a full disk inside the block into a `DiskFull` naming the file, the free space and what is `kept`."""
    try:
        yield
    except (OSError, RuntimeError) as error:
        if not is_disk_full(error):
            raise
        raise DiskFull(getattr(error, "filename", None) or path, free_space(path), kept) from None
