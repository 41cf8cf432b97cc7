"""Turn the backup on stdin into data frames, off the event loop.

A reader thread fills 1 MiB frame buffers with large reads and hashes every
byte once as it goes (hashlib releases the GIL on big buffers, so hashing
overlaps the event loop's SSH work on the other core). Frames travel to the
event loop through a queue; their buffers come from a fixed pool and go back
to it only once the server has acknowledged their bytes (or, without
acknowledgements, once sent): when the pool is empty the thread stops reading
stdin, which holds Qubes' producer through the pipe. Memory is therefore
bounded by the pool, whatever the stream's length.

Each buffer is page-aligned memory (an anonymous mmap) with the payload at
offset PAYLOAD_AT, a multiple of 64: the kernel's copy from the pipe into an
unaligned destination costs several times more per byte. The 5-byte frame
header goes right before the payload byte a write starts at, so header and
payload leave in one write.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import logging
import mmap
import os
import queue
import stat
import threading
from dataclasses import dataclass

from qbackup_protocol import DEFAULT_DATA_FRAME, FRAME_HEADER_SIZE, encode_data_header

logger = logging.getLogger(__name__)

PIPE_SIZE = 1024 * 1024
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
PAYLOAD_AT = 64  # aligned payload start; the header is written just before it
MIN_FRAMES = 2
READER_CHECK = 5.0  # seconds between checks that the reader thread still lives


class ReaderGone(OSError):
    """The stdin reader thread ended without handing over EOF or its error."""


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
        the data from OFFSET to the frame's end, header included (written
        into the bytes before it, which are either headroom or already sent)."""
        skip = offset - self.start
        length = self.length - skip
        first = PAYLOAD_AT + skip
        self.buffer[first - FRAME_HEADER_SIZE : first] = encode_data_header(length)
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
    """Reads FD to EOF in a daemon thread into at most MAX_FRAMES buffers;
    ``await next_frame()`` yields Frames, then None at EOF. ``total`` and
    ``digest()`` are final once None came. ``recycle(frame)`` returns a buffer."""

    def __init__(
        self, fd: int, max_frames: int, frame_size: int = DEFAULT_DATA_FRAME
    ) -> None:
        self.fd = fd
        self.frame_size = frame_size
        self.max_frames = max(MIN_FRAMES, max_frames)
        self.total = 0
        self._hash = hashlib.sha256()
        self._frames: asyncio.Queue[Frame | BaseException | None] = asyncio.Queue()
        self._pool: queue.SimpleQueue[mmap.mmap | None] = queue.SimpleQueue()
        self._made = 0
        self._made_lock = threading.Lock()
        self._loop = asyncio.get_running_loop()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stdin-reader", daemon=True)
        self._getter: asyncio.Future[Frame | BaseException | None] | None = None

    def start(self) -> None:
        widen_pipe(self.fd)
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to stop (it is a daemon: never joined)."""
        self._stopped.set()
        self._pool.put(None)  # wakes a thread waiting for a buffer
        if self._getter is not None:
            self._getter.cancel()

    def digest(self) -> bytes:
        """Return the SHA-256 of everything read (final only after EOF)."""
        return self._hash.digest()

    def recycle(self, frame: Frame) -> None:
        """Given a frame whose bytes are no longer needed, return its buffer."""
        self._pool.put(frame.buffer)

    async def next_frame(self) -> Frame | None:
        """Return the next frame, or None at EOF; re-raise a read error
        (OSError). Raise ReaderGone if the thread ended without handing over
        its last item (a bug, but never a put that waits for ever)."""
        while True:
            if self._getter is None:
                self._getter = asyncio.ensure_future(self._frames.get())
            # Waiting for stdin is unbounded (Qubes may be slow), but a dead
            # reader thread is noticed within READER_CHECK seconds.
            done, _ = await asyncio.wait({self._getter}, timeout=READER_CHECK)
            if done:
                break
            if not self._thread.is_alive() and self._frames.empty():
                raise ReaderGone("the stdin reader ended without reporting EOF")
        item = self._getter.result()
        self._getter = None
        if isinstance(item, BaseException):
            raise item
        return item

    def _hand_over(self, item: Frame | BaseException | None) -> None:
        try:
            self._loop.call_soon_threadsafe(self._frames.put_nowait, item)
        except RuntimeError:
            self._stopped.set()  # the loop is gone: the transfer is over

    def _buffer(self) -> mmap.mmap | None:
        """Return a free buffer, making one while fewer than max_frames exist,
        else waiting for one to be recycled; None once stopped."""
        with self._made_lock:
            if self._made < self.max_frames:
                self._made += 1
                return mmap.mmap(-1, PAYLOAD_AT + self.frame_size)
        return self._pool.get()

    def _run(self) -> None:
        try:
            self._read_frames()
        except BaseException as error:  # noqa: BLE001 - always hand over a last item
            self._hand_over(error if isinstance(error, Exception) else ReaderGone(repr(error)))

    def _read_frames(self) -> None:
        try:
            while not self._stopped.is_set():
                buffer = self._buffer()
                if buffer is None or self._stopped.is_set():
                    return
                filled = self._fill(buffer)
                if filled == 0:
                    break
                # Hash here, in this thread: hashlib drops the GIL for large
                # buffers, so the event loop keeps encrypting meanwhile.
                self._hash.update(memoryview(buffer)[PAYLOAD_AT : PAYLOAD_AT + filled])
                frame = Frame(buffer, self.total, filled)
                self.total += filled
                self._hand_over(frame)
        except OSError as error:
            self._hand_over(error)
            return
        self._hand_over(None)

    def _fill(self, buffer: mmap.mmap) -> int:
        """Given a frame buffer, fill its payload from the fd; return how many
        bytes came (fewer than a frame only at EOF)."""
        view = memoryview(buffer)[PAYLOAD_AT:]
        filled = 0
        try:
            while filled < self.frame_size:
                count = os.readv(self.fd, [view[filled:]])
                if count == 0:
                    break
                filled += count
        finally:
            view.release()
        return filled
