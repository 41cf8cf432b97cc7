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
from typing import Any

from qbackup_protocol import wire

from . import storage
from .config import BadStream, Exists, Interrupted, NotFound, ShellConfig, StorageError, Unavailable
from .storage import dot

READ_SIZE = 1024 * 1024
RW_FLAGS = os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
EXISTS = "a backup with that name already exists; backups are never replaced"
STAGED = "an upload of that name is already staged; commit it or choose a new name"
NOTHING_STAGED = "nothing staged under that name (never put, already committed, or expired)"
NOTHING_TO_RESUME = "nothing to resume under that name (never put, finished, or expired)"
Reply = Callable[[dict[str, Any]], None]
Record = wire.BackupRecord


def read_into(fd: int, view: memoryview, timeout: float, whole: bool = False) -> int:
    """Read into VIEW (all of it if WHOLE); raise Interrupted at EOF: the
    client is gone (the partial is kept for a resume)."""
    done = 0
    while not done or whole and done < len(view):
        count = storage.timed(lambda: os.readv(fd, [view[done:]]), timeout)  # noqa: B023
        if count == 0:
            raise Interrupted("stream ended without an end frame (truncated upload)")
        done += count
    return done


def receive(stdin: int, fd: int, state_fd: int, hasher: Any, offset: int,
            guard: storage.SpaceGuard, config: ShellConfig, reply: Reply) -> int:
    """Given stdin, the partial (at OFFSET), its state record, the hash of the
    first OFFSET bytes, the guard and the config, append the stream's data;
    return the total length. Raise Interrupted at EOF, BadStream unless an E
    frame matching length and digest, then EOF, ends the stream."""
    header = memoryview(bytearray(wire.FRAME_HEADER_SIZE))
    buffer = memoryview(bytearray(READ_SIZE))
    synced, timeout, start, frames = offset, config.idle_timeout, offset, 0
    while True:
        read_into(stdin, header, timeout, whole=True)
        frames += 1
        # Tiny frames cost ~100x the CPU per byte: refused once they are the habit.
        if frames > 1024 and offset - start < (frames - 1) * 4096:
            raise BadStream("data frames too small (under 4 KiB on average)")
        try:
            frame = wire.decode_frame_header(bytes(header))
        except wire.ProtocolError:
            raise BadStream("malformed frame in the upload") from None
        if frame.kind == wire.FRAME_END:
            break
        length = frame.length
        while length:  # one thread: read, hash, write (bench/shell_loop.py measured it)
            count = read_into(stdin, buffer[: min(length, READ_SIZE)], timeout)
            guard.claim(count)
            hasher.update(buffer[:count])
            written = 0
            while written < count:
                written += os.write(fd, buffer[written:count])
            offset, length = offset + count, length - count
        if offset - synced >= config.sync_interval:
            os.fdatasync(fd)  # the data first: the record never promises more
            storage.write_state(state_fd, offset, hasher.hexdigest())
            reply(wire.Ack(offset).to_reply())
            synced = offset
    end = memoryview(bytearray(wire.END_PAYLOAD.size))
    read_into(stdin, end, timeout, whole=True)
    declared = wire.decode_end_payload(bytes(end))
    # Nothing may follow: a stream with trailing bytes is not the one the client hashed.
    if storage.timed(lambda: len(os.read(stdin, 1)), timeout):
        raise BadStream("bytes after the end frame")
    if declared != wire.StreamEnd(offset, hasher.digest()):
        raise BadStream("upload does not match its declared length and SHA-256")
    return offset


def stage(stdin: int, dir_fd: int, leaf: str, name: str, fds: tuple[int, int], hasher: Any,
          offset: int, guard: storage.SpaceGuard, config: ShellConfig, reply: Reply) -> Record:
    """Receive the rest of the stream into the partial and stage it; any
    failure but a lost client (Interrupted) removes the partial."""
    try:
        reply(wire.ResumeOffset(offset).to_reply())
        storage.enlarge_pipe(stdin)
        try:
            size = receive(stdin, *fds, hasher, offset, guard, config, reply)
            os.fsync(fds[0])
        except OSError as error:
            if error.errno in (errno.ENOSPC, errno.EDQUOT):
                raise Unavailable("the server's disk is full") from None
            raise StorageError(f"writing failed: {error.strerror}") from None
        try:  # linkat() never replaces: of two uploads of one name exactly one stages
            os.link(dot(leaf, "partial"), dot(leaf, "pending"), src_dir_fd=dir_fd,
                    dst_dir_fd=dir_fd, follow_symlinks=False)
        except FileExistsError:
            raise Exists(STAGED) from None
        try:
            # A commit of an earlier upload may have won meanwhile.
            if storage.lstat(dir_fd, leaf) is not None:
                raise Exists(EXISTS)
            storage.write_digest(dir_fd, dot(leaf, "pending-record"), size, hasher.hexdigest())
        except BaseException:
            storage.remove_upload(dir_fd, leaf, "pending")  # ours: just linked, flocked
            raise
        storage.remove_upload(dir_fd, leaf, "partial")
        os.fsync(dir_fd)
        return Record(name, size, hasher.hexdigest(), int(os.fstat(fds[0]).st_mtime))
    except Interrupted:
        raise  # the client is gone or stalled: the partial stays resumable
    except BaseException:
        storage.remove_upload(dir_fd, leaf, "partial")
        raise


def put(root_fd: int, name: str, stdin: int, config: ShellConfig, reply: Reply) -> Record:
    """Given the root, a checked NAME, stdin, the config and a reply writer,
    receive and stage NAME; return the receipt. Raise Unavailable (busy,
    space), Exists, BadStream, Interrupted or StorageError; a refused put
    creates nothing, a failed one removes what it created."""
    segments, leaf = storage.split_name(name)
    with ExitStack() as closing:
        closing.callback(os.close, storage.take_upload_lock(root_fd, name))
        # Expired uploads go first: they may hold this very name, and the quota counts them.
        used, inodes, _ = storage.sweep(root_fd, (config.pending_max_age, config.partial_max_age))
        parent, missing = storage.open_dirs(root_fd, segments)
        closing.callback(os.close, parent)
        if not missing:
            if storage.lstat(parent, leaf) is not None:
                raise Exists(EXISTS)
            if storage.lstat(parent, dot(leaf, "pending")) is not None:
                raise Exists(STAGED)
            storage.remove_upload(parent, leaf, "partial")  # a new put of NAME starts over
        guard = storage.SpaceGuard(root_fd, config, used, inodes, len(missing) + 4)
        dir_fd = storage.make_dirs(parent, missing)
        try:
            with ExitStack() as files:
                files.callback(os.close, dir_fd)
                try:
                    fd = os.open(dot(leaf, "partial"), storage.NEW_FLAGS, 0o600, dir_fd=dir_fd)
                    files.callback(os.close, fd)
                    # The flock covers the data, and the staged inode (the same
                    # one) until its record is written: a commit or a sweep waits.
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    state_fd = os.open(dot(leaf, "state"), storage.NEW_FLAGS, 0o600, dir_fd=dir_fd)
                    files.callback(os.close, state_fd)
                except OSError:
                    raise Exists(storage.IN_THE_WAY) from None
                storage.write_state(state_fd, 0, hashlib.sha256().hexdigest())
                os.fsync(dir_fd)
                return stage(stdin, dir_fd, leaf, name, (fd, state_fd), hashlib.sha256(), 0,
                             guard, config, reply)
        except Interrupted:
            raise  # the partial stays, and the directories holding it
        except BaseException:
            storage.remove_dirs(parent, missing)  # only those still empty
            raise


def resume(root_fd: int, name: str, stdin: int, config: ShellConfig, reply: Reply) -> Record:
    """Given what put gets, continue NAME's interrupted upload and stage it;
    return the receipt. Refusals change nothing: NotFound (nothing to resume,
    expired, data not held), Exists (committed or staged), Unavailable
    (still busy after the wait), BadStream (the kept bytes are damaged)."""
    segments, leaf = storage.split_name(name)
    with ExitStack() as closing:
        dir_fd = storage.open_dirs(root_fd, segments, NOTHING_TO_RESUME)[0]
        closing.callback(os.close, dir_fd)
        closing.callback(os.close, storage.take_upload_lock(root_fd, name, take_over=True))
        if storage.lstat(dir_fd, leaf) is not None:
            raise Exists(EXISTS)
        if storage.lstat(dir_fd, dot(leaf, "pending")) is not None:
            raise Exists(STAGED)
        try:
            fd, info = storage.open_file(dir_fd, dot(leaf, "partial"), RW_FLAGS)
            closing.callback(os.close, fd)
            state_fd, _ = storage.open_file(dir_fd, dot(leaf, "state"), RW_FLAGS)
            closing.callback(os.close, state_fd)
        except NotFound:
            raise NotFound(NOTHING_TO_RESUME) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Unavailable("the interrupted upload is busy (the admin's sweep); retry") from None
        # More than one name on the inode: a crash while staging linked it (never resumed).
        if info.st_nlink != 1 or time.time() - info.st_mtime > config.partial_max_age:
            raise NotFound(NOTHING_TO_RESUME)
        state = storage.read_digest(dir_fd, dot(leaf, "state"), key="offset")
        if state is None or state[0] > info.st_size:  # never continue from bytes we lack
            raise NotFound("the server does not hold the interrupted upload's data; put it again")
        offset = state[0]
        size, hasher = storage.hash_file(fd, offset)
        if (size, hasher.hexdigest()) != state:
            raise BadStream("the interrupted upload's stored bytes are damaged; put it again")
        used, inodes, _ = storage.sweep(root_fd, (config.pending_max_age, config.partial_max_age))
        guard = storage.SpaceGuard(root_fd, config, used, inodes, 0)
        if info.st_size != offset:  # drop what arrived after the last durable point
            os.ftruncate(fd, offset)  # (only then: a poke must not renew the partial's age)
        os.lseek(fd, offset, os.SEEK_SET)
        return stage(stdin, dir_fd, leaf, name, (fd, state_fd), hasher, offset, guard, config,
                     reply)


def commit(root_fd: int, name: str) -> Record:
    """Given the root and a checked NAME, publish NAME's staged upload; return
    NAME's record. Raise NotFound if nothing is staged, BadStream if it has no
    valid record, Exists if NAME exists. The record (carried over from the
    put, not re-hashed) is written before the link, so NAME never appears
    without it; while we hold the staged inode's flock nothing else can make
    NAME, and commits take turns: the second finds nothing staged."""
    segments, leaf = storage.split_name(name)
    with ExitStack() as closing:
        dir_fd = storage.open_dirs(root_fd, segments, NOTHING_STAGED)[0]
        closing.callback(os.close, dir_fd)
        locked = storage.lock_if(dir_fd, dot(leaf, "pending"), None)
        if locked is None:
            raise NotFound(NOTHING_STAGED)
        fd, info = locked
        closing.callback(os.close, fd)
        stored = storage.read_digest(dir_fd, dot(leaf, "pending-record"))
        if stored is None or stored[0] != info.st_size:
            raise BadStream("the staged upload is incomplete; put the backup again")
        if storage.lstat(dir_fd, leaf) is not None:
            raise Exists(EXISTS)
        storage.write_digest(dir_fd, dot(leaf, "record"), *stored)
        try:
            os.link(dot(leaf, "pending"), leaf, src_dir_fd=dir_fd, dst_dir_fd=dir_fd,
                    follow_symlinks=False)
        except FileExistsError:
            raise Exists(EXISTS) from None
        storage.remove_upload(dir_fd, leaf, "pending")
        os.fsync(dir_fd)
    return Record(name, stored[0], stored[1], int(info.st_mtime))
