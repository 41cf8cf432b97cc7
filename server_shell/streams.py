"""Low-level helpers for the shell's stdin/stdout pipes."""

from __future__ import annotations

import fcntl
import os
import select
import stat

from .errors import BadStream, IdleTimeout

PIPE_SIZE = 1024 * 1024  # sshd's 64 KiB pipes stall big transfers


def enlarge_pipe(fd: int) -> None:
    """Given stdin or stdout, raise its pipe buffer to PIPE_SIZE if it is a
    pipe (best effort: over the per-user pipe limit it stays as it is)."""
    try:
        if stat.S_ISFIFO(os.fstat(fd).st_mode):
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:
        pass  # slower, still correct


def wait_readable(fd: int, idle_timeout: float | None) -> None:
    """Given a descriptor and a timeout in seconds (None = forever), return
    once it can be read; raise IdleTimeout if nothing arrives in time."""
    if idle_timeout is None:
        return
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    # Without a limit, a client that opens a put and then sends nothing (or
    # never closes after its end frame) holds the account's upload lock and
    # the shell's memory for ever.
    if not poller.poll(idle_timeout * 1000):
        raise IdleTimeout(f"no data for {idle_timeout:.0f} s; the upload was abandoned")


def read_some(fd: int, size: int, idle_timeout: float | None = None) -> bytes:
    """Given a descriptor, a size and the idle timeout, return up to SIZE
    bytes (b"" at EOF); raise IdleTimeout if nothing arrives in time."""
    wait_readable(fd, idle_timeout)
    return os.read(fd, size)


def read_exactly(fd: int, view: memoryview, idle_timeout: float | None = None) -> None:
    """Given a descriptor, a view and the idle timeout, fill the view; raise
    BadStream on EOF, IdleTimeout if no byte arrives for IDLE_TIMEOUT seconds."""
    offset = 0
    while offset < len(view):
        wait_readable(fd, idle_timeout)
        count = os.readv(fd, [view[offset:]])
        if count == 0:
            raise BadStream("stream ended without an end frame (truncated upload)")
        offset += count


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """Given a descriptor and bytes, write them all."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
