"""`get NAME` and `check NAME`: read a stored backup, never following a symlink.

get streams D frames straight from the file to stdout with sendfile (no copy
through Python) and ends with an E frame carrying the STORED size and digest:
the client verifies the bytes against what was verified at put time. If the
file does not hold exactly the stored size, get fails instead of sending an E
frame that would not match.
"""

from __future__ import annotations

import errno
import hashlib
import os

import qbackup_protocol as protocol

from .errors import BadStream, StorageError
from .storage import StoredDigest, open_backup_by_name, read_record
from .streams import enlarge_pipe, write_all

READ_SIZE = 4 * 1024 * 1024


def send_backup(root_fd: int, name: str, stdout_fd: int) -> StoredDigest:
    """Given the root descriptor, a checked NAME and stdout, stream the backup
    framed; return its stored digest. Raise NoSuchBackup if missing, BadStream
    if it has no digest record or its size is not the recorded one."""
    dir_fd, fd, leaf, info = open_backup_by_name(root_fd, name)
    try:
        stored = read_record(dir_fd, leaf)
        # Without a record there is nothing the client could verify against.
        if stored is None:
            raise BadStream("backup has no digest record (interrupted put?); it cannot be verified")
        if info.st_size != stored.size:
            raise BadStream("backup size differs from its record; run check")
        enlarge_pipe(stdout_fd)
        sent = 0
        while sent < stored.size:
            length = min(protocol.MAX_DATA_FRAME, stored.size - sent)
            write_all(stdout_fd, protocol.encode_data_header(length))
            _send_exactly(fd, stdout_fd, sent, length)
            sent += length
        # The size may have changed while we sent: then the E frame would lie.
        if os.fstat(fd).st_size != stored.size:
            raise BadStream("backup changed while it was being sent")
        write_all(stdout_fd, protocol.encode_end_frame(stored.size, bytes.fromhex(stored.sha256)))
        return stored
    finally:
        os.close(fd)
        os.close(dir_fd)


def _send_exactly(fd: int, stdout_fd: int, offset: int, length: int) -> None:
    """Given the file, stdout, an offset and a length, copy exactly that range;
    raise BadStream if the file ends early."""
    end = offset + length
    while offset < end:
        try:
            count = os.sendfile(stdout_fd, fd, offset, end - offset)
        except OSError as error:
            if error.errno in (errno.EINVAL, errno.ENOSYS):  # stdout cannot take sendfile
                count = _copy_by_read(fd, stdout_fd, offset, end - offset)
            else:
                raise
        if count == 0:
            raise BadStream("backup shrank while it was being sent")
        offset += count


def _copy_by_read(fd: int, stdout_fd: int, offset: int, length: int) -> int:
    data = os.pread(fd, min(length, READ_SIZE), offset)
    write_all(stdout_fd, data)
    return len(data)


def hash_file(fd: int) -> tuple[int, str]:
    """Given a descriptor open for reading, return (size, SHA-256 hex) of its content."""
    hasher = hashlib.sha256()
    buffer = bytearray(READ_SIZE)
    view = memoryview(buffer)
    size = 0
    while True:
        count = os.readv(fd, [view])
        if count == 0:
            return size, hasher.hexdigest()
        hasher.update(view[:count])
        size += count


def check_backup(root_fd: int, name: str) -> protocol.CheckResult:
    """Given the root descriptor and a checked NAME, re-hash the backup and
    return the stored record with ok=True iff size and digest match the record."""
    dir_fd, fd, leaf, info = open_backup_by_name(root_fd, name)
    try:
        stored = read_record(dir_fd, leaf)
        try:
            size, digest = hash_file(fd)
        except OSError as error:
            reason = os.strerror(error.errno or 0)
            raise StorageError(f"reading the backup failed: {reason}") from None
    finally:
        os.close(fd)
        os.close(dir_fd)
    ok = stored is not None and stored.size == size and stored.sha256 == digest
    record = protocol.BackupRecord(
        name=name,
        size=size,
        sha256=None if stored is None else stored.sha256,
        mtime=int(info.st_mtime),
    )
    return protocol.CheckResult(record=record, ok=ok)
