"""Ending the ``put`` running in this VM: what ``qubes.BackupCarrier+abort`` does.

Why it exists: when Qubes' backup is cancelled (or fails inside the engine),
qubesd waits for the carrier's command to EXIT before it closes the stream,
so the ``put`` would wait for more data until the server gave up. dom0 calls
``abort`` after Cancel; the put then stops WITHOUT sending the end frame (so
the server stages nothing) and exits non-zero.

How a put is found without races: each put holds an exclusive flock on its
own file ``PID.lock`` in the runtime directory for its whole life (created
under a temporary name, locked, then renamed into place, so a ``*.lock`` that
can be locked by someone else belongs to a put that is gone). A lock that is
held proves its holder is alive, so the PID written inside is that put's
(the descriptor is close-on-exec and the carrier never forks): no PID file
can name a stranger's reused PID.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import time
from collections.abc import Mapping
from pathlib import Path

logger = logging.getLogger(__name__)

RUNTIME_SUBDIR = ".cache/qbackup-carrier/puts"
ABORT_WAIT = 10.0  # seconds abort waits for the put to end
KILL_AFTER = 8.0  # seconds after SIGTERM before a put that ignores it is killed
POLL_INTERVAL = 0.05
MAX_PID_TEXT = 32


def runtime_dir(environ: Mapping[str, str]) -> Path:
    """Given the environment, return the directory where running puts register
    (per user: put and abort both run as the VM's user through qrexec)."""
    home = environ.get("HOME") or os.path.expanduser("~")
    return Path(home) / RUNTIME_SUBDIR


def register_put(environ: Mapping[str, str]) -> None:
    """Register this process as a running put until it exits: its lock is
    released by the kernel only when the process is gone, so abort never
    reports "no put runs" while this one still could send anything."""
    directory = runtime_dir(environ)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    for _, fd in running_puts(directory):  # also forgets the files of ended puts
        os.close(fd)
    pid = os.getpid()
    temporary = directory / f"new-{pid}"
    fd = os.open(
        temporary, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600
    )
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, f"{pid}\n".encode())
        # Only a locked file ever carries the .lock name (see the module text).
        os.rename(temporary, directory / f"{pid}.lock")
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    # FD stays open (close-on-exec) for the rest of the process's life.


def running_puts(directory: Path) -> list[tuple[int, int]]:
    """Given the runtime directory, return (pid, locked fd) for every put that
    is running now; remove the files of puts that are gone. The caller closes
    the fds (each stays open so the caller can wait on the same lock)."""
    found: list[tuple[int, int]] = []
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return found
    for name in names:
        if not name.endswith(".lock"):
            continue
        try:
            fd = os.open(directory / name, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            continue  # gone meanwhile, or not a regular file we made
        if not is_locked(fd):
            # Its put ended without removing it (killed): forget it.
            with contextlib.suppress(OSError):
                os.unlink(directory / name)
            os.close(fd)
            continue
        try:
            pid = int(os.read(fd, MAX_PID_TEXT).decode("ascii").strip())
        except (OSError, ValueError):
            os.close(fd)
            continue
        found.append((pid, fd))
    return found


def is_locked(fd: int) -> bool:
    """Given an open lock file, return whether a running put still holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    fcntl.flock(fd, fcntl.LOCK_UN)
    return False


def abort_puts(environ: Mapping[str, str], wait: float = ABORT_WAIT) -> bool:
    """Given the environment, send SIGTERM to every running put and wait up
    to WAIT seconds for all of them to end (SIGKILL for one that ignores
    SIGTERM for KILL_AFTER seconds); return True once none runs (also when
    none ran), False if one still runs after WAIT."""
    puts = running_puts(runtime_dir(environ))
    try:
        for pid, _ in puts:
            logger.info("aborting the running put (pid %d)", pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        started = time.monotonic()
        killed = False
        while any(is_locked(fd) for _, fd in puts):
            elapsed = time.monotonic() - started
            if elapsed >= wait:
                return False
            if not killed and elapsed >= min(KILL_AFTER, wait):
                killed = True
                for pid, fd in puts:
                    if is_locked(fd):
                        logger.warning("put (pid %d) ignored SIGTERM: killing it", pid)
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGKILL)
            time.sleep(POLL_INTERVAL)
        return True
    finally:
        for _, fd in puts:
            os.close(fd)
        for _, fd in running_puts(runtime_dir(environ)):  # forgets the files of ended puts
            os.close(fd)
