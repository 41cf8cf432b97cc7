"""The disk guard: free space above the reserve, bytes under the quota,
free inodes.

A put asks the guard before every write. Puts of one account never run side
by side (upload_lock.py), so the quota measured when a put starts stays
true while it runs. Free space is shared with other accounts and programs:
the guard re-reads it (statvfs) after at most CHECK_INTERVAL bytes, and
after at most 1/SHARED_WRITERS of the headroom it last saw, so up to
SHARED_WRITERS puts of different accounts on one filesystem together write
at most about that headroom before each of them looks again.
"""

from __future__ import annotations

import os
import stat

import qbackup_protocol as protocol

from .errors import NoSpace
from .storage import DIRECTORY_FLAGS

CHECK_INTERVAL = 32 * 1024 * 1024
SHARED_WRITERS = 8
# Free inodes (files, directories) below which a put is refused up front: a
# filesystem out of inodes fails everything on it, however many bytes are free.
MIN_FREE_INODES = 1024
MAX_DEPTH = protocol.MAX_NAME_DEPTH


def free_bytes(fd: int) -> int:
    """Given any descriptor on the storage filesystem, return the bytes an
    unprivileged writer may still use there."""
    result = os.fstatvfs(fd)
    return result.f_bavail * result.f_frsize


def inodes_short(fd: int) -> bool:
    """Given any descriptor on the storage filesystem, return True if it has
    fewer than MIN_FREE_INODES free inodes (False if it does not count them)."""
    result = os.fstatvfs(fd)
    # f_files == 0: the filesystem allocates inodes dynamically (btrfs).
    return result.f_files > 0 and result.f_favail < MIN_FREE_INODES


def used_bytes(dir_fd: int) -> int:
    """Given the root descriptor, return the disk space (allocated blocks,
    not file sizes) of everything below it -- backups, records, staged
    uploads, temporaries and the directories themselves -- skipping
    dot-directories such as ~/.ssh, never following symlinks, and counting a
    hard-linked inode (a staged upload while it is committed) once."""
    return _used_below(dir_fd, 0, set())


def _used_below(dir_fd: int, depth: int, seen: set[tuple[int, int]]) -> int:
    total = 0
    with os.scandir(dir_fd) as scan:
        names = [entry.name for entry in scan]
    for name in names:
        try:
            info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            continue
        is_directory = stat.S_ISDIR(info.st_mode) and not name.startswith(".")
        if not (stat.S_ISREG(info.st_mode) or is_directory) or (info.st_dev, info.st_ino) in seen:
            continue
        seen.add((info.st_dev, info.st_ino))
        # Blocks, not st_size: a thousand 1-byte backups fill a thousand
        # blocks (and their records as many), and directories take blocks too.
        total += info.st_blocks * 512
        if is_directory and depth < MAX_DEPTH:
            try:
                child = os.open(name, DIRECTORY_FLAGS, dir_fd=dir_fd)
            except OSError:
                continue
            try:
                total += _used_below(child, depth + 1, seen)
            finally:
                os.close(child)
    return total


class SpaceGuard:
    """Tracks one put's writes against the reserve and the quota."""

    def __init__(self, root_fd: int, reserve: int, quota: int | None) -> None:
        """Given the root descriptor, the reserve and the quota (None = none),
        prepare the guard; raise NoSpace if free space is already below the
        reserve or the quota is already used up."""
        self.root_fd = root_fd
        self.reserve = reserve
        self.quota_left = None if quota is None else quota - used_bytes(root_fd)
        self.written = 0
        self.headroom = 0
        self.since_check = 0
        self._refresh()
        # Refuse before a single byte arrives (and before any directory is
        # made): the client learns at once, and a refused put changes nothing.
        if self.headroom < 0:
            raise NoSpace("free space on the server is below its reserve; free some space")
        if self.quota_left is not None and self.quota_left <= 0:
            raise NoSpace("the account's quota is used up; prune old backups")
        if inodes_short(root_fd):
            raise NoSpace("the server's filesystem is running out of inodes; free some files")

    def _refresh(self) -> None:
        self.headroom = free_bytes(self.root_fd) - self.reserve
        self.since_check = 0

    def claim(self, count: int) -> None:
        """Given the size of the next write, allow it; raise NoSpace if it would
        exceed the quota or bring free space below the reserve."""
        if self.quota_left is not None and self.written + count > self.quota_left:
            raise NoSpace("this backup would exceed the account's quota")
        if self.since_check + count > min(CHECK_INTERVAL, self.headroom // SHARED_WRITERS):
            # Free space may have changed (our own writes, other writers):
            # look again rather than trust the last reading.
            self._refresh()
            if count > self.headroom:
                raise NoSpace("the server's free space would drop below its reserve")
        self.since_check += count
        self.written += count
