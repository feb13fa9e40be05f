"""Writers that never leave half a file or half a folder, and never share a temporary name with another process.

Every artefact lightning-edit writes (reports, saved models, trained editors, study cells, caches) goes through
these: the content is written under a per-process temporary name beside its target (pid + random, so two runs
never collide and ``os.replace`` stays on one filesystem), flushed to disk (fsync), then moved into place in one
step. A reader sees the old artefact or the new one, never a mixture; an interrupted writer leaves no file under
the target's name. ``exclusive_lock`` serialises the writers that may meet on one target (two first loads into
one cache, two studies into one folder).
"""
from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
from pathlib import Path
from typing import Iterator, Union

from filelock import FileLock, Timeout

from .errors import ConfigError

PathLike = Union[str, Path]


def temporary_sibling(target: PathLike, suffix: str = ".tmp") -> Path:
    """A name beside ``target`` that no other process or call uses (hidden, pid + random)."""
    target = Path(target)
    return target.with_name(f".{target.name}.{os.getpid()}-{secrets.token_hex(6)}{suffix}")


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a folder be opened for fsync
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(target: PathLike, data: bytes) -> None:
    """Write ``data`` to ``target`` in one step (temporary sibling, fsync, ``os.replace``). A symlink at ``target``
    is replaced by the file, never followed."""
    target = Path(target)
    temp = temporary_sibling(target)
    try:
        with open(temp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, target)
    finally:
        temp.unlink(missing_ok=True)
    _fsync_dir(target.parent)


def atomic_save_figure(fig, target: PathLike, **savefig_options) -> None:
    """A matplotlib figure written whole: to a temporary sibling (same suffix, so the format is the same), then
    replaced."""
    target = Path(target)
    temp = temporary_sibling(target, suffix=target.suffix)
    try:
        fig.savefig(temp, **savefig_options)
        os.replace(temp, target)
    finally:
        temp.unlink(missing_ok=True)


def atomic_write_text(target: PathLike, text: str) -> None:
    atomic_write_bytes(target, text.encode("utf-8"))


def fsync_tree(folder: Path) -> None:
    """Flush every file under ``folder`` and the folders themselves to disk."""
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.is_symlink():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    for sub in sorted([folder, *(p for p in folder.rglob("*") if p.is_dir())], reverse=True):
        _fsync_dir(sub)


@contextlib.contextmanager
def atomic_directory(target: PathLike, flag: str = "the output folder") -> Iterator[Path]:
    """Build a folder under a temporary name and move it to ``target`` when the block ends without error.

    The target must not exist (or be an empty real folder, which is replaced); a symlink, a file or a non-empty
    folder there is refused before and after the block, with ``flag`` named in the message. On error or Ctrl-C the
    temporary folder is removed: nothing is left under the target's name.
    """
    target = Path(target)
    check_new_directory(target, flag)
    temp = temporary_sibling(target, suffix=".partial")
    temp.mkdir(parents=True)
    try:
        yield temp
        fsync_tree(temp)
        check_new_directory(target, flag)  # something may have appeared there while we worked
        _move_into_place(temp, target, flag)
    finally:
        if temp.exists():
            shutil.rmtree(temp, ignore_errors=True)


def _move_into_place(temp: Path, target: Path, flag: str) -> None:
    """``os.rename`` of a finished folder onto a missing or empty ``target``. Another writer that got there between
    the check and the rename (a second run saving under the same name) makes the rename fail, never merge: that is
    the same refusal, by name, as before the work."""
    try:
        if target.is_dir() and not target.is_symlink():
            target.rmdir()  # empty (checked above); os.rename cannot replace a folder otherwise portably
        os.rename(temp, target)
    except OSError as err:
        if err.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
            check_new_directory(target, flag)  # names what is there now
        raise
    _fsync_dir(target.parent)


def check_writable_directory(target: PathLike, flag: str) -> None:
    """What a new output folder needs before any work: nothing in the way at ``target`` (``check_new_directory``)
    and a parent folder that exists (or can be made) and is writable. ``ConfigError`` naming ``flag``."""
    target = Path(target)
    check_new_directory(target, flag)
    parent = Path(os.path.abspath(target)).parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"{flag} {target}: cannot create the folder {parent} ({err.strerror or err}); "
                          "give a folder you can write to") from err
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {target}: the folder {parent} is not writable; give a folder you can write to")


def check_new_directory(target: Path, flag: str) -> None:
    """Refuse a target folder that is a symlink, a file, or a folder with something in it."""
    target = Path(target)
    if target.is_symlink():
        raise ConfigError(f"{flag} {target} is a symbolic link; give a new folder name (links are never followed)")
    if target.exists() and not target.is_dir():
        raise ConfigError(f"{flag} {target} is an existing file; give a new folder name")
    if target.is_dir() and any(target.iterdir()):
        raise ConfigError(f"{flag} {target} is a folder that is not empty; give a new folder name or remove it")


@contextlib.contextmanager
def exclusive_lock(path: PathLike, what: str, timeout: float = -1) -> Iterator[None]:
    """Hold ``<path>.lock`` (a file lock, shared with other processes) for the block. With a ``timeout`` (seconds),
    a lock held elsewhere for longer is a ``ConfigError`` naming ``what`` is busy."""
    lock_file = Path(f"{path}.lock")
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(lock_file), is_singleton=True)
    try:
        lock.acquire(timeout=timeout)
    except Timeout:
        raise ConfigError(f"{what} is in use by another process (lock {lock_file}); wait for it to finish, "
                          "or remove the lock file if no such process runs") from None
    try:
        yield
    finally:
        lock.release()
