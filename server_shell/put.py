"""`put NAME`: receive a framed stream into a hidden temporary, verify it,
then STAGE it under NAME's pending name; `commit NAME` (commit.py) publishes it.

Why two phases: when Qubes' backup engine aborts, the carrier most likely
just sees its stdin close -- a clean EOF, indistinguishable from a complete
backup -- and append-only storage could never take a published truncated
backup back. Only dom0 knows whether the backup succeeded, so only its
commit makes NAME appear.

Flow: take the account's upload lock (one put at a time; upload_lock.py) ->
walk the existing directories read-only -> remove stale staged uploads there
-> refuse early (NAME or its pending name taken, no space, few inodes) ->
only now create missing directories -> temporary (O_EXCL, 0600, flock) -> main
thread reads frames into preallocated buffers while a writer thread hashes
and writes them (hashlib and os.write release the GIL, so the two overlap)
-> E frame: compare length and digest, require EOF, one fsync -> link
temporary -> `.NAME.pending` (EEXIST: someone else staged it) -> digest
record `.NAME.pending-sha256` -> unlink the temporary -> fsync the
directory. Any failure on the way removes the temporary (and a pending name
we made), so nothing is staged for a stream that was not complete and valid.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import os
import queue
import stat
import threading
import time
from dataclasses import dataclass

import qbackup_protocol as protocol

from .config import ShellConfig
from .errors import AlreadyExists, BadStream, NoSpace, ShellError, StorageError
from .signals import block_fatal_signals_in_this_thread, fatal_signals_blocked
from .space import SpaceGuard
from .staging import remove_pending, remove_stale_pending
from .storage import (
    FILE_READ_FLAGS,
    StoredDigest,
    create_directories,
    create_temporary,
    is_temporary_name,
    pending_name,
    pending_record_name,
    remove_quietly,
    split_name,
    walk_existing,
    write_digest_file,
)
from .streams import enlarge_pipe, read_exactly, read_some
from .upload_lock import lock_uploads

logger = logging.getLogger(__name__)

# At most BUFFER_COUNT buffers, each allocated only when a frame needs it and
# only as large as the largest frame so far: an idle put holds none, a
# client's usual 1 MiB frames hold 4 MiB, never more than 4 * MAX_DATA_FRAME.
BUFFER_COUNT = 4
STALE_TEMPORARY_AGE = 120  # seconds without a write before a temporary is a crash's leftover
MAX_STALE_SCAN = 10_000
EXISTS_MESSAGE = "a backup with that name already exists; backups are never replaced"
STAGED_MESSAGE = "an upload of that name is already staged; commit it or choose a new name"


@dataclass(frozen=True)
class Received:
    """What a complete, verified stream held (and when it was last written)."""

    size: int
    sha256: str
    mtime: int = 0


class Writer:
    """A thread that hashes and writes the buffers the reader hands it."""

    def __init__(self, fd: int, guard: SpaceGuard) -> None:
        self.fd = fd
        self.guard = guard
        self.hasher = hashlib.sha256()
        self.free: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
        self.work: queue.SimpleQueue[tuple[bytearray, int] | None] = queue.SimpleQueue()
        self.error: BaseException | None = None
        self.allocated = 0
        self.thread = threading.Thread(target=self._run, name="put-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        # Signals go to the main thread, which can hold them off while it
        # stops this thread (finish); delivered here they would not wait.
        block_fatal_signals_in_this_thread()
        while True:
            item = self.work.get()
            if item is None:
                return
            buffer, length = item
            try:
                if self.error is None:
                    self._write(memoryview(buffer)[:length])
            except BaseException as error:  # handed to the reader, raised there
                self.error = error
            finally:
                # Always give the buffer back, so a failed writer never leaves
                # the reader blocked waiting for one.
                self.free.put(buffer)

    def _write(self, view: memoryview) -> None:
        self.hasher.update(view)
        self.guard.claim(len(view))
        offset = 0
        while offset < len(view):
            offset += os.write(self.fd, view[offset:])

    def take_buffer(self, length: int) -> bytearray:
        """Given a frame's length, return an empty buffer of at least that
        size (waiting for one if BUFFER_COUNT are in use); raise the writer's
        error if it failed."""
        if self.allocated < BUFFER_COUNT and self.free.empty():
            self.allocated += 1
            buffer = bytearray(length)
        else:
            buffer = self.free.get()
        self.raise_error()
        if len(buffer) < length:
            buffer = bytearray(length)  # a larger frame: this one replaces the smaller buffer
        return buffer

    def raise_error(self) -> None:
        if self.error is not None:
            raise self.error

    def finish(self) -> None:
        """Wait until everything handed over is written (or the writer failed)
        and the thread is gone, so nothing touches the file descriptor after.
        A fatal signal meanwhile is held until the thread is gone."""
        with fatal_signals_blocked():
            self.work.put(None)
            self.thread.join()


def receive_stream(
    stdin_fd: int, fd: int, guard: SpaceGuard, idle_timeout: float | None = None
) -> Received:
    """Given stdin, the temporary's descriptor, the space guard and the idle
    timeout, copy the framed stream into the file; raise BadStream unless it
    ends with a valid E frame matching length and digest followed by EOF,
    IdleTimeout if the client sends nothing for IDLE_TIMEOUT seconds."""
    writer = Writer(fd, guard)
    header = memoryview(bytearray(protocol.FRAME_HEADER_SIZE))
    total = 0
    try:
        while True:
            read_exactly(stdin_fd, header, idle_timeout)
            try:
                kind, length = protocol.decode_frame_header(bytes(header))
            except protocol.ProtocolError:
                raise BadStream("malformed frame in the upload") from None
            if kind == protocol.FRAME_END:
                break
            buffer = writer.take_buffer(length)
            read_exactly(stdin_fd, memoryview(buffer)[:length], idle_timeout)
            writer.work.put((buffer, length))
            total += length
        end = memoryview(bytearray(protocol.END_PAYLOAD.size))
        read_exactly(stdin_fd, end, idle_timeout)
        declared_size, declared_digest = protocol.decode_end_payload(bytes(end))
        # Nothing may follow the end frame: a stream with trailing bytes is
        # not the stream the client hashed.
        # (A client that never closes after its end frame times out here.)
        if read_some(stdin_fd, 1, idle_timeout) != b"":
            raise BadStream("bytes after the end frame")
    finally:
        writer.finish()
    writer.raise_error()
    if declared_size != total or declared_digest != writer.hasher.digest():
        raise BadStream("upload does not match its declared length and SHA-256")
    return Received(size=total, sha256=writer.hasher.hexdigest())


def remove_stale_temporaries(dir_fd: int, own: str) -> None:
    """Given a directory descriptor and our own temporary's name, remove the
    temporaries crashed puts left there: only those nobody holds a lock on
    (a live put always does) and that have not been written for a while."""
    now = time.time()
    with os.scandir(dir_fd) as scan:
        names = [entry.name for _, entry in zip(range(MAX_STALE_SCAN), scan, strict=False)]
    for name in names:
        # Exact match only: a prefix match once removed the digest record
        # `.tmp-X.sha256` of a client's backup named `tmp-X`.
        if not is_temporary_name(name) or name == own:
            continue
        try:
            fd = os.open(name, FILE_READ_FLAGS, dir_fd=dir_fd)
        except OSError:
            continue
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or now - info.st_mtime < STALE_TEMPORARY_AGE:
                continue
            try:
                # The lock is the proof: a live put holds its temporary's lock
                # until it ends, so a lock we can take means its put is dead.
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            remove_quietly(dir_fd, name)
            logger.debug("removed a stale temporary")
        finally:
            os.close(fd)


def store_backup(
    root_fd: int, name: str, stdin_fd: int, config: ShellConfig
) -> protocol.BackupRecord:
    """Given the root descriptor, a checked NAME, stdin and the account's
    config (space limits, pending_max_age), receive the stream and stage it
    for NAME; return its record. Raise UploadBusy if another put to the
    account runs, AlreadyExists if NAME exists or is already staged, NoSpace,
    BadStream or StorageError; on any failure nothing is staged, the
    temporary is gone, and a put refused up front has created nothing."""
    segments, leaf = split_name(name)
    # One put per account at a time, for its whole length: the space guard's
    # quota reading must not be spent twice by puts racing each other.
    lock_fd = lock_uploads(root_fd)
    try:
        dir_fd, guard = _admit(root_fd, segments, leaf, config)
        try:
            enlarge_pipe(stdin_fd)
            received = _receive_and_stage(dir_fd, leaf, stdin_fd, guard, config.idle_timeout)
        finally:
            os.close(dir_fd)
    finally:
        os.close(lock_fd)
    return protocol.BackupRecord(name, received.size, received.sha256, received.mtime)


def _admit(
    root_fd: int, segments: list[str], leaf: str, config: ShellConfig
) -> tuple[int, SpaceGuard]:
    """Given the name's directory segments and leaf, decide whether the put
    may start and return (its directory's descriptor, the space guard).
    Everything that can refuse runs BEFORE any directory is created, so a
    refused put leaves no trace (20 refused puts once left 141 directories)."""
    parent_fd, missing = walk_existing(root_fd, segments)
    try:
        if not missing:
            # Abandoned uploads go first: they may hold this very name, and
            # they count against the quota the guard below computes.
            remove_stale_pending(parent_fd, config.pending_max_age)
            # Refuse early, before the client sends hundreds of GiB for
            # nothing. (The link in _stage is still the real, race-free guard.)
            if exists(parent_fd, leaf):
                raise AlreadyExists(EXISTS_MESSAGE)
            if exists(parent_fd, pending_name(leaf)):
                raise AlreadyExists(STAGED_MESSAGE)
        guard = SpaceGuard(root_fd, config.reserve, config.quota)
        return create_directories(parent_fd, missing), guard
    finally:
        os.close(parent_fd)


def exists(dir_fd: int, leaf: str) -> bool:
    """Given a directory descriptor and an entry name, return whether anything
    (file, directory, symlink) is there."""
    try:
        os.stat(leaf, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _receive_and_stage(
    dir_fd: int, leaf: str, stdin_fd: int, guard: SpaceGuard, idle_timeout: float
) -> Received:
    temp_name, fd = create_temporary(dir_fd)
    try:
        # The flock also covers the staged inode (the same inode under its
        # pending name) until its record is written: a commit waits for it.
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        remove_stale_temporaries(dir_fd, temp_name)
        try:
            received = receive_stream(stdin_fd, fd, guard, idle_timeout)
            os.fsync(fd)
            mtime = int(os.fstat(fd).st_mtime)
        except OSError as error:
            raise _storage_error(error) from None
        _stage(dir_fd, leaf, temp_name, received)
    finally:
        # Not to be cut short by a signal: the temporary must not survive.
        with fatal_signals_blocked():
            os.close(fd)
            remove_quietly(dir_fd, temp_name)
    os.fsync(dir_fd)
    return Received(received.size, received.sha256, mtime)


def _stage(dir_fd: int, leaf: str, temp_name: str, received: Received) -> None:
    """Given the verified temporary, link it to LEAF's pending name and write
    the pending digest record; raise AlreadyExists if LEAF is taken meanwhile."""
    try:
        # linkat() never replaces an existing entry: of two puts of one name
        # exactly one stages, and a staged upload is never swapped for another.
        os.link(
            temp_name, pending_name(leaf), src_dir_fd=dir_fd, dst_dir_fd=dir_fd,
            follow_symlinks=False,
        )
    except FileExistsError:
        raise AlreadyExists(STAGED_MESSAGE) from None
    try:
        # A commit of an earlier upload of this name may have published NAME
        # after our early check (it links NAME before it unlinks its pending
        # name, so NAME is visible by now): an upload that can never be
        # committed is not left behind.
        if exists(dir_fd, leaf):
            raise AlreadyExists(EXISTS_MESSAGE)
        digest = StoredDigest(size=received.size, sha256=received.sha256)
        write_digest_file(dir_fd, pending_record_name(leaf), digest)
    except BaseException:
        # The pending name is ours (we just linked it and hold its lock).
        remove_pending(dir_fd, leaf)
        raise


def _storage_error(error: OSError) -> ShellError:
    """Given an OSError from writing, return the ShellError to report."""
    if isinstance(error, ShellError):
        return error
    if error.errno in (errno.ENOSPC, errno.EDQUOT):  # the disk or a filesystem quota is full
        return NoSpace("the server's disk is full")
    return StorageError(f"writing the backup failed: {os.strerror(error.errno or 0)}")
