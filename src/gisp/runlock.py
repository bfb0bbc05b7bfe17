"""One writer per run directory or output: an exclusive lock held for the whole command.

The lock is ``fcntl.flock`` on a hidden sibling file (``runs/.x.lock`` for ``runs/x``) that records
the holder's pid. A second ``gisp prune``/``export``/``recover`` writing the same place is refused,
naming that pid. The kernel releases a flock when its holder dies, however it dies (SIGKILL
included), so a lock left by a dead process is simply taken over.

The target is resolved first, so a symlink to a run directory shares that directory's lock. A
holder deletes the lock file before it releases it; a process that opened the file just before
the deletion would then lock an orphan, so after locking, the file must still be the one at the
path (same inode), else it tries again.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from gisp.errors import GispError


def lock_path(target: str | Path) -> Path:
    """The lock file of ``target``: beside its resolved path (symlinks followed)."""
    target = Path(target).expanduser().resolve()
    return target.parent / f".{target.name}.lock"


def _acquire(path: Path, target: str | Path) -> int:
    """An open descriptor of ``path`` holding its exclusive flock (see the module docstring)."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:  # a read-only mount, no permission: before any work
            raise GispError(f"cannot write {target}: {exc.strerror} ({path.parent})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise GispError(f"{target} is in use by {holder}; wait for it to finish or stop it") from None
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)  # an orphan: its holder deleted it while we waited on it


@contextmanager
def locked(target: str | Path, command: str) -> Iterator[None]:
    """Hold the lock of ``target`` while the block runs (see the module docstring)."""
    path = lock_path(target)
    try:
        created = [p for p in (path.parent, *path.parent.parents) if not p.exists()][::-1]  # outermost first
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # under /proc, a read-only mount, a file in the way
        raise GispError(f"cannot create {path.parent} for {target}: {exc.strerror}") from None
    try:
        fd = _acquire(path, target)
    except GispError:
        _remove_empty(created)
        raise
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"gisp {command} (pid {os.getpid()})".encode(), 0)
        yield
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)  # releases the flock
        _remove_empty(created)


def _remove_empty(created: list[Path]) -> None:
    """Remove the directories the lock created for its target, innermost first, while they are
    empty: a refused command leaves the tree as it found it; one that wrote its output keeps them."""
    for directory in reversed(created):
        try:
            directory.rmdir()
        except OSError:
            return
