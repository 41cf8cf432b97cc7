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
from typing import Any

from carrier_vm.config import CarrierConfig
from carrier_vm.errors import CarrierError, DataError, error_for_shell_status
from carrier_vm.frames import Frame, FrameReader
from carrier_vm.ssh import (
    MAX_STDERR_BYTES,
    exit_status,
    printable,
    read_bounded,
    transport_error,
    with_stderr,
)
from qbackup_protocol import (
    MAX_REPLY_LINE,
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


async def put_backup(connection: Any, name: str, fd: int, config: CarrierConfig) -> BackupRecord:
    """Given a connection, a valid NAME and the input FD, stream FD to the
    server's ``put NAME`` and return the server's matching receipt; raise a
    CarrierError if the server refused, the link broke or the receipt differs."""
    command = build_command("put", name)
    try:
        writer, reader, errors = await connection.open_session(command, encoding=None)
    except Exception as error:
        raise transport_error(error, config) from None
    channel = writer.channel
    frames = FrameReader(fd)
    frames.start()
    closed = asyncio.ensure_future(channel.wait_closed())
    try:
        sending = asyncio.ensure_future(send_stream(writer, frames, config))
        done, _ = await asyncio.wait({sending, closed}, return_when=asyncio.FIRST_COMPLETED)
        if sending not in done:
            # The server ended the session while we were still sending:
            # whatever it says, the backup is not complete.
            sending.cancel()
            await _settle(sending)
            raise await _early_end(channel, errors, config)
        await _reraise_send_failure(sending, channel, errors, config)
        return await asyncio.wait_for(
            collect_receipt(channel, reader, errors, name, frames, config), config.reply_timeout
        )
    except TimeoutError:
        raise DataError(f"no receipt from the server within {config.reply_timeout:g}s") from None
    finally:
        frames.stop()
        closed.cancel()


async def send_stream(writer: Any, frames: FrameReader, config: CarrierConfig) -> None:
    """Given the session's writer, send every frame, then the end frame and EOF."""
    limiter = RateLimiter(config.rate_limit)
    while True:
        frame = await frames.next_frame()
        if frame is None:
            break
        await _write_frame(writer, frame, limiter)
        frames.recycle(frame)
    logger.info("sent %d bytes, sending the end frame", frames.total)
    writer.write(encode_end_frame(frames.total, frames.digest()))
    writer.write_eof()
    # No drain here: once the end frame is queued this task must be done, so
    # a server that answers and closes quickly is never mistaken for one
    # that hung up early; the receipt is awaited next anyway.


async def _write_frame(writer: Any, frame: Frame, limiter: RateLimiter) -> None:
    """Given a frame, write it (in slices under a rate limit) and wait for the
    channel to take it; asyncssh copies the bytes, so the buffer can be reused."""
    view = memoryview(frame.buffer)[: frame.length]
    step = limiter.slice_size(frame.length)
    for start in range(0, frame.length, step):
        piece = view[start : start + step]
        writer.write(piece)
        await writer.drain()
        await limiter.account(len(piece))


async def _settle(task: asyncio.Future[Any]) -> None:
    """Given a cancelled task, wait for it to finish, ignoring its outcome."""
    try:
        await task
    except (asyncio.CancelledError, Exception):  # noqa: S110
        pass


async def _reraise_send_failure(
    sending: asyncio.Future[None], channel: Any, errors: Any, config: CarrierConfig
) -> None:
    """Given the finished sending task, return if it succeeded; otherwise
    raise the most precise error (the shell's exit status when it has one)."""
    failure = sending.exception()
    if failure is None:
        return
    if isinstance(failure, CarrierError) and not isinstance(failure, DataError):
        raise failure
    if isinstance(failure, OSError) and not isinstance(failure, ConnectionError):
        raise DataError(f"cannot read the backup from stdin: {failure.strerror}") from None
    # A broken channel usually means the shell exited: report why.
    try:
        await asyncio.wait_for(channel.wait_closed(), 10)
    except TimeoutError:
        raise transport_error(failure, config) from None
    raise await _early_end(channel, errors, config)


async def _early_end(channel: Any, errors: Any, config: CarrierConfig) -> CarrierError:
    """Given a channel the server closed before the end frame went out,
    return the error to raise (never success)."""
    detail = await _stderr_text(errors)
    status = exit_status(channel)
    if status == 0:
        return DataError("the server ended the session before the whole backup was sent")
    return error_for_shell_status(status, detail)


async def _stderr_text(errors: Any) -> str:
    """Given the session's stderr reader, return its text, bounded and made printable."""
    try:
        data = await asyncio.wait_for(read_bounded(errors, MAX_STDERR_BYTES), 5)
    except DataError:
        raise
    except Exception:
        return ""
    return printable(data)


async def collect_receipt(
    channel: Any, reader: Any, errors: Any, name: str, frames: FrameReader, config: CarrierConfig
) -> BackupRecord:
    """Given the session after EOF was sent, return the server's receipt if the
    shell exited 0 and it names NAME with the size and digest sent; raise otherwise."""
    try:
        output, detail = await with_stderr(read_bounded(reader, 2 * MAX_REPLY_LINE), errors)
        await channel.wait_closed()
    except DataError:
        raise
    except Exception as error:
        raise transport_error(error, config) from None
    status = exit_status(channel)
    if status != 0:
        raise error_for_shell_status(status, detail)
    return check_receipt(output, name, frames.total, frames.digest().hex())


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
