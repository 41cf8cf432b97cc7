"""Low-level helpers for the shell's stdin/stdout pipes."""

from __future__ import annotations

import fcntl
import os
import stat

from .errors import BadStream

PIPE_SIZE = 1024 * 1024  # sshd's 64 KiB pipes stall big transfers


def enlarge_pipe(fd: int) -> None:
    """Given stdin or stdout, raise its pipe buffer to PIPE_SIZE if it is a
    pipe (best effort: over the per-user pipe limit it stays as it is)."""
    try:
        if stat.S_ISFIFO(os.fstat(fd).st_mode):
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    except OSError:
        pass  # slower, still correct


def read_exactly(fd: int, view: memoryview) -> None:
    """Given a descriptor and a view, fill the view; raise BadStream on EOF."""
    offset = 0
    while offset < len(view):
        count = os.readv(fd, [view[offset:]])
        if count == 0:
            raise BadStream("stream ended without an end frame (truncated upload)")
        offset += count


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """Given a descriptor and bytes, write them all."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
