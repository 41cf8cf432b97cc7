"""One backup per carrier at a time: an fcntl lock file per carrier VM.

Two runs through one carrier would share its network, its free space estimate
and Qubes' backup profile name; an overlapping cron or timer run must stop at
once with a clear message and touch nothing.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dom0.errors import LockHeld, QbackupError


def default_lock_dir() -> Path:
    """Return ~/.cache/qbackup/locks. Deliberately not $XDG_RUNTIME_DIR: cron
    does not set it and systemd does, and a cron run and a timer run must
    find the SAME lock."""
    return Path.home() / ".cache" / "qbackup" / "locks"


@contextmanager
def carrier_lock(lock_dir: Path, carrier: str) -> Iterator[None]:
    """Given the lock directory and a (validated) carrier VM name, hold its lock
    for the block; raise LockHeld at once if another process holds it."""
    try:
        lock_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = lock_dir / f"carrier-{carrier}.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError as error:
        raise QbackupError(f"cannot create the lock in {lock_dir}: {error.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockHeld(
                f"another qbackup run is using carrier {carrier}; try again when it ends"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)  # closing releases the lock
