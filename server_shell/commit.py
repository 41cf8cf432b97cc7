"""`commit NAME`: publish the upload `put NAME` staged, under NAME.

dom0 sends it only after Qubes reported its backup a success, so a stream
Qubes aborted (which the carrier may have seen as a clean EOF) is never
published. Flow: lock the staged data (staging.lock_pending) -> its digest
record must exist and match its size -> NAME must not exist (73) -> NAME's
digest record, carried over unchanged (the put verified the bytes;
re-hashing hundreds of GiB would only repeat it) -> link `.NAME.pending` ->
NAME (never replaces: EEXIST is 73) -> unlink the pending record and data ->
fsync the directory.

The record is written before the link so that NAME never appears without
its record, and a commit cut off in between can simply be sent again. That
order is safe because, while we hold the lock, nothing but this commit can
create NAME: NAME is only ever made by a commit of `.NAME.pending`, and that
name is ours (no put can stage another while it exists).

Committing twice: the second commit finds nothing staged (66) -- the lock
makes concurrent commits of one name take turns, so exactly one publishes.
"""

from __future__ import annotations

import os

import qbackup_protocol as protocol

from .errors import AlreadyExists, BadStream, NothingStaged
from .put import EXISTS_MESSAGE, exists
from .staging import lock_pending, remove_pending
from .storage import (
    open_directory,
    pending_name,
    pending_record_name,
    read_digest_file,
    split_name,
    write_record,
)

NOTHING_STAGED = "nothing staged under that name (never put, already committed, or expired)"


def commit_backup(root_fd: int, name: str) -> protocol.BackupRecord:
    """Given the root descriptor and a checked NAME, publish NAME's staged
    upload and return NAME's record. Raise NothingStaged if nothing is staged,
    BadStream if the staged upload has no valid record, AlreadyExists if NAME
    exists; on failure NAME does not appear."""
    segments, leaf = split_name(name)
    try:
        dir_fd = open_directory(root_fd, segments, create=False)
    except FileNotFoundError:  # NoSuchBackup: the directory was never made
        raise NothingStaged(NOTHING_STAGED) from None
    try:
        locked = lock_pending(dir_fd, leaf)
        if locked is None:
            raise NothingStaged(NOTHING_STAGED)
        fd, info = locked
        try:
            stored = read_digest_file(dir_fd, pending_record_name(leaf))
            # Without its record (a put that crashed while staging) the bytes
            # cannot be vouched for: publishing them would publish doubt.
            if stored is None or stored.size != info.st_size:
                raise BadStream("the staged upload is incomplete; put the backup again")
            # An existing backup and its record are never touched.
            if exists(dir_fd, leaf):
                raise AlreadyExists(EXISTS_MESSAGE)
            write_record(dir_fd, leaf, stored)
            try:
                # linkat() never replaces: the real guard behind the check above.
                os.link(
                    pending_name(leaf), leaf, src_dir_fd=dir_fd, dst_dir_fd=dir_fd,
                    follow_symlinks=False,
                )
            except FileExistsError:
                raise AlreadyExists(EXISTS_MESSAGE) from None
            remove_pending(dir_fd, leaf)
            os.fsync(dir_fd)
        finally:
            os.close(fd)
    finally:
        os.close(dir_fd)
    return protocol.BackupRecord(name, stored.size, stored.sha256, int(info.st_mtime))

