"""One writer per run directory or output: an exclusive lock held for the whole command.

The lock is ``fcntl.flock`` on a hidden sibling file (``runs/.x.lock`` for ``runs/x``) that records
the holder's pid. A second ``gisp prune``/``export``/``recover`` writing the same place is refused,
naming that pid. The kernel releases a flock when its holder dies, however it dies (SIGKILL
included), so a lock left by a dead process is simply taken over.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from gisp.errors import GispError


def lock_path(target: str | Path) -> Path:
    target = Path(target).absolute()
    return target.parent / f".{target.name}.lock"


@contextmanager
def locked(target: str | Path, command: str) -> Iterator[None]:
    """Hold the lock of ``target`` while the block runs (see the module docstring)."""
    path = lock_path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise GispError(f"{target} is in use by {holder}; wait for it to finish or stop it") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"gisp {command} (pid {os.getpid()})".encode(), 0)
        yield
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)  # releases the flock
