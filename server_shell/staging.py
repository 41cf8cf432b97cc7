"""Staged uploads (`put` stages, `commit` publishes): locking them, and
removing the ones nobody committed.

A staged upload is `.LEAF.pending` (the verified data) plus
`.LEAF.pending-sha256` (its digest record), in the directory NAME will live in.
Whoever changes a staged upload -- the put finishing it, a commit publishing
it, the cleanup removing it -- holds an exclusive flock on its data inode and
first checks that the pending name still points at that inode. So a commit
never publishes data that a cleanup is removing, and two commits of one name
are serialized: the second finds nothing staged.

A staged upload nobody committed (dom0 died between put and commit, or Qubes
aborted after the stream had ended) is removed once it is older than
`pending_max_age` -- by a later put into the same directory, or by prune.
Nothing else reachable over SSH ever removes one.
"""

from __future__ import annotations

import fcntl
import logging
import os
import stat
import time

from .storage import (
    FILE_READ_FLAGS,
    PENDING_SUFFIX,
    is_client_name,
    pending_name,
    pending_record_name,
    remove_quietly,
)

logger = logging.getLogger(__name__)

MAX_PENDING_SCAN = 10_000


def lock_pending(dir_fd: int, leaf: str) -> tuple[int, os.stat_result] | None:
    """Given a directory descriptor and a backup's last segment, return (fd,
    stat) of its staged data, opened without following symlinks and
    exclusively flocked (waiting for a put, commit or cleanup still holding
    it); return None if nothing is staged, or it is not a regular file."""
    try:
        fd = os.open(pending_name(leaf), FILE_READ_FLAGS, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            return None
        fcntl.flock(fd, fcntl.LOCK_EX)
        # Lock, then look again: whoever held the lock before us may have
        # published or removed this inode, and then the name is gone or
        # (a later put) names another one that we have not checked.
        if not _names_inode(dir_fd, pending_name(leaf), info):
            os.close(fd)
            return None
    except BaseException:
        os.close(fd)
        raise
    return fd, info


def _names_inode(dir_fd: int, name: str, info: os.stat_result) -> bool:
    try:
        now = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return False
    return (now.st_dev, now.st_ino) == (info.st_dev, info.st_ino)


def remove_pending(dir_fd: int, leaf: str) -> None:
    """Given a directory descriptor and a leaf whose staged upload we hold
    locked (or just made), remove its record, then its data: a crash in
    between leaves data without a record, which commit refuses and the age
    cleanup removes -- never a record that could be mistaken for a later put's."""
    remove_quietly(dir_fd, pending_record_name(leaf))
    remove_quietly(dir_fd, pending_name(leaf))


def staged_leaves(dir_fd: int) -> list[str]:
    """Given a directory descriptor, return the leaves that have staged data
    there (at most MAX_PENDING_SCAN entries are looked at)."""
    with os.scandir(dir_fd) as scan:
        names = [entry.name for _, entry in zip(range(MAX_PENDING_SCAN), scan, strict=False)]
    leaves = []
    for name in names:
        if name.startswith(".") and name.endswith(PENDING_SUFFIX):
            leaf = name[1 : -len(PENDING_SUFFIX)]
            # Only names this shell could have made: anything else is not ours to remove.
            if is_client_name(leaf):
                leaves.append(leaf)
    return leaves


def remove_stale_pending(dir_fd: int, max_age: int) -> int:
    """Given a directory descriptor and the age in seconds, remove the staged
    uploads there whose data was last written more than MAX_AGE ago; return
    how many were removed. Busy ones (locked by a commit) are left alone."""
    removed = 0
    for leaf in staged_leaves(dir_fd):
        locked = _lock_if_stale(dir_fd, leaf, max_age)
        if locked is None:
            continue
        try:
            remove_pending(dir_fd, leaf)
            removed += 1
        finally:
            os.close(locked)
    if removed:
        os.fsync(dir_fd)
        logger.info(
            "removed %d staged upload(s) older than %ds that nobody committed", removed, max_age
        )
    return removed


def _lock_if_stale(dir_fd: int, leaf: str, max_age: int) -> int | None:
    """Given a leaf with staged data, return its flocked descriptor if that
    data is a regular file last written more than MAX_AGE seconds ago; None
    if it is fresh, gone, not a regular file or busy (a commit holds it)."""
    try:
        fd = os.open(pending_name(leaf), FILE_READ_FLAGS, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        # Age by the data's mtime: the last byte its put wrote, seconds before
        # it was staged, whatever the backup's size. The age is read from the
        # inode we lock, so a fresh upload staged under the same name in the
        # meantime is never mistaken for the stale one.
        stale = stat.S_ISREG(info.st_mode) and time.time() - info.st_mtime > max_age
        if stale:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if _names_inode(dir_fd, pending_name(leaf), info):
                return fd
    except BlockingIOError:
        pass
    except BaseException:
        os.close(fd)
        raise
    os.close(fd)
    return None
