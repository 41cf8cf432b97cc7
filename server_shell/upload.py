"""`put NAME`, `resume NAME`, `commit NAME` (docs/PROTOCOL.md §1.1, §1.2, §5).

Two phases: when Qubes' backup engine aborts, the carrier may see a clean
EOF, and append-only storage could never take a published truncated backup
back; only dom0 knows the backup succeeded, so only its commit publishes.
Partials: a dropped connection must not cost hours of upload, so what
arrived is kept, durably acknowledged, and resumed. A put: upload lock ->
sweep (expired uploads go; space and inodes counted) -> every refusal before
any directory is made -> partial + state record (O_EXCL, flocked) -> read,
hash, write, and every sync_interval fdatasync + state + ack -> E frame and
EOF -> link to the pending name (never replaces) -> record -> receipt.
"""

import errno
import fcntl
import hashlib
import os
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

from qbackup_protocol import wire

from . import storage
from .config import BadStream, Exists, NotFound, SessionCut, ShellConfig, StorageError, Unavailable
from .storage import dot

READ_SIZE = 1024 * 1024
MIN_FREE_INODES = 1024  # the filesystem's floor, whatever an account's own bound
CHECK_INTERVAL = 32 * 1024**2  # bytes written between two looks at the free space
SHARED_WRITERS = 8  # uploads of other accounts assumed to share the headroom
NEW_FILES = 4  # what a put adds besides directories: partial, state, two records' temporaries
# Uploads of other accounts take inodes too, each checked alone: an upload
# starts only with room above the floor for SHARED_WRITERS as large as any
# can be, so the floor holds while no more run at once.
INODE_MARGIN = SHARED_WRITERS * (wire.MAX_NAME_DEPTH - 1 + NEW_FILES)
RW_FLAGS = os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
EXISTS = "a backup with that name already exists; backups are never replaced"
STAGED = "an upload of that name is already staged; commit it or choose a new name"
NOTHING_STAGED = "nothing staged under that name (never put, already committed, or expired)"
NOTHING_TO_RESUME = "nothing to resume under that name (never put, finished, or expired)"
Reply = Callable[[dict[str, Any]], None]
Record = wire.BackupRecord


class SpaceGuard:
    """One upload's writes against the reserve, the quota and the inode bounds.
    Uploads of one account never overlap (the upload lock), so the quota
    measured at the start stays true; free space is shared, so it is re-read
    after CHECK_INTERVAL bytes or 1/SHARED_WRITERS of the headroom last seen."""

    def __init__(self, root_fd: int, config: ShellConfig, usage: storage.Usage,
                 new_inodes: int) -> None:
        """Given the account's config and use, and the inodes this upload adds,
        raise Unavailable if it may not start (before any directory is made)."""
        self.root_fd = root_fd
        self.reserve = config.reserve
        self.written = 0
        self.quota_left = storage.WHOLE if config.quota is None else config.quota - usage.used
        self.refresh()
        disk = os.fstatvfs(root_fd)
        if self.headroom < 0:
            raise Unavailable("free space on the server is below its reserve; free some space")
        if self.quota_left <= 0:
            raise Unavailable("the account's quota is used up; prune old backups")
        # f_files == 0: inodes are allocated dynamically (btrfs).
        low = 0 < disk.f_files and disk.f_favail < MIN_FREE_INODES + INODE_MARGIN
        if low or usage.inodes + new_inodes > config.max_inodes:
            raise Unavailable("no inodes left for this account or on the filesystem; prune")

    def refresh(self) -> None:
        self.headroom = storage.free_bytes(self.root_fd) - self.reserve
        self.since_check = 0

    def claim(self, count: int) -> None:
        """Given the size of the next write, allow it; raise Unavailable if it
        would exceed the quota or bring free space below the reserve."""
        if self.written + count > self.quota_left:
            raise Unavailable("this backup would exceed the account's quota")
        if self.since_check + count > min(CHECK_INTERVAL, self.headroom // SHARED_WRITERS):
            self.refresh()
            if count > self.headroom:
                raise Unavailable("the server's free space would drop below its reserve")
        self.since_check += count
        self.written += count


def read_into(fd: int, view: memoryview, timeout: float, whole: bool = False) -> int:
    """Read into VIEW (all of it if WHOLE); raise SessionCut at EOF: the
    client is gone (the partial is kept for a resume)."""
    done = 0
    while not done or whole and done < len(view):
        count = storage.timed(lambda: os.readv(fd, [view[done:]]), timeout)  # noqa: B023
        if count == 0:
            raise SessionCut("stream ended without an end frame (truncated upload)")
        done += count
    return done


@dataclass(frozen=True)
class Upload:
    """An upload ready to receive: NAME, its directory and leaf, its partial
    (flocked) and state record, both open, the hasher holding the partial's
    first OFFSET bytes, and the space guard its writes answer to."""

    name: str
    dir_fd: int
    leaf: str
    fd: int
    state_fd: int
    hasher: Any
    offset: int
    guard: SpaceGuard


def receive(upload: Upload, stdin: int, config: ShellConfig, reply: Reply) -> int:
    """Given an upload, stdin, the config and a reply writer, append the
    stream's data to the partial; return its total length. Raise SessionCut
    at EOF, BadStream unless an E frame matching length and digest, then
    EOF, ends the stream."""
    header = memoryview(bytearray(wire.FRAME_HEADER_SIZE))
    buffer = memoryview(bytearray(READ_SIZE))
    timeout = config.idle_timeout
    offset = upload.offset
    synced = offset
    frames = 0
    while True:
        read_into(stdin, header, timeout, whole=True)
        frames += 1
        # Tiny frames cost ~100x the CPU per byte: refused once they are the habit.
        if frames > 1024 and offset - upload.offset < (frames - 1) * 4096:
            raise BadStream("data frames too small (under 4 KiB on average)")
        try:
            frame = wire.decode_frame_header(bytes(header))
        except wire.ProtocolError:
            raise BadStream("malformed frame in the upload") from None
        if frame.kind == wire.FRAME_END:
            break
        left = frame.length
        while left:  # one thread: read, hash, write (bench/shell_loop.py measured it)
            count = read_into(stdin, buffer[: min(left, READ_SIZE)], timeout)
            upload.guard.claim(count)
            upload.hasher.update(buffer[:count])
            written = 0
            while written < count:
                written += os.write(upload.fd, buffer[written:count])
            offset += count
            left -= count
        if offset - synced >= config.sync_interval:
            os.fdatasync(upload.fd)  # the data first: the record never promises more
            storage.write_state(upload.state_fd, offset, upload.hasher.hexdigest())
            reply(wire.Ack(offset).to_reply())
            synced = offset
    end = memoryview(bytearray(wire.END_PAYLOAD.size))
    read_into(stdin, end, timeout, whole=True)
    declared = wire.decode_end_payload(bytes(end))
    # Nothing may follow: a stream with trailing bytes is not the one the client hashed.
    if storage.timed(lambda: len(os.read(stdin, 1)), timeout):
        raise BadStream("bytes after the end frame")
    if declared != wire.StreamEnd(offset, upload.hasher.digest()):
        raise BadStream("upload does not match its declared length and SHA-256")
    return offset


def stage(upload: Upload, stdin: int, config: ShellConfig, reply: Reply) -> Record:
    """Receive the rest of the stream into the partial and stage it; return
    the receipt. Any failure but a lost client (SessionCut) removes the partial."""
    dir_fd = upload.dir_fd
    leaf = upload.leaf
    try:
        reply(wire.ResumeOffset(upload.offset).to_reply())
        storage.enlarge_pipe(stdin)
        try:
            size = receive(upload, stdin, config, reply)
            os.fsync(upload.fd)
        except OSError as error:
            if error.errno in (errno.ENOSPC, errno.EDQUOT):
                raise Unavailable("the server's disk is full") from None
            raise StorageError(f"writing failed: {error.strerror}") from None
        try:  # linkat() never replaces: of two uploads of one name exactly one stages
            os.link(dot(leaf, "partial"), dot(leaf, "pending"), src_dir_fd=dir_fd,
                    dst_dir_fd=dir_fd, follow_symlinks=False)
        except FileExistsError:
            raise Exists(STAGED) from None
        digest = storage.Digest(size, upload.hasher.hexdigest())
        try:
            # A commit of an earlier upload may have won meanwhile.
            if storage.lstat(dir_fd, leaf) is not None:
                raise Exists(EXISTS)
            storage.write_digest(dir_fd, dot(leaf, "pending-record"), digest)
        except BaseException:
            storage.remove_upload(dir_fd, leaf, "pending")  # ours: just linked, flocked
            raise
        storage.remove_upload(dir_fd, leaf, "partial")
        os.fsync(dir_fd)
        return Record(upload.name, size, digest.sha256, int(os.fstat(upload.fd).st_mtime))
    except SessionCut:
        raise  # the client is gone or stalled: the partial stays resumable
    except BaseException:
        storage.remove_upload(dir_fd, leaf, "partial")
        raise


def refuse_taken(dir_fd: int, leaf: str) -> None:
    """Given NAME's directory and leaf, raise Exists if NAME is committed or staged."""
    if storage.lstat(dir_fd, leaf) is not None:
        raise Exists(EXISTS)
    if storage.lstat(dir_fd, dot(leaf, "pending")) is not None:
        raise Exists(STAGED)


def put(root_fd: int, name: str, stdin: int, config: ShellConfig, reply: Reply) -> Record:
    """Given the root, a checked NAME, stdin, the config and a reply writer,
    receive and stage NAME; return the receipt. Raise Unavailable (busy,
    space), Exists, BadStream, SessionCut or StorageError; a refused put
    creates nothing, a failed one removes what it created."""
    place = storage.split_name(name)
    leaf = place.leaf
    with ExitStack() as closing:
        closing.callback(os.close, storage.take_upload_lock(root_fd, name))
        # Expired uploads go first: they may hold this very name, and the quota counts them.
        usage = storage.sweep(root_fd, config.max_age)
        reached = storage.open_dirs(root_fd, place.dirs)
        closing.callback(os.close, reached.fd)
        if not reached.missing:
            refuse_taken(reached.fd, leaf)
            storage.remove_upload(reached.fd, leaf, "partial")  # a new put of NAME starts over
        guard = SpaceGuard(root_fd, config, usage, len(reached.missing) + NEW_FILES)
        dir_fd = storage.make_dirs(reached.fd, reached.missing)
        closing.callback(os.close, dir_fd)
        try:
            try:
                fd = os.open(dot(leaf, "partial"), storage.NEW_FLAGS, 0o600, dir_fd=dir_fd)
                closing.callback(os.close, fd)
                # The flock covers the data, and the staged inode (the same
                # one) until its record is written: a commit or a sweep waits.
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                state_fd = os.open(dot(leaf, "state"), storage.NEW_FLAGS, 0o600, dir_fd=dir_fd)
                closing.callback(os.close, state_fd)
            except OSError:
                raise Exists(storage.IN_THE_WAY) from None
            storage.write_state(state_fd, 0, hashlib.sha256().hexdigest())
            os.fsync(dir_fd)
            upload = Upload(name, dir_fd, leaf, fd, state_fd, hashlib.sha256(), 0, guard)
            return stage(upload, stdin, config, reply)
        except SessionCut:
            raise  # the partial stays, and the directories holding it
        except BaseException:
            storage.remove_dirs(reached.fd, reached.missing)  # only those still empty
            raise


def resume(root_fd: int, name: str, stdin: int, config: ShellConfig, reply: Reply) -> Record:
    """Given what put gets, continue NAME's interrupted upload and stage it;
    return the receipt. Refusals change nothing: NotFound (nothing to resume,
    expired, data not held), Exists (committed or staged), Unavailable
    (still busy after the wait), BadStream (the kept bytes are damaged)."""
    place = storage.split_name(name)
    leaf = place.leaf
    with ExitStack() as closing:
        dir_fd = storage.open_dirs(root_fd, place.dirs, NOTHING_TO_RESUME).fd
        closing.callback(os.close, dir_fd)
        closing.callback(os.close, storage.take_upload_lock(root_fd, name, take_over=True))
        refuse_taken(dir_fd, leaf)
        try:
            partial = storage.open_file(dir_fd, dot(leaf, "partial"), RW_FLAGS)
            closing.callback(os.close, partial.fd)
            state_fd = storage.open_file(dir_fd, dot(leaf, "state"), RW_FLAGS).fd
            closing.callback(os.close, state_fd)
        except NotFound:
            raise NotFound(NOTHING_TO_RESUME) from None
        try:
            fcntl.flock(partial.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Unavailable("the interrupted upload is busy (the admin's sweep); retry") from None
        # More than one name on the inode: a crash while staging linked it (never resumed).
        age = time.time() - partial.info.st_mtime
        if partial.info.st_nlink != 1 or age > config.partial_max_age:
            raise NotFound(NOTHING_TO_RESUME)
        state = storage.read_digest(dir_fd, dot(leaf, "state"), key="offset")
        if state is None or state.count > partial.info.st_size:  # never continue from bytes we lack
            raise NotFound("the server does not hold the interrupted upload's data; put it again")
        hasher = hashlib.sha256()
        hashed = storage.hash_file(partial.fd, hasher, state.count)
        if storage.Digest(hashed, hasher.hexdigest()) != state:
            raise BadStream("the interrupted upload's stored bytes are damaged; put it again")
        usage = storage.sweep(root_fd, config.max_age)
        guard = SpaceGuard(root_fd, config, usage, 0)
        if partial.info.st_size != state.count:  # drop what arrived after the last durable point
            os.ftruncate(partial.fd, state.count)  # (only then: a poke must not renew its age)
        os.lseek(partial.fd, state.count, os.SEEK_SET)
        upload = Upload(name, dir_fd, leaf, partial.fd, state_fd, hasher, state.count, guard)
        return stage(upload, stdin, config, reply)


def commit(root_fd: int, name: str) -> Record:
    """Given the root and a checked NAME, publish NAME's staged upload; return
    NAME's record. Raise NotFound if nothing is staged, BadStream if it has no
    valid record, Exists if NAME exists. The record (carried over from the
    put, not re-hashed) is written before the link, so NAME never appears
    without it; while we hold the staged inode's flock nothing else can make
    NAME, and commits take turns: the second finds nothing staged."""
    place = storage.split_name(name)
    leaf = place.leaf
    with ExitStack() as closing:
        dir_fd = storage.open_dirs(root_fd, place.dirs, NOTHING_STAGED).fd
        closing.callback(os.close, dir_fd)
        staged = storage.lock_if(dir_fd, dot(leaf, "pending"), None)
        if staged is None:
            raise NotFound(NOTHING_STAGED)
        closing.callback(os.close, staged.fd)
        stored = storage.read_digest(dir_fd, dot(leaf, "pending-record"))
        if stored is None or stored.count != staged.info.st_size:
            raise BadStream("the staged upload is incomplete; put the backup again")
        if storage.lstat(dir_fd, leaf) is not None:
            raise Exists(EXISTS)
        storage.write_digest(dir_fd, dot(leaf, "record"), stored)
        try:
            os.link(dot(leaf, "pending"), leaf, src_dir_fd=dir_fd, dst_dir_fd=dir_fd,
                    follow_symlinks=False)
        except FileExistsError:
            raise Exists(EXISTS) from None
        storage.remove_upload(dir_fd, leaf, "pending")
        os.fsync(dir_fd)
    return Record(name, stored.count, stored.sha256, int(staged.info.st_mtime))
