"""`put NAME`: receive a framed stream into a hidden temporary, verify it,
then link it to NAME — which never replaces anything.

Flow: refuse early (name taken, no space) -> temporary (O_EXCL, 0600, flock)
-> main thread reads frames into preallocated buffers while a writer thread
hashes and writes them (hashlib and os.write release the GIL, so the two
overlap) -> E frame: compare length and digest, require EOF, one fsync ->
link temporary -> NAME (EEXIST: someone else won) -> digest record -> unlink
the temporary -> fsync the directory. Any failure on the way removes the
temporary, so NAME never appears for a stream that was not complete and valid.
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

from .errors import AlreadyExists, BadStream, NoSpace, ShellError, StorageError
from .space import SpaceGuard
from .storage import (
    FILE_READ_FLAGS,
    TEMP_PREFIX,
    StoredDigest,
    create_temporary,
    open_directory,
    remove_quietly,
    split_name,
    write_record,
)
from .streams import enlarge_pipe, read_exactly

logger = logging.getLogger(__name__)

BUFFER_COUNT = 4  # memory stays at BUFFER_COUNT * MAX_DATA_FRAME whatever the size
STALE_TEMPORARY_AGE = 120  # seconds without a write before a temporary is a crash's leftover
MAX_STALE_SCAN = 10_000
EXISTS_MESSAGE = "a backup with that name already exists; backups are never replaced"


@dataclass(frozen=True)
class Received:
    """What a complete, verified stream held."""

    size: int
    sha256: str


class Writer:
    """A thread that hashes and writes the buffers the reader hands it."""

    def __init__(self, fd: int, guard: SpaceGuard) -> None:
        self.fd = fd
        self.guard = guard
        self.hasher = hashlib.sha256()
        self.free: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
        self.work: queue.SimpleQueue[tuple[bytearray, int] | None] = queue.SimpleQueue()
        self.error: BaseException | None = None
        for _ in range(BUFFER_COUNT):
            self.free.put(bytearray(protocol.MAX_DATA_FRAME))
        self.thread = threading.Thread(target=self._run, name="put-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
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

    def take_buffer(self) -> bytearray:
        """Return an empty buffer; raise the writer's error if it failed."""
        buffer = self.free.get()
        self.raise_error()
        return buffer

    def raise_error(self) -> None:
        if self.error is not None:
            raise self.error

    def finish(self) -> None:
        """Wait until everything handed over is written (or the writer failed)
        and the thread is gone, so nothing touches the file descriptor after."""
        self.work.put(None)
        self.thread.join()


def receive_stream(stdin_fd: int, fd: int, guard: SpaceGuard) -> Received:
    """Given stdin, the temporary's descriptor and the space guard, copy the
    framed stream into the file; raise BadStream unless it ends with a valid E
    frame matching length and digest followed by EOF."""
    writer = Writer(fd, guard)
    header = memoryview(bytearray(protocol.FRAME_HEADER_SIZE))
    total = 0
    try:
        while True:
            read_exactly(stdin_fd, header)
            try:
                kind, length = protocol.decode_frame_header(bytes(header))
            except protocol.ProtocolError:
                raise BadStream("malformed frame in the upload") from None
            if kind == protocol.FRAME_END:
                break
            buffer = writer.take_buffer()
            read_exactly(stdin_fd, memoryview(buffer)[:length])
            writer.work.put((buffer, length))
            total += length
        end = memoryview(bytearray(protocol.END_PAYLOAD.size))
        read_exactly(stdin_fd, end)
        declared_size, declared_digest = protocol.decode_end_payload(bytes(end))
        # Nothing may follow the end frame: a stream with trailing bytes is
        # not the stream the client hashed.
        if os.read(stdin_fd, 1) != b"":
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
        if not name.startswith(TEMP_PREFIX) or name == own:
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


def store_backup(root_fd: int, name: str, stdin_fd: int, reserve: int,
                 quota: int | None) -> protocol.BackupRecord:
    """Given the root descriptor, a checked NAME, stdin and the space limits,
    receive the stream and store it as NAME; return its record. Raise
    AlreadyExists if NAME is taken, NoSpace, BadStream or StorageError; on
    any failure NAME does not appear and the temporary is gone."""
    segments, leaf = split_name(name)
    dir_fd = open_directory(root_fd, segments, create=True)
    try:
        # Refuse early, before the client sends hundreds of GiB for nothing.
        # (The link below is still the real, race-free guard.)
        if _exists(dir_fd, leaf):
            raise AlreadyExists(EXISTS_MESSAGE)
        guard = SpaceGuard(root_fd, reserve, quota)
        enlarge_pipe(stdin_fd)
        received = _receive_and_link(dir_fd, leaf, stdin_fd, guard)
        mtime = int(os.stat(leaf, dir_fd=dir_fd, follow_symlinks=False).st_mtime)
        return protocol.BackupRecord(name, received.size, received.sha256, mtime)
    finally:
        os.close(dir_fd)


def _exists(dir_fd: int, leaf: str) -> bool:
    try:
        os.stat(leaf, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _receive_and_link(dir_fd: int, leaf: str, stdin_fd: int, guard: SpaceGuard) -> Received:
    temp_name, fd = create_temporary(dir_fd)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        remove_stale_temporaries(dir_fd, temp_name)
        try:
            received = receive_stream(stdin_fd, fd, guard)
            os.fsync(fd)
        except OSError as error:
            raise _storage_error(error) from None
        try:
            # linkat() never replaces an existing entry: of two puts of one
            # name exactly one succeeds, and an existing backup is untouchable.
            os.link(temp_name, leaf, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
        except FileExistsError:
            raise AlreadyExists(EXISTS_MESSAGE) from None
        write_record(dir_fd, leaf, StoredDigest(size=received.size, sha256=received.sha256))
    finally:
        os.close(fd)
        remove_quietly(dir_fd, temp_name)
    os.fsync(dir_fd)
    return received


def _storage_error(error: OSError) -> ShellError:
    """Given an OSError from writing, return the ShellError to report."""
    if isinstance(error, ShellError):
        return error
    if error.errno in (errno.ENOSPC, errno.EDQUOT):  # the disk or a filesystem quota is full
        return NoSpace("the server's disk is full")
    return StorageError(f"writing the backup failed: {os.strerror(error.errno or 0)}")
