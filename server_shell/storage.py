"""The storage tree, reached only through directory descriptors.

Every path below the root is walked one segment at a time with O_NOFOLLOW,
relative to the descriptor above, from the root opened once: a symlink
anywhere fails to open instead of being followed, and there is no window
between checking a path and using it. The files the shell keeps next to a
backup LEAF -- `.LEAF.sha256`, `.LEAF.pending`, `.LEAF.pending-sha256`,
`.LEAF.partial`, `.LEAF.partial-state`, `.tmp-<16 hex>` -- and its two lock
files are listed in docs/PROTOCOL.md §5: client names never start with '.',
and each kind ends differently, so none can collide with another.
"""

import errno
import fcntl
import json
import os
import re
import secrets
import select
import signal
import stat
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

from qbackup_protocol import wire

from .config import ConfigError, Exists, NotFound, SessionCut, StorageError, Unavailable

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a FIFO planted under a backup's name cannot hang the open.
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
NEW_FLAGS = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
LOCK_FLAGS = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
TEMP_PATTERN = re.compile(r"\.tmp-[0-9a-f]{16}")  # exactly what write_digest makes
UPLOAD_LOCK = ".qbackup-upload.lock"
SESSIONS_LOCK = ".qbackup-sessions.lock"
SUFFIXES = {"record": ".sha256", "pending": ".pending", "pending-record": ".pending-sha256",
            "partial": ".partial", "state": ".partial-state"}
MAX_RECORD = 4096
STATE_SIZE = 128  # the state record is rewritten in place at this fixed size
TEMP_AGE = 120  # seconds unwritten before a record's temporary is a crash's leftover
TAKEOVER_WAIT = 10.0  # seconds a resume waits for a dead connection's shell to go
TAKEOVER_IDLE = 2.0  # seconds without reading or writing that make a holder dead
TAKEOVER_KILL = 3.0  # seconds between SIGTERM and SIGKILL
HASH_BLOCK = 4 * 1024 * 1024
HASH_POLL = 64 * 1024 * 1024  # bytes hashed between two looks at the client
WHOLE = 2**63  # more than any file holds
IN_THE_WAY = "a file, a link or another owner's directory is in the way of that name"


def dot(leaf: str, kind: str) -> str:
    """Given a leaf and a kind from SUFFIXES, return the shell's file name for it."""
    return f".{leaf}{SUFFIXES[kind]}"


def open_root(path: str) -> int:
    """Given the storage root, return its descriptor; raise ConfigError if it
    is missing, a symlink, or not owned by this account (an admin's mistake)."""
    try:
        fd = os.open(path, DIR_FLAGS)
    except OSError as error:
        raise ConfigError(f"storage root unusable ({error.strerror})") from None
    if os.fstat(fd).st_uid != os.geteuid():
        os.close(fd)
        raise ConfigError("storage root is not owned by this account; fix [storage] root")
    return fd


@dataclass(frozen=True)
class Place:
    """Where a backup name lives: its directories' segments, and its leaf in the last."""

    dirs: list[str]
    leaf: str


def split_name(name: str) -> Place:
    """Given a backup NAME, return its Place; raise InvalidName if it is not a name."""
    *dirs, leaf = wire.check_name(name).split("/")
    return Place(dirs, leaf)


@dataclass(frozen=True)
class Reached:
    """How far open_dirs got: the deepest directory there, the segments missing below it."""

    fd: int
    missing: list[str]


def open_dirs(root_fd: int, segments: list[str], missing: str | None = None) -> Reached:
    """Given the root and directory segments, return how far they exist;
    raise Exists if a segment is a file, a symlink or another owner's
    directory (never entered). With MISSING, raise NotFound(MISSING) unless
    all of them exist."""
    current = os.dup(root_fd)
    for index, segment in enumerate(segments):
        try:
            next_fd = os.open(segment, DIR_FLAGS, dir_fd=current)
            info = os.fstat(next_fd)
        except OSError as error:
            if error.errno == errno.ENOENT and missing is None:
                return Reached(current, segments[index:])
            os.close(current)
            if error.errno not in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR):
                raise StorageError(f"cannot open a directory: {error.strerror}") from None
            raise NotFound(missing) if missing else Exists(IN_THE_WAY) from None
        os.close(current)
        current = next_fd
        if info.st_uid != os.geteuid():  # someone else's directory: never written in
            os.close(current)
            raise NotFound(missing) if missing else Exists(IN_THE_WAY)
    return Reached(current, [])


def make_dirs(dir_fd: int, missing: list[str]) -> int:
    """Given a directory and the segments missing below it, create them (0700,
    each entry fsync'd) and return a descriptor of the last. Each is entered
    with O_NOFOLLOW after mkdir: whatever is there then is entered only if it
    is a real directory. remove_dirs undoes this for a failed put."""
    current = os.dup(dir_fd)
    for segment in missing:
        try:
            with suppress(FileExistsError):  # a concurrent put made it, or anything else
                os.mkdir(segment, 0o700, dir_fd=current)
                os.fsync(current)
            made = open_dirs(current, [segment])  # entered only if a real directory
        finally:
            os.close(current)
        current = made.fd
        if made.missing:
            os.close(current)
            raise StorageError("a directory vanished while it was made")
    return current


def remove_dirs(parent_fd: int, created: list[str]) -> None:
    """Given the directory above them and the segments a put created, remove
    those still empty, deepest first (rmdir never removes anything else)."""
    for end in range(len(created), 0, -1):
        above = open_dirs(parent_fd, created[: end - 1])
        try:
            if not above.missing:
                os.rmdir(created[end - 1], dir_fd=above.fd)
        except OSError:
            return  # not empty (another put's data): keep it and those above
        finally:
            os.close(above.fd)


@dataclass(frozen=True)
class Opened:
    """A regular file opened without following a link, and its stat."""

    fd: int
    info: os.stat_result


def open_file(dir_fd: int, name: str, flags: int = READ_FLAGS) -> Opened:
    """Given a directory and an entry, return the regular file there, opened;
    raise NotFound if it is missing, a symlink or not a regular file."""
    try:
        fd = os.open(name, flags, 0o600, dir_fd=dir_fd)  # the mode only for LOCK_FLAGS' O_CREAT
    except OSError as error:
        if error.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR, errno.ENXIO):
            raise NotFound("no such backup") from None
        raise StorageError(f"cannot open a file: {error.strerror}") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise NotFound("no such backup")
    os.set_blocking(fd, True)
    return Opened(fd, info)


def lstat(dir_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return None


def remove_quietly(dir_fd: int, *names: str) -> None:
    for name in names:
        with suppress(OSError):
            os.unlink(name, dir_fd=dir_fd)


@dataclass(frozen=True)
class Digest:
    """What a record holds: a count of bytes (a backup's size, an upload's
    durable offset) and the SHA-256 of those bytes, in hex."""

    count: int
    sha256: str


def read_digest(dir_fd: int, name: str, key: str = "size") -> Digest | None:
    """Given a record's name (and its count field), return what it holds;
    None if it is missing, not a regular file, too long or malformed."""
    try:
        fd = open_file(dir_fd, name).fd
    except NotFound:
        return None
    try:
        value = json.loads(os.read(fd, MAX_RECORD).decode("ascii"))
        return Digest(wire.require_int(value[key], key), wire.require_digest(value["sha256"]))
    except (ValueError, TypeError, KeyError):  # ProtocolError, UnicodeDecodeError: ValueErrors
        return None
    finally:
        os.close(fd)


def write_digest(dir_fd: int, name: str, digest: Digest) -> None:
    """Given a directory, a record's name and what it holds, store it durably
    (temporary, fsync, rename over: only the put or commit that won the link
    of the data writes a record, so nobody races it)."""
    temp = f".tmp-{secrets.token_hex(8)}"
    fd = os.open(temp, NEW_FLAGS, 0o600, dir_fd=dir_fd)
    try:
        try:
            record = {"size": digest.count, "sha256": digest.sha256}
            os.write(fd, json.dumps(record).encode("ascii") + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        remove_quietly(dir_fd, temp)
        raise


def write_state(fd: int, offset: int, sha256: str) -> None:
    """Given the state record's descriptor, the durable offset and the SHA-256
    of the bytes before it, rewrite it in place (one small write) and fdatasync."""
    body = json.dumps({"offset": offset, "sha256": sha256}).encode("ascii").ljust(STATE_SIZE)
    os.pwrite(fd, body, 0)
    os.fdatasync(fd)


def is_client_name(entry: str) -> bool:
    return bool(wire.SEGMENT_PATTERN.fullmatch(entry))


@dataclass(frozen=True)
class Entry:
    """One entry walk() found: the directory holding it, its file name there,
    the name it stands for below the walk's start, and its lstat."""

    dir_fd: int
    leaf: str
    name: str
    info: os.stat_result


def walk(dir_fd: int, base: str = "", depth: int = 0) -> Iterator[Entry]:
    """Given a directory, the name prefix it stands for and its depth, yield
    every entry below it, sorted by segment, entering only real directories
    a client could have named (never a symlink, never ~/.ssh): THE walker of
    list, the sweep and the admin tool."""
    with os.scandir(dir_fd) as scan:
        entries = sorted(entry.name for entry in scan)
    for entry in entries:
        info = lstat(dir_fd, entry)
        if info is None:
            continue
        yield Entry(dir_fd, entry, base + entry, info)
        deeper = depth + 1 < wire.MAX_NAME_DEPTH and info.st_uid == os.geteuid()
        if stat.S_ISDIR(info.st_mode) and is_client_name(entry) and deeper:
            try:
                child = os.open(entry, DIR_FLAGS, dir_fd=dir_fd)
            except OSError:
                continue  # replaced by a symlink meanwhile: skipped, not followed
            try:
                yield from walk(child, f"{base}{entry}/", depth + 1)
            finally:
                os.close(child)


def lock_if(dir_fd: int, name: str, older_than: float | None) -> Opened | None:
    """Given an upload's data file, return it opened with an exclusive flock
    on it -- waiting for it if OLDER_THAN is None, else only if it was last
    written more than OLDER_THAN s ago and nobody holds it -- once the name
    still names that inode (the holder before us may have replaced it); else None."""
    try:
        opened = open_file(dir_fd, name)
    except NotFound:
        return None
    try:
        if older_than is None or time.time() - opened.info.st_mtime > older_than:
            no_wait = 0 if older_than is None else fcntl.LOCK_NB
            fcntl.flock(opened.fd, fcntl.LOCK_EX | no_wait)
            now = lstat(dir_fd, name)  # in the same directory
            if now is not None and now.st_ino == opened.info.st_ino:
                return opened
    except BlockingIOError:
        pass  # live: its put, resume or commit holds it
    except BaseException:
        os.close(opened.fd)
        raise
    os.close(opened.fd)
    return None


def remove_upload(dir_fd: int, leaf: str, kind: str) -> None:
    """Given a leaf and "pending" or "partial", remove that upload: its record
    first, so a crash in between leaves data without a record (refused by
    commit and resume, swept later), never a record naming other data."""
    remove_quietly(dir_fd, dot(leaf, "pending-record" if kind == "pending" else "state"))
    remove_quietly(dir_fd, dot(leaf, kind))


def upload_kind(entry: str) -> str | None:
    """Given a directory entry, return "pending" or "partial" if it is the
    data of an upload of a name a client could have sent, else None."""
    for kind in ("pending", "partial"):
        leaf = entry[1 : -len(SUFFIXES[kind])]
        if entry.startswith(".") and entry.endswith(SUFFIXES[kind]) and is_client_name(leaf):
            return kind
    return None


def remove_expired(found: Entry, max_age: Mapping[str, int], dry_run: bool) -> bool:
    """Given an entry and how long an upload of each kind is kept, remove the
    entry (unless DRY_RUN) if it is an upload older than that which nobody
    holds (a flocked one is live: left alone) or a record temporary a crash
    left; return whether it was one."""
    kind = upload_kind(found.leaf)
    if kind is not None:
        locked = lock_if(found.dir_fd, found.leaf, max_age[kind])
        if locked is None:
            return False
        if not dry_run:
            remove_upload(found.dir_fd, found.leaf[1 : -len(SUFFIXES[kind])], kind)
        os.close(locked.fd)
        return True
    if TEMP_PATTERN.fullmatch(found.leaf) and time.time() - found.info.st_mtime > TEMP_AGE:
        if not dry_run:
            remove_quietly(found.dir_fd, found.leaf)
        return True
    return False


@dataclass(frozen=True)
class Usage:
    """What sweep() leaves: allocated bytes and inodes, and the names it removed."""

    used: int
    inodes: int
    removed: list[str]


def sweep(root_fd: int, max_age: Mapping[str, int] | None, dry_run: bool = False,
          empty_dirs: bool = True) -> Usage:
    """Given the root and how long an upload of each kind is kept
    (ShellConfig.max_age; None: only count), remove (unless DRY_RUN) expired
    uploads and a crash's temporaries anywhere below (remove_expired), and
    the directories that leaves empty; return the allocated bytes and inodes
    of the rest (regular files and directories, not ~/.ssh or other
    dot-directories, each inode once) and the names removed. EMPTY_DIRS only
    while holding the upload lock: then no upload is about to use a
    directory it removes."""
    used = 0
    seen: set[tuple[int, int]] = set()
    removed: list[str] = []
    for found in walk(root_fd):
        if max_age is not None and remove_expired(found, max_age, dry_run):
            removed.append(found.name)
            continue
        inode = (found.info.st_dev, found.info.st_ino)
        directory = stat.S_ISDIR(found.info.st_mode) and is_client_name(found.leaf)
        if (stat.S_ISREG(found.info.st_mode) or directory) and inode not in seen:
            seen.add(inode)
            used += found.info.st_blocks * 512  # blocks: a thousand 1-byte backups fill a thousand
    for name in sorted({os.path.dirname(name) for name in removed}, reverse=True):
        if name and empty_dirs and not dry_run:
            remove_dirs(root_fd, name.split("/"))  # those now empty, deepest first
    return Usage(used, len(seen), removed)


def hash_file(fd: int, hasher: Any, length: int = WHOLE) -> int:
    """Given a file, a SHA-256 hasher and how much of the file (default all),
    feed the HASHER those bytes; return how many there were. Raise
    SessionCut once the client is gone (its stdout hung up): nobody would
    read the answer of hours of hashing."""
    poller = select.poll()
    poller.register(1, 0)  # stdout: POLLERR/POLLHUP are always reported
    size = 0
    while data := os.pread(fd, min(HASH_BLOCK, length - size), size):
        hasher.update(data)
        size += len(data)
        if size % HASH_POLL == 0 and poller.poll(0):
            raise SessionCut("the client went away")
    return size


def free_bytes(fd: int) -> int:
    result = os.fstatvfs(fd)
    return result.f_bavail * result.f_frsize


def open_lock(root_fd: int, name: str) -> int:
    """Given the root and a lock file's name, return it open read-write
    (created 0600); raise StorageError unless it is this account's regular
    file (one another account owned could be held locked by it for ever)."""
    try:
        lock = open_file(root_fd, name, LOCK_FLAGS)
    except NotFound:
        raise StorageError("a lock file is not a regular file; tell the admin") from None
    if lock.info.st_uid != os.geteuid():
        os.close(lock.fd)
        raise StorageError("a lock file is not this account's; tell the admin")
    return lock.fd


def take_session(root_fd: int, max_sessions: int) -> int:
    """Given the root and the cap, return the descriptor holding one of
    MAX_SESSIONS byte-range locks (the kernel drops it when the process ends,
    however it ends); raise Unavailable if all are held."""
    fd = open_lock(root_fd, SESSIONS_LOCK)
    for slot in range(max_sessions):
        with suppress(OSError):
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, slot)
            return fd
    os.close(fd)
    raise Unavailable(f"too many sessions of this account at once (at most {max_sessions})")


def activity(pid: str) -> object:
    """Given a pid, return the bytes it has read and written so far (a new
    object each time while it waits for the disk: busy, not idle)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as status:
            after_name = status.read().rsplit(")", 1)[-1]  # the name may hold spaces
            busy = after_name.split()[0] == "D"
        with open(f"/proc/{pid}/io", encoding="ascii") as io:
            return object() if busy else io.read()
    except (OSError, IndexError):
        return None


def take_upload_lock(root_fd: int, name: str, take_over: bool = False) -> int:
    """Given the root and the upload's NAME, return the account's upload
    lock, taken, with "PID NAME" in it; raise Unavailable if another upload
    holds it. With TAKE_OVER (resume), a holder uploading NAME that has read
    and written nothing for TAKEOVER_IDLE s -- a shell left behind by a dead
    connection, waiting for data that never comes -- gets SIGTERM, then
    SIGKILL, within TAKEOVER_WAIT s; a live one (a second resume receiving or
    re-hashing) is never ended. The kernel lets us signal only our own uid."""
    fd = open_lock(root_fd, UPLOAD_LOCK)
    started = time.monotonic()
    quiet_since = started  # when the holder last read or wrote
    last_seen = object()
    signalled = 0.0
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                now = time.monotonic()
                if not take_over or now - started > TAKEOVER_WAIT:
                    raise Unavailable("another upload to this account is in progress; "
                                      "retry when it has ended") from None
            # The holder wrote "PID NAME" as soon as it took the lock; it has
            # been idle for TAKEOVER_IDLE s since, so the words are its own.
            pid, _, holding = os.pread(fd, 300, 0).decode("ascii", "replace").partition(" ")
            seen = activity(pid) if pid.isdigit() else None
            if seen != last_seen:
                last_seen = seen
                quiet_since = now
            idle = now - quiet_since > TAKEOVER_IDLE and now - signalled > TAKEOVER_KILL
            if holding.strip() == name and pid.isdigit() and idle:
                with suppress(OSError):  # gone already: the lock is free next round
                    os.kill(int(pid), signal.SIGKILL if signalled else signal.SIGTERM)
                signalled = now
            time.sleep(0.1)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {name}\n".encode("ascii"), 0)
    except BaseException:
        os.close(fd)
        raise
    return fd


# --- the client's pipes: every wait for the client is bounded ----------------
# main() turns SIGALRM into SessionCut: a client that sends nothing (put) or
# reads nothing (get, list, check) for idle_timeout seconds ends the session.
def enlarge_pipe(fd: int) -> None:
    with suppress(OSError):  # over the per-user pipe limit: slower, still correct
        # sshd's 64 KiB pipes stall big transfers: 1 MiB (EBADF if not a pipe: fine).
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, 1024 * 1024)


def timed(call: Callable[[], int], timeout: float) -> int:
    """Given one blocking system call and the idle timeout, run it with the timer armed."""
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        return call()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def write_all(fd: int, data: bytes | bytearray | memoryview, timeout: float) -> None:
    view = memoryview(data)
    while view:
        view = view[timed(lambda: os.write(fd, view), timeout):]  # noqa: B023 (called at once)
