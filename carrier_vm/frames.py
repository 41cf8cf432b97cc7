"""Turn the backup on stdin into data frames, on the event loop.

Under Qubes, stdin is one end of the socketpair qrexec gives a service, fed
in writes of at most 64 KiB; run by hand or by the tests it may be a pipe
(then widened to 1 MiB). Frames are filled by non-blocking reads on the
event loop's own thread: when stdin has nothing to give, the read waits for
it to become readable (keepalives and acknowledgements go on meanwhile).
Each piece is hashed (SHA-256) right after it is read, while it is still in
the CPU's cache. Buffers come from a fixed pool and go back to it only once
the server has acknowledged their bytes; when the pool is used up the
carrier stops reading, which holds Qubes' producer (qrexec stops reading
from its side). Memory is therefore bounded by the pool, whatever the
stream's length.

Reading and hashing stay in the event loop's thread: a separate thread to
overlap hashing with encryption costs more CPU than it saves (thread switches
and GIL hand-overs after every short read; docs/PERFORMANCE.md).

Each buffer is page-aligned memory (an anonymous mmap) with the payload at
offset PAYLOAD_AT, a multiple of 64: the kernel's copy into an unaligned
destination costs several times more per byte. The 5-byte frame header goes
right before the payload, so header and payload leave in one write (a
resume from inside a frame sends a copy: several destinations share it).
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import logging
import mmap
import os
import stat
from dataclasses import dataclass

from qbackup_protocol.wire import DEFAULT_DATA_FRAME, FRAME_HEADER_SIZE, encode_data_header

logger = logging.getLogger(__name__)

PIPE_SIZE = 1024 * 1024
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
PAYLOAD_AT = 64  # aligned payload start; the header is written just before it
MIN_FRAMES = 2


class PoolExhausted(RuntimeError):
    """next_frame was called while every buffer holds unacknowledged data
    (a bug in the caller: it must wait for an acknowledgement first)."""


@dataclass(frozen=True)
class Frame:
    """One frame of data: stream bytes [start, start + length) in BUFFER at PAYLOAD_AT."""

    buffer: mmap.mmap
    start: int
    length: int

    @property
    def end(self) -> int:
        return self.start + self.length

    def wire_bytes(self, offset: int) -> memoryview:
        """Given a stream OFFSET inside this frame, return a D frame carrying
        the data from OFFSET to the frame's end, header included: from the
        frame's start, written into the headroom before the payload (the
        same bytes for every destination); from inside it (a resume), a
        copy, since the bytes before OFFSET may not be sent to every
        destination yet."""
        skip = offset - self.start
        length = self.length - skip
        first = PAYLOAD_AT + skip
        header = encode_data_header(length)
        if skip:
            return memoryview(header + self.buffer[first : first + length])
        self.buffer[first - FRAME_HEADER_SIZE : first] = header
        return memoryview(self.buffer)[first - FRAME_HEADER_SIZE : first + length]


def widen_pipe(fd: int) -> None:
    """Given a file descriptor, enlarge its pipe buffer if it is a pipe (fewer,
    larger reads: a 64 KiB pipe halves the throughput of a serial reader)."""
    try:
        if stat.S_ISFIFO(os.fstat(fd).st_mode):
            fcntl.fcntl(fd, F_SETPIPE_SZ, PIPE_SIZE)
    except OSError as error:
        logger.debug("cannot enlarge the input pipe: %s", error.strerror)


class FrameReader:
    """Reads FD to EOF into at most MAX_FRAMES buffers; ``await
    next_frame()`` returns the next Frame, then None at EOF. ``total`` and
    ``digest()`` are final once None came. ``recycle(frame)`` returns a
    frame's buffer to the pool; next_frame must not be called while every
    buffer is out (PoolExhausted) unless ``at_eof``.

    The frame being filled lives on the reader, not in next_frame: a caller
    cancelled while it waits for stdin (its session was lost) loses nothing;
    the next call goes on filling the same buffer."""

    def __init__(
        self, fd: int, max_frames: int, frame_size: int = DEFAULT_DATA_FRAME
    ) -> None:
        self.fd = fd
        self.frame_size = frame_size
        self.max_frames = max(MIN_FRAMES, max_frames)
        self.total = 0  # bytes handed over in frames
        self.at_eof = False  # FD reached its end: no more buffer is needed
        self._hash = hashlib.sha256()
        self._free: list[mmap.mmap] = []
        self._made = 0
        self._filling: mmap.mmap | None = None  # the buffer being filled ...
        self._filled = 0  # ... and how much of it holds (hashed) data
        self._was_blocking: bool | None = None
        self._waiting = False

    def start(self) -> None:
        """Prepare FD: a wider pipe; non-blocking reads if it is a pipe or a
        socket (undone by stop). Other files never make a read wait long
        (a regular file, /dev/null) and are read as they are."""
        widen_pipe(self.fd)
        mode = os.fstat(self.fd).st_mode
        if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
            self._was_blocking = os.get_blocking(self.fd)
            os.set_blocking(self.fd, False)

    def stop(self) -> None:
        """Stop watching FD and give it back its blocking mode (the file
        description may be shared with the process that started us)."""
        if self._waiting:
            asyncio.get_running_loop().remove_reader(self.fd)
            self._waiting = False
        if self._was_blocking is not None:
            try:
                os.set_blocking(self.fd, self._was_blocking)
            except OSError as error:  # closed meanwhile: nothing to give back
                logger.debug("cannot restore stdin's blocking mode: %s", error.strerror)
            self._was_blocking = None

    def digest(self) -> bytes:
        """Return the SHA-256 of everything read (final only after EOF)."""
        return self._hash.digest()

    def recycle(self, frame: Frame) -> None:
        """Given a frame whose bytes are no longer needed, return its buffer."""
        self._free.append(frame.buffer)

    async def next_frame(self) -> Frame | None:
        """Return the next frame (full, or shorter only at EOF), or None at
        EOF; raise OSError if FD cannot be read."""
        if self._filling is None:
            if self.at_eof:
                return None
            self._filling = self._buffer()
            self._filled = 0
        await self._fill()
        buffer = self._filling
        filled = self._filled
        self._filling = None
        self._filled = 0
        if filled == 0:
            self._free.append(buffer)
            return None
        frame = Frame(buffer, self.total, filled)
        self.total += filled
        return frame

    def _buffer(self) -> mmap.mmap:
        """Return a free buffer, making one while fewer than max_frames exist."""
        if self._free:
            return self._free.pop()
        if self._made < self.max_frames:
            self._made += 1
            return mmap.mmap(-1, PAYLOAD_AT + self.frame_size)
        raise PoolExhausted("every frame buffer holds unacknowledged data")

    async def _fill(self) -> None:
        """Fill the current buffer's payload from FD, hashing each piece as it
        comes, until it is full or FD is at its end."""
        assert self._filling is not None  # noqa: S101 - next_frame set it
        view = memoryview(self._filling)[PAYLOAD_AT : PAYLOAD_AT + self.frame_size]
        try:
            while self._filled < self.frame_size:
                try:
                    count = os.readv(self.fd, [view[self._filled :]])
                except BlockingIOError:
                    await self._readable()
                    continue
                if count == 0:
                    self.at_eof = True
                    break
                # No await between the read and these two lines: a cancelled
                # caller never leaves bytes read but not counted, or counted
                # but not hashed.
                self._hash.update(view[self._filled : self._filled + count])
                self._filled += count
        finally:
            view.release()

    async def _readable(self) -> None:
        """Wait until FD has data (or EOF) to read."""
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            if not ready.done():
                ready.set_result(None)

        loop.add_reader(self.fd, wake)
        self._waiting = True
        try:
            await ready
        finally:
            loop.remove_reader(self.fd)
            self._waiting = False
