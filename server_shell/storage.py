"""The storage tree, reached only through directory file descriptors.

Every path under the storage root is walked one segment at a time with
`O_NOFOLLOW`, relative to the descriptor of the directory above, starting from
the root opened once. A symlink anywhere under the root therefore fails to
open (ELOOP/ENOTDIR) instead of being followed out of the storage; there is no
window between "check a path" and "use it" for a planted symlink to exploit.

Layout inside a directory of the tree, for a backup whose last segment is LEAF:
  LEAF                    the backup itself (0600), never replaced once it exists
  .LEAF.sha256            its digest record: JSON {"size": N, "sha256": HEX}
  .LEAF.pending           a verified upload staged by `put`, waiting for `commit`
  .LEAF.pending-sha256    the staged upload's digest record (same JSON)
  .tmp-XXXXXXXXXXXXXXXX   a put in progress (or left by a crash), never listed;
                          exactly 16 lowercase hex digits (TEMP_PATTERN)
and once, in the storage root:
  .qbackup-upload.lock    the account's upload lock (empty; flocked by a put)
Client names never start with '.', so they can never collide with these; and
each kind ends differently (".sha256", ".pending", "-sha256" after "pending",
no dot after the hex of a temporary), so the shell's own names never collide
with each other either, whatever LEAF is (`a.pending` is a valid client leaf:
its record `.a.pending.sha256` still differs from `.a.pending-sha256`).
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import stat
from collections.abc import Iterator
from dataclasses import dataclass

import qbackup_protocol as protocol

from .errors import AlreadyExists, ConfigError, NoSuchBackup, StorageError

DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FILE_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
DIRECTORY_MODE = 0o700
FILE_MODE = 0o600
TEMP_PREFIX = ".tmp-"
TEMP_RANDOM_BYTES = 8
# The EXACT shape of the shell's temporaries. Cleanup must match this whole
# name, never a prefix: `.tmp-x.sha256` is the digest record of a client's
# backup named `tmp-x`, and `.tmp-x.pending` its staged upload.
TEMP_PATTERN = re.compile(r"\.tmp-[0-9a-f]{16}")  # 16 = 2 * TEMP_RANDOM_BYTES
UPLOAD_LOCK_NAME = ".qbackup-upload.lock"
RECORD_SUFFIX = ".sha256"
PENDING_SUFFIX = ".pending"
PENDING_RECORD_SUFFIX = ".pending-sha256"
MAX_RECORD_SIZE = 4096
# errnos that mean "a symlink or a non-directory sits where we walk".
NOT_A_DIRECTORY = (errno.ELOOP, errno.ENOTDIR)


@dataclass(frozen=True)
class StoredDigest:
    """What the digest record of a backup says."""

    size: int
    sha256: str


def open_root(path: str) -> int:
    """Given the storage root path, return an O_DIRECTORY descriptor of it;
    raise ConfigError if it is missing, a symlink, or not owned by this account."""
    try:
        root_fd = os.open(path, DIRECTORY_FLAGS)
    except OSError as error:
        reason = os.strerror(error.errno or 0)
        raise ConfigError(f"storage root unusable ({reason}); fix [storage] root") from None
    # A root owned by someone else would let them plant or read files: the
    # admin made a mistake, and we refuse rather than guess.
    if os.fstat(root_fd).st_uid != os.getuid():
        os.close(root_fd)
        raise ConfigError("storage root is not owned by this account; fix [storage] root")
    return root_fd


def split_name(name: str) -> tuple[list[str], str]:
    """Given a checked NAME, return (directory segments, last segment)."""
    segments = protocol.check_name(name).split("/")
    return segments[:-1], segments[-1]


def open_directory(root_fd: int, segments: list[str], create: bool) -> int:
    """Given the root descriptor and directory segments, return a descriptor
    of that directory, creating missing ones (0700) if CREATE; raise
    NoSuchBackup (reading) or AlreadyExists (creating) if a segment is missing,
    a file or a symlink."""
    current = os.dup(root_fd)
    for segment in segments:
        try:
            next_fd = _open_segment(current, segment, create)
        finally:
            os.close(current)
        current = next_fd
    return current


def walk_existing(root_fd: int, segments: list[str]) -> tuple[int, list[str]]:
    """Given the root descriptor and directory segments, return (descriptor
    of the deepest directory that exists, the segments missing below it),
    creating nothing; raise AlreadyExists if a segment is a file or a symlink."""
    current = os.dup(root_fd)
    for index, segment in enumerate(segments):
        try:
            next_fd = os.open(segment, DIRECTORY_FLAGS, dir_fd=current)
        except FileNotFoundError:
            return current, segments[index:]
        except OSError as error:
            os.close(current)
            # A symlink (ELOOP) or a file (ENOTDIR) is never entered.
            if error.errno in NOT_A_DIRECTORY:
                raise AlreadyExists("a file or link is in the way of that name") from None
            reason = os.strerror(error.errno or 0)
            raise StorageError(f"cannot open a directory: {reason}") from None
        os.close(current)
        current = next_fd
    return current, []


def create_directories(dir_fd: int, missing: list[str]) -> int:
    """Given a directory descriptor and the segments missing below it, create
    them (0700) and return a new descriptor of the last one (of DIR_FD itself
    if none is missing); raise AlreadyExists if a file or link gets in the way."""
    return open_directory(dir_fd, missing, create=True)


def _open_segment(dir_fd: int, segment: str, create: bool) -> int:
    """Given a directory descriptor and one segment, return the subdirectory's
    descriptor (creating it 0700 if CREATE and missing); never follows a symlink."""
    try:
        return os.open(segment, DIRECTORY_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        if not create:
            raise NoSuchBackup("no such backup") from None
    except OSError as error:
        # O_NOFOLLOW on a symlink gives ELOOP, a file gives ENOTDIR: either way
        # this is not a directory we may enter.
        if error.errno in NOT_A_DIRECTORY:
            if create:
                raise AlreadyExists("a file or link is in the way of that name") from None
            raise NoSuchBackup("no such backup") from None
        raise StorageError(f"cannot open a directory: {os.strerror(error.errno or 0)}") from None
    try:
        os.mkdir(segment, DIRECTORY_MODE, dir_fd=dir_fd)
        # The new entry must survive a crash as much as the backup inside it.
        os.fsync(dir_fd)
    except FileExistsError:
        pass  # a concurrent put made it: fine, we open it below like any other
    except OSError as error:
        raise StorageError(f"cannot create a directory: {os.strerror(error.errno or 0)}") from None
    # Open again with O_NOFOLLOW: whatever is there now (ours, a concurrent
    # put's, or something planted in between) is only entered if it is a
    # real directory.
    return _open_segment(dir_fd, segment, create)


def open_backup(dir_fd: int, leaf: str) -> tuple[int, os.stat_result]:
    """Given a directory descriptor and a backup's last segment, return an
    open read descriptor and its stat; raise NoSuchBackup if it is missing,
    a symlink or not a regular file."""
    try:
        fd = os.open(leaf, FILE_READ_FLAGS, dir_fd=dir_fd)
    except OSError as error:
        if error.errno in (errno.ENOENT, *NOT_A_DIRECTORY):
            raise NoSuchBackup("no such backup") from None
        raise StorageError(f"cannot open the backup: {os.strerror(error.errno or 0)}") from None
    info = os.fstat(fd)
    # Only regular files are backups (not directories, FIFOs or devices).
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise NoSuchBackup("no such backup")
    os.set_blocking(fd, True)
    return fd, info


def open_backup_by_name(root_fd: int, name: str) -> tuple[int, int, str, os.stat_result]:
    """Given the root descriptor and a NAME, return (directory fd, file fd,
    leaf, stat); raise NoSuchBackup if any part is missing or not followable."""
    segments, leaf = split_name(name)
    dir_fd = open_directory(root_fd, segments, create=False)
    try:
        fd, info = open_backup(dir_fd, leaf)
    except BaseException:
        os.close(dir_fd)
        raise
    return dir_fd, fd, leaf, info


def record_name(leaf: str) -> str:
    """Given a backup's last segment, return its digest record's file name."""
    return f".{leaf}{RECORD_SUFFIX}"


def pending_name(leaf: str) -> str:
    """Given a backup's last segment, return the file name of its staged upload."""
    return f".{leaf}{PENDING_SUFFIX}"


def pending_record_name(leaf: str) -> str:
    """Given a backup's last segment, return its staged upload's digest record name."""
    return f".{leaf}{PENDING_RECORD_SUFFIX}"


def read_record(dir_fd: int, leaf: str) -> StoredDigest | None:
    """Given a directory descriptor and a backup's last segment, return its
    digest record, or None if it has none (or an unreadable one)."""
    return read_digest_file(dir_fd, record_name(leaf))


def read_digest_file(dir_fd: int, file_name: str) -> StoredDigest | None:
    """Given a directory descriptor and a digest record's file name, return
    the record, or None if it is missing, not a regular file or malformed."""
    try:
        fd, _info = open_backup(dir_fd, file_name)
    except NoSuchBackup:
        return None
    try:
        raw = os.read(fd, MAX_RECORD_SIZE + 1)
    finally:
        os.close(fd)
    try:
        value = json.loads(raw.decode("ascii")) if len(raw) <= MAX_RECORD_SIZE else None
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(value, dict):
        return None
    size, digest = value.get("size"), value.get("sha256")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        return None
    if not isinstance(digest, str) or not protocol.SHA256_HEX_PATTERN.fullmatch(digest):
        return None
    return StoredDigest(size=size, sha256=digest)


def write_record(dir_fd: int, leaf: str, digest: StoredDigest) -> None:
    """Given a directory descriptor, a backup's last segment and its digest,
    store its record durably."""
    write_digest_file(dir_fd, record_name(leaf), digest)


def write_digest_file(dir_fd: int, file_name: str, digest: StoredDigest) -> None:
    """Given a directory descriptor, a digest record's file name and the
    digest, store it durably (write a temporary, fsync, rename into place)."""
    body = json.dumps({"size": digest.size, "sha256": digest.sha256}).encode("ascii") + b"\n"
    temp_name, fd = create_temporary(dir_fd)
    try:
        try:
            os.write(fd, body)
            os.fsync(fd)
        finally:
            os.close(fd)
        # Only the put or commit that won the link of the data gets here, so
        # replacing a record left by an interrupted prune or commit is right,
        # and nobody else races us.
        os.rename(temp_name, file_name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        remove_quietly(dir_fd, temp_name)
        raise


def create_temporary(dir_fd: int) -> tuple[str, int]:
    """Given a directory descriptor, create a fresh hidden temporary (0600,
    O_EXCL so nothing existing is ever reused) and return (name, write fd)."""
    while True:
        name = TEMP_PREFIX + secrets.token_hex(TEMP_RANDOM_BYTES)
        try:
            return name, os.open(name, NEW_FILE_FLAGS, FILE_MODE, dir_fd=dir_fd)
        except FileExistsError:
            continue


def is_temporary_name(entry: str) -> bool:
    """Given a directory entry name, return True if it has the exact shape of
    a temporary this shell creates (create_temporary)."""
    return TEMP_PATTERN.fullmatch(entry) is not None


def remove_quietly(dir_fd: int, name: str) -> None:
    """Given a directory descriptor and an entry name, unlink it if it exists."""
    try:
        os.unlink(name, dir_fd=dir_fd)
    except OSError:
        pass


def is_client_name(entry: str) -> bool:
    """Given a directory entry name, return True if a client could have named it
    (so it may be listed); dot-files are the shell's own."""
    return (
        len(entry) <= protocol.MAX_SEGMENT_LENGTH
        and protocol.SEGMENT_PATTERN.fullmatch(entry) is not None
    )


def iter_backups(
    dir_fd: int, base: str, depth: int
) -> Iterator[tuple[str, int, str, os.stat_result]]:
    """Given a directory descriptor, the name prefix it stands for ("" for the
    root) and its depth, yield (name, directory fd, leaf, lstat) for every
    backup below it, in sorted order by segment; symlinks, dot-files and
    anything not nameable by a client are skipped, never followed."""
    with os.scandir(dir_fd) as scan:
        entries = sorted(entry.name for entry in scan)
    for entry in entries:
        if not is_client_name(entry):
            continue
        name = f"{base}{entry}"
        try:
            info = os.stat(entry, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            continue
        if stat.S_ISREG(info.st_mode):
            if depth + 1 <= protocol.MAX_NAME_DEPTH and len(name) <= protocol.MAX_NAME_LENGTH:
                yield name, dir_fd, entry, info
        elif stat.S_ISDIR(info.st_mode) and depth + 1 < protocol.MAX_NAME_DEPTH:
            try:
                child = os.open(entry, DIRECTORY_FLAGS, dir_fd=dir_fd)
            except OSError:
                continue  # replaced by a symlink meanwhile: skipped, not followed
            try:
                yield from iter_backups(child, f"{name}/", depth + 1)
            finally:
                os.close(child)
