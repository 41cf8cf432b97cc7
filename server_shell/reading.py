"""`get NAME [OFFSET]`, `check NAME`, `list [PREFIX]` and `info`: reading the
storage, never following a symlink, never waiting for the client for more
than idle_timeout (storage.timed).

get sends D frames straight from the file (sendfile, no copy through Python)
from OFFSET on, then an E frame with the WHOLE backup's length and digest
from its record, so a client that resumes a download still checks every
byte; if the file does not hold exactly the recorded size, get fails rather
than send an E frame that would not match.
"""

import os
import stat
from collections.abc import Iterator

from qbackup_protocol import wire

from . import storage
from .config import BadStream, NotFound


def open_backup(root_fd: int, name: str) -> tuple[int, os.stat_result, tuple[int, str] | None]:
    """Given the root and a checked NAME, return (read fd, stat, its record or None)."""
    segments, leaf = storage.split_name(name)
    dir_fd = storage.open_dirs(root_fd, segments, "no such backup")[0]
    try:
        fd, info = storage.open_file(dir_fd, leaf)
        return fd, info, storage.read_digest(dir_fd, storage.dot(leaf, "record"))
    finally:
        os.close(dir_fd)


def send_backup(root_fd: int, name: str, offset: int, stdout: int, timeout: float) -> int:
    """Given the root, a NAME, a start OFFSET, stdout and the idle timeout,
    stream the backup framed from OFFSET; return its size. Raise NotFound,
    BadStream if it has no record, its size differs, or OFFSET is past its end."""
    fd, info, stored = open_backup(root_fd, name)
    try:
        if stored is None:
            raise BadStream("backup has no digest record (interrupted put?); it cannot be verified")
        size, digest = stored
        if info.st_size != size:
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
        storage.write_all(stdout, wire.encode_end_frame(size, bytes.fromhex(digest)), timeout)
        return size
    finally:
        os.close(fd)


def check_backup(root_fd: int, name: str) -> wire.CheckResult:
    """Given the root and a NAME, re-hash the backup; return its record with
    ok=True iff size and digest match the digest record."""
    fd, info, stored = open_backup(root_fd, name)
    try:
        size, hasher = storage.hash_file(fd)  # an OSError here is ShellExit.IO, "I/O error: ..."
    finally:
        os.close(fd)
    ok = stored == (size, hasher.hexdigest())
    record = wire.BackupRecord(name, size, stored[1] if stored else None, int(info.st_mtime))
    return wire.CheckResult(record=record, ok=ok)


def list_backups(root_fd: int, prefix: str) -> Iterator[wire.BackupRecord | wire.ListEnd]:
    """Given the root and a checked PREFIX ("" = all), yield a record per
    committed backup whose name starts with it, in segment order, at most
    MAX_LIST_ENTRIES, then one ListEnd. Only the directory PREFIX names is
    walked; the rest filters (so "2024/db" matches "2024/db-1")."""
    directory = prefix.rpartition("/")[0]
    segments = directory.split("/") if directory else []
    count, truncated = 0, False
    try:
        dir_fd = storage.open_dirs(root_fd, segments, "no such backup")[0]
    except NotFound:
        yield wire.ListEnd(count=0, truncated=False)
        return
    try:
        base = f"{directory}/" if directory else ""
        for parent_fd, entry, name, info in storage.walk(dir_fd, base, len(segments)):
            # Backups only: regular files a client could have named, within the name bounds.
            if not (stat.S_ISREG(info.st_mode) and storage.is_client_name(entry)
                    and name.startswith(prefix) and len(name) <= wire.MAX_NAME_LENGTH):
                continue
            if count == wire.MAX_LIST_ENTRIES:
                truncated = True
                break
            stored = storage.read_digest(parent_fd, storage.dot(entry, "record"))
            yield wire.BackupRecord(name, info.st_size, stored[1] if stored else None,
                                        int(info.st_mtime))
            count += 1
    finally:
        os.close(dir_fd)
    yield wire.ListEnd(count=count, truncated=truncated)


def describe_space(root_fd: int, reserve: int, quota: int | None) -> wire.ServerInfo:
    """Given the root, the reserve and the quota, return what `info` answers
    (the storage.sweep's count, removing nothing)."""
    free = storage.free_bytes(root_fd)
    available, used = max(0, free - reserve), None
    if quota is not None:
        used = storage.sweep(root_fd, None)[0]
        available = min(available, max(0, quota - used))
    return wire.ServerInfo(wire.PROTOCOL_VERSION, free, reserve, available, quota, used)

