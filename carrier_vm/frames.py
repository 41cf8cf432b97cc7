"""Turn the backup on stdin into protocol frames, off the event loop.

A reader thread fills 1 MiB data frames with large reads and hashes them as it
goes (hashlib releases the GIL on big buffers, so hashing overlaps the event
loop's SSH work on the other core). Frames travel to the event loop through a
small bounded queue and their buffers are recycled, so memory does not grow
with the stream.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import logging
import os
import queue
import stat
import threading
from dataclasses import dataclass

from qbackup_protocol import DEFAULT_DATA_FRAME, FRAME_HEADER_SIZE, encode_data_header

logger = logging.getLogger(__name__)

# Frames in flight between the thread and the loop; with the buffer pool this
# bounds the carrier's own buffering to (QUEUE_DEPTH + 2) frames.
QUEUE_DEPTH = 4
PIPE_SIZE = 1024 * 1024
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


@dataclass(frozen=True)
class Frame:
    """One D frame: BUFFER[:length] is header and payload; return the buffer to the pool."""

    buffer: bytearray
    length: int


def widen_pipe(fd: int) -> None:
    """Given a file descriptor, enlarge its pipe buffer if it is a pipe (fewer,
    larger reads: PERFORMANCE.md measured a 64 KiB pipe halving throughput)."""
    try:
        if stat.S_ISFIFO(os.fstat(fd).st_mode):
            fcntl.fcntl(fd, F_SETPIPE_SZ, PIPE_SIZE)
    except OSError as error:
        logger.debug("cannot enlarge the input pipe: %s", error.strerror)


class FrameReader:
    """Reads FD to EOF in a daemon thread; ``await next_frame()`` yields Frames,
    then None at EOF. ``total`` and ``digest()`` are final once None came."""

    def __init__(self, fd: int, frame_size: int = DEFAULT_DATA_FRAME) -> None:
        self.fd = fd
        self.frame_size = frame_size
        self.total = 0
        self._hash = hashlib.sha256()
        self._frames: asyncio.Queue[Frame | BaseException | None] = asyncio.Queue(QUEUE_DEPTH)
        self._pool: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
        for _ in range(QUEUE_DEPTH + 2):
            self._pool.put(bytearray(FRAME_HEADER_SIZE + frame_size))
        self._loop = asyncio.get_running_loop()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stdin-reader", daemon=True)

    def start(self) -> None:
        widen_pipe(self.fd)
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to stop at its next frame (it is a daemon: never joined)."""
        self._stopped.set()

    def digest(self) -> bytes:
        """Return the SHA-256 of everything read (final only after EOF)."""
        return self._hash.digest()

    def recycle(self, frame: Frame) -> None:
        """Given a frame the SSH channel has copied, return its buffer to the pool."""
        self._pool.put(frame.buffer)

    async def next_frame(self) -> Frame | None:
        """Return the next frame, or None at EOF; re-raise a read error."""
        item = await self._frames.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def _hand_over(self, item: Frame | BaseException | None) -> bool:
        """Queue ITEM for the loop, blocking while the queue is full; return
        False if the loop is gone (the transfer was aborted)."""
        if self._stopped.is_set():
            return False
        try:
            asyncio.run_coroutine_threadsafe(self._frames.put(item), self._loop).result()
        except (Exception, asyncio.CancelledError):
            # The loop closed or the put was cancelled: the transfer is over.
            return False
        return True

    def _run(self) -> None:
        try:
            while not self._stopped.is_set():
                buffer = self._pool.get()
                filled = self._fill(buffer)
                if filled == 0:
                    break
                buffer[:FRAME_HEADER_SIZE] = encode_data_header(filled)
                # Hash here, in this thread: hashlib drops the GIL for large
                # buffers, so the event loop keeps encrypting meanwhile.
                self._hash.update(
                    memoryview(buffer)[FRAME_HEADER_SIZE : FRAME_HEADER_SIZE + filled]
                )
                self.total += filled
                if not self._hand_over(Frame(buffer, FRAME_HEADER_SIZE + filled)):
                    return
        except OSError as error:
            self._hand_over(error)
            return
        self._hand_over(None)

    def _fill(self, buffer: bytearray) -> int:
        """Given a frame buffer, fill its payload from the fd; return how many
        bytes came (fewer than a frame only at EOF)."""
        view = memoryview(buffer)[FRAME_HEADER_SIZE:]
        filled = 0
        while filled < self.frame_size:
            count = os.readv(self.fd, [view[filled:]])
            if count == 0:
                break
            filled += count
        return filled
