"""A commit stopped inside its commit step, then its session killed: gated,
not timed. The test holds the flock on the staged upload, so the real
shell's `commit NAME` waits for it (seen in /proc/locks); the test then stops
the relay from taking new connections, kills the sshd session process
serving the commit, and lets go of the lock. The carrier's tests and the
failure drills inject this fault."""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
from collections.abc import Iterator
from pathlib import Path

from testbed.netproxy import NetProxy
from testbed.processes import flock_waiters, parent_pid
from testbed.server import Account
from testbed.waiting import wait_until


@contextlib.contextmanager
def staged_upload_locked(account: Account, name: str) -> Iterator[int]:
    """Hold the exclusive flock on NAME's staged upload (waiting for a put
    that still holds it): a `commit NAME` waits inside the commit step until
    the block ends. Yield the staged file's inode."""
    path = account.storage / f".{name}.pending"
    wait_until(path.exists, f"{name} to be staged", timeout=60)
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield os.fstat(fd).st_ino
    finally:
        os.close(fd)  # the flock goes with the descriptor


def kill_the_waiting_commit(proxy: NetProxy, inode: int, also_the_shell: bool = False) -> None:
    """Once a commit shell waits for the staged upload's lock (INODE): refuse
    new connections (the carrier cannot look before the test lets it), then
    kill the sshd session process serving it (and, ALSO_THE_SHELL, the shell)."""
    wait_until(lambda: flock_waiters(inode), "a commit to reach the lock", timeout=60)
    [shell] = flock_waiters(inode)
    assert b"commit" in Path(f"/proc/{shell}/cmdline").read_bytes()
    proxy.down(cut=False)
    session = parent_pid(shell)
    if also_the_shell:
        os.kill(shell, signal.SIGKILL)
    os.kill(session, signal.SIGKILL)
