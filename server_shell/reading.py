"""`get NAME [OFFSET]`, `check NAME`, `list [PREFIX]` and `info`: reading the
storage, never following a symlink, never waiting for the client for more
than idle_timeout (storage.timed).

get sends D frames straight from the file (sendfile, no copy through Python)
from OFFSET on, then an E frame with the WHOLE backup's length and digest
from its record, so a client that resumes a download still checks every
byte; if the file does not hold exactly the recorded size, get fails rather
than send an E frame that would not match.
"""

import hashlib
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass

from qbackup_protocol import wire

from . import storage
from .config import BadStream, NotFound


@dataclass(frozen=True)
class Stored:
    """A committed backup opened for reading, and its record (None if it has none)."""

    file: storage.Opened
    record: storage.Digest | None


def open_backup(root_fd: int, name: str) -> Stored:
    """Given the root and a checked NAME, return the backup opened, and its record."""
    place = storage.split_name(name)
    dir_fd = storage.open_dirs(root_fd, place.dirs, "no such backup").fd
    try:
        opened = storage.open_file(dir_fd, place.leaf)
        return Stored(opened, storage.read_digest(dir_fd, storage.dot(place.leaf, "record")))
    finally:
        os.close(dir_fd)


def send_backup(root_fd: int, name: str, offset: int, stdout: int, timeout: float) -> int:
    """Given the root, a NAME, a start OFFSET, stdout and the idle timeout,
    stream the backup framed from OFFSET; return its size. Raise NotFound,
    BadStream if it has no record, its size differs, or OFFSET is past its end."""
    backup = open_backup(root_fd, name)
    fd = backup.file.fd
    try:
        if backup.record is None:
            raise BadStream("backup has no digest record (interrupted put?); it cannot be verified")
        size = backup.record.count
        if backup.file.info.st_size != size:
            raise BadStream("backup size differs from its record; run check")
        if offset > size:
            raise BadStream("the offset is past the end of the backup")
        storage.enlarge_pipe(stdout)
        while offset < size:
            length = min(wire.MAX_DATA_FRAME, size - offset)
            storage.write_all(stdout, wire.encode_data_header(length), timeout)
            end = offset + length
            while offset < end:  # sendfile: no copy through Python (stdout: sshd's pipe)
                count = storage.timed(lambda: os.sendfile(stdout, fd, offset, end - offset),  # noqa: B023
                                      timeout)
                if count == 0:
                    raise BadStream("backup shrank while it was being sent")
                offset += count
        if os.fstat(fd).st_size != size:  # then the E frame would lie
            raise BadStream("backup changed while it was being sent")
        digest = bytes.fromhex(backup.record.sha256)
        storage.write_all(stdout, wire.encode_end_frame(size, digest), timeout)
        return size
    finally:
        os.close(fd)


def check_backup(root_fd: int, name: str) -> wire.CheckResult:
    """Given the root and a NAME, re-hash the backup; return its record with
    ok=True iff size and digest match the digest record."""
    backup = open_backup(root_fd, name)
    hasher = hashlib.sha256()
    try:
        size = storage.hash_file(backup.file.fd, hasher)  # an OSError: ShellExit.IO, "I/O error"
    finally:
        os.close(backup.file.fd)
    ok = backup.record == storage.Digest(size, hasher.hexdigest())
    sha256 = None if backup.record is None else backup.record.sha256
    record = wire.BackupRecord(name, size, sha256, int(backup.file.info.st_mtime))
    return wire.CheckResult(record=record, ok=ok)


def list_backups(root_fd: int, prefix: str) -> Iterator[wire.BackupRecord | wire.ListEnd]:
    """Given the root and a checked PREFIX ("" = all), yield a record per
    committed backup whose name starts with it, in segment order, at most
    MAX_LIST_ENTRIES, then one ListEnd. Only the directory PREFIX names is
    walked; the rest filters (so "2024/db" matches "2024/db-1")."""
    directory = os.path.dirname(prefix)
    segments = directory.split("/") if directory else []
    count = 0
    truncated = False
    try:
        dir_fd = storage.open_dirs(root_fd, segments, "no such backup").fd
    except NotFound:
        yield wire.ListEnd(count=0, truncated=False)
        return
    try:
        base = f"{directory}/" if directory else ""
        for found in storage.walk(dir_fd, base, len(segments)):
            # Backups only: regular files a client could have named, within the name bounds.
            if not (stat.S_ISREG(found.info.st_mode) and storage.is_client_name(found.leaf)
                    and found.name.startswith(prefix) and len(found.name) <= wire.MAX_NAME_LENGTH):
                continue
            if count == wire.MAX_LIST_ENTRIES:
                truncated = True
                break
            stored = storage.read_digest(found.dir_fd, storage.dot(found.leaf, "record"))
            sha256 = None if stored is None else stored.sha256
            yield wire.BackupRecord(found.name, found.info.st_size, sha256,
                                    int(found.info.st_mtime))
            count += 1
    finally:
        os.close(dir_fd)
    yield wire.ListEnd(count=count, truncated=truncated)


def describe_space(root_fd: int, reserve: int, quota: int | None) -> wire.ServerInfo:
    """Given the root, the reserve and the quota, return what `info` answers
    (the storage.sweep's count, removing nothing)."""
    free = storage.free_bytes(root_fd)
    available = max(0, free - reserve)
    used = None
    if quota is not None:
        used = storage.sweep(root_fd, None).used
        available = min(available, max(0, quota - used))
    return wire.ServerInfo(wire.PROTOCOL_VERSION, free, reserve, available, quota, used)

