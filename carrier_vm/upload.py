"""``put NAME``: stream the backup on stdin to the server and insist on its receipt.

The server only STAGES the upload: it becomes the backup NAME when dom0 sends
``commit NAME`` (commit.py) after Qubes reported success -- a stream Qubes
aborted may end in a clean EOF here, which the carrier cannot tell from a
complete backup. Success is claimed only when the server's shell exited 0 AND
its receipt names the same name, size and SHA-256 the carrier computed while
sending. Anything else -- an early exit, a lost connection, a receipt that
does not match -- is an error, so Qubes fails the backup loudly.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import cast

from carrier_vm.config import CarrierConfig
from carrier_vm.errors import DataError, TemporaryFailure
from carrier_vm.frames import Frame, FrameReader
from carrier_vm.ssh import Connection, Reader, Writer, read_bounded, run_session, within
from qbackup_protocol import (
    MAX_REPLY_LINE,
    VERB_PUT,
    BackupRecord,
    ProtocolError,
    build_command,
    encode_end_frame,
    parse_record,
)

logger = logging.getLogger(__name__)

# Smallest slice written at a time under a rate limit (keeps the pacing smooth).
MIN_RATE_SLICE = 16 * 1024


class RateLimiter:
    """Paces writes to at most RATE bytes/s on average since the first write."""

    def __init__(self, rate: int | None) -> None:
        self.rate = rate
        self.sent = 0
        self.started = time.monotonic()

    def slice_size(self, default: int) -> int:
        """Return how many bytes to write at once."""
        if self.rate is None:
            return default
        return max(MIN_RATE_SLICE, min(default, self.rate // 8))

    async def account(self, count: int) -> None:
        """Given COUNT bytes just written, sleep until they fit the rate."""
        if self.rate is None:
            return
        self.sent += count
        ahead = self.sent / self.rate - (time.monotonic() - self.started)
        if ahead > 0:
            await asyncio.sleep(ahead)


async def put_backup(
    connection: Connection, name: str, fd: int, config: CarrierConfig
) -> BackupRecord:
    """Given a connection, a valid NAME and the input FD, stream FD to the
    server's ``put NAME`` and return the server's matching receipt; raise a
    CarrierError if the server refused, stalled, the link broke or the
    receipt differs."""
    frames = FrameReader(fd)
    frames.start()
    sent = asyncio.Event()

    async def send(writer: Writer[bytes]) -> None:
        await send_stream(writer, frames, config)
        sent.set()

    async def read_receipt(reader: Reader[bytes]) -> bytes:
        # The receipt comes after the end frame; only then does its deadline run.
        reading = asyncio.ensure_future(read_bounded(reader, 2 * MAX_REPLY_LINE))
        waiting = asyncio.ensure_future(sent.wait())
        try:
            await asyncio.wait({reading, waiting}, return_when=asyncio.FIRST_COMPLETED)
            if reading.done():
                return reading.result()
            return await within(reading, config.reply_timeout, "receipt")
        finally:
            reading.cancel()
            waiting.cancel()

    try:
        command = build_command(VERB_PUT, name)
        end = await run_session(connection, command, config, read_receipt, send)
    finally:
        frames.stop()
    if not end.input_complete:
        # The server ended the session while we were still sending: whatever
        # it says, the backup is not complete.
        if end.status == 0:
            raise DataError("the server ended the session before the whole backup was sent")
        end.raise_for_status()
        raise TemporaryFailure("the session ended before the whole backup was sent")
    end.raise_for_status()
    return check_receipt(end.value, name, frames.total, frames.digest().hex())


async def send_stream(writer: Writer[bytes], frames: FrameReader, config: CarrierConfig) -> None:
    """Given the session's writer, send every frame, then the end frame and
    EOF; raise DataError if stdin cannot be read, TemporaryFailure if the
    server accepts nothing for progress_timeout seconds."""
    limiter = RateLimiter(config.rate_limit)
    while True:
        try:
            frame = await frames.next_frame()
        except OSError as error:
            raise DataError(f"cannot read the backup from stdin: {error.strerror}") from None
        if frame is None:
            break
        await _write_frame(writer, frame, limiter, config)
        frames.recycle(frame)
    logger.info("sent %d bytes, sending the end frame", frames.total)
    writer.write(encode_end_frame(frames.total, frames.digest()))
    writer.write_eof()
    # No drain here: once the end frame is queued this task must be done, so
    # a server that answers and closes quickly is never mistaken for one
    # that hung up early; the receipt is awaited next anyway.


async def _write_frame(
    writer: Writer[bytes], frame: Frame, limiter: RateLimiter, config: CarrierConfig
) -> None:
    """Given a frame, write it (in slices under a rate limit) and wait for the
    channel to take it; asyncssh copies the bytes, so the buffer can be reused."""
    view = memoryview(frame.buffer)[: frame.length]
    step = limiter.slice_size(frame.length)
    for start in range(0, frame.length, step):
        piece = view[start : start + step]
        # asyncssh takes any bytes-like object and copies it (typed as bytes).
        writer.write(cast(bytes, piece))
        await drain_with_progress(writer, config)
        await limiter.account(len(piece))


async def drain_with_progress(writer: Writer[bytes], config: CarrierConfig) -> None:
    """Wait until the channel took what was written; raise TemporaryFailure if
    the server accepts nothing for progress_timeout seconds (it stopped
    reading -- a hung disk or process -- while sshd still answers keepalives)."""
    try:
        await asyncio.wait_for(writer.drain(), config.progress_timeout)
    except TimeoutError:
        raise TemporaryFailure(
            f"the server accepted no data for {config.progress_timeout:g}s (progress_timeout)"
        ) from None


def check_receipt(output: bytes, name: str, size: int, sha256: str) -> BackupRecord:
    """Given the server's whole stdout after a put (or commit), return its
    BackupRecord if it is exactly one receipt line for NAME, SIZE and SHA256;
    raise DataError otherwise."""
    record = parse_receipt(output, name)
    # The receipt is the server's word that it stored THIS stream: every
    # field must match what we sent, or the backup is not proven stored.
    if record.size != size:
        raise DataError(f"the server stored {record.size} bytes, the carrier sent {size}")
    if record.sha256 != sha256:
        raise DataError("the server's receipt has a different SHA-256 than the data sent")
    return record


def parse_receipt(output: bytes, name: str) -> BackupRecord:
    """Given the server's whole stdout after a put or commit, return its
    BackupRecord if it is exactly one well-formed line naming NAME; raise
    DataError otherwise."""
    if not output.endswith(b"\n") or output.count(b"\n") != 1:
        raise DataError("the server's receipt is not exactly one line")
    try:
        record = parse_record(output)
    except ProtocolError as error:
        raise DataError(f"the server's receipt is malformed: {error}") from None
    # A receipt for another backup proves nothing about NAME.
    if record.name != name:
        raise DataError("the server's receipt names a different backup")
    if record.sha256 is None:
        raise DataError("the server's receipt has no SHA-256")
    return record
