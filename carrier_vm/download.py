"""``get NAME``: de-frame a stored backup onto stdout, verifying it as it flows.

The bytes go out as they arrive (a backup can be hundreds of GiB), so the
verdict comes at the end: exit 0 only if exactly one well-formed end frame
closed the stream with the length and SHA-256 of everything written, and
nothing followed it. Qubes' restore verifies its own HMACs on top of this.

The server is not trusted to end the stream: before `get NAME` the carrier
asks `list NAME` for NAME's size (one JSON line on the same connection) and
refuses, before writing it out, any data frame that would take the stream
beyond that size -- a hostile server cannot make a restore read for ever.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import threading
from typing import Any

from carrier_vm.config import CarrierConfig
from carrier_vm.errors import CarrierError, DataError, NoSuchBackup, error_for_shell_status
from carrier_vm.replies import LineReader
from carrier_vm.ssh import (
    MAX_STDERR_BYTES,
    exit_status,
    printable,
    read_bounded,
    transport_error,
    with_stderr,
)
from qbackup_protocol import (
    FRAME_DATA,
    FRAME_HEADER_SIZE,
    ListEnd,
    ProtocolError,
    build_command,
    decode_end_payload,
    decode_frame_header,
    parse_list_line,
)

logger = logging.getLogger(__name__)

READ_SIZE = 1024 * 1024
LOOKUP_TIMEOUT = 60  # seconds for the one listing line that gives NAME's size


class Deframer:
    """Incremental decoder of a D...D E stream: feed() bytes, get payload back."""

    def __init__(self, limit: int | None = None) -> None:
        self.limit = limit  # most data bytes accepted (the listed size); None = no cap
        self.total = 0
        self.finished = False
        self._hash = hashlib.sha256()
        self._pending = bytearray()
        self._kind: bytes | None = None
        self._need = FRAME_HEADER_SIZE

    def feed(self, data: bytes) -> list[bytes]:
        """Given the next bytes of the stream, return the payload pieces they
        complete; raise DataError on a protocol violation or a bad end frame."""
        pieces: list[bytes] = []
        self._pending += data
        while len(self._pending) >= self._need:
            if self.finished:
                # Nothing may follow the end frame.
                raise DataError("the server sent data after the end of the backup")
            chunk = bytes(self._pending[: self._need])
            del self._pending[: self._need]
            if self._kind is None:
                self._start_frame(chunk)
            elif self._kind == FRAME_DATA:
                self._hash.update(chunk)
                self.total += len(chunk)
                pieces.append(chunk)
                self._kind, self._need = None, FRAME_HEADER_SIZE
            else:
                self._finish(chunk)
        if self.finished and self._pending:
            raise DataError("the server sent data after the end of the backup")
        return pieces

    def _start_frame(self, header: bytes) -> None:
        try:
            self._kind, self._need = decode_frame_header(header)
        except ProtocolError as error:
            raise DataError(f"the server sent a malformed stream: {error}") from None
        # Checked before the frame's payload is passed on: stdout never gets
        # a byte beyond the listed size, and an endless stream ends here.
        if (
            self._kind == FRAME_DATA
            and self.limit is not None
            and self.total + self._need > self.limit
        ):
            raise DataError(f"the server sent more than the backup's listed {self.limit} bytes")

    def _finish(self, payload: bytes) -> None:
        total, digest = decode_end_payload(payload)
        # The end frame must describe exactly what was delivered: a short,
        # padded or altered stream is refused, never reported as a backup.
        if total != self.total:
            raise DataError(f"size mismatch: the end frame says {total} bytes, {self.total} came")
        if digest != self._hash.digest():
            raise DataError("SHA-256 mismatch: the backup read back differs from the one stored")
        self.finished = True
        self._kind, self._need = None, 1

    def close(self) -> None:
        """Raise DataError unless the stream ended right after a valid end frame."""
        if not self.finished:
            raise DataError(f"the stream was truncated after {self.total} bytes (no end frame)")


async def get_backup(connection: Any, name: str, out_fd: int, config: CarrierConfig) -> int:
    """Given a connection, a valid NAME and an output FD, write the backup's
    bytes to OUT_FD and return its size; raise a CarrierError if the server
    refused or the stream was malformed, truncated or did not match its digest."""
    size = await listed_size(connection, name, config)
    command = build_command("get", name)
    try:
        _writer, reader, errors = await connection.open_session(command, encoding=None)
    except Exception as error:
        raise transport_error(error, config) from None
    channel = _writer.channel
    _writer.write_eof()
    deframer = Deframer(limit=size)

    async def relay() -> None:
        while True:
            data = await reader.read(READ_SIZE)
            if not data:
                return
            pieces = deframer.feed(data)
            if pieces:
                # Writing off the loop keeps keepalives flowing while a slow
                # consumer blocks; the read window stops the server meanwhile.
                await write_off_loop(out_fd, b"".join(pieces))

    try:
        _, detail = await with_stderr(relay(), errors)
        await asyncio.wait_for(channel.wait_closed(), 10)
    except (DataError, BrokenPipeError):
        raise
    except Exception as error:
        raise transport_error(error, config) from None
    status = exit_status(channel)
    if status != 0:
        raise error_for_shell_status(status, detail)
    deframer.close()
    logger.info("got %s: %d bytes, digest verified", name, deframer.total)
    return deframer.total


async def listed_size(connection: Any, name: str, config: CarrierConfig) -> int:
    """Given a connection and a valid NAME, return the size the server lists
    for NAME; raise NoSuchBackup if the listing does not start with NAME's
    record (an exact name sorts before every longer name under it),
    DataError if the line is malformed."""
    try:
        writer, reader, errors = await connection.open_session(
            build_command("list", name), encoding=None
        )
    except Exception as error:
        raise transport_error(error, config) from None
    writer.write_eof()
    try:
        line = await asyncio.wait_for(LineReader(reader).next_line(), LOOKUP_TIMEOUT)
        if line is None:
            # Nothing listed: the server's exit status and line say why.
            detail = await asyncio.wait_for(read_bounded(errors, MAX_STDERR_BYTES), LOOKUP_TIMEOUT)
            await asyncio.wait_for(writer.channel.wait_closed(), LOOKUP_TIMEOUT)
            status = exit_status(writer.channel)
            if status != 0:
                raise error_for_shell_status(status, printable(detail))
    except CarrierError:
        raise
    except Exception as error:
        raise transport_error(error, config) from None
    finally:
        writer.channel.close()  # the rest of the listing is not needed
    try:
        item = None if line is None else parse_list_line(line)
    except ProtocolError:
        raise DataError("the server sent a malformed listing line") from None
    if item is None or isinstance(item, ListEnd) or item.name != name:
        raise NoSuchBackup("no such backup on the server")
    return item.size


async def write_off_loop(fd: int, data: bytes) -> None:
    """Given an fd and bytes, write them from a daemon thread and wait for it;
    raise what the write raised. A daemon thread (not the default executor,
    which asyncio.run joins) lets a SIGTERM end the carrier even while the
    consumer neither reads nor closes its end."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[BaseException | None] = loop.create_future()

    def report(outcome: BaseException | None) -> None:
        if not done.done():
            done.set_result(outcome)

    def work() -> None:
        outcome: BaseException | None = None
        try:
            write_all(fd, data)
        except OSError as error:
            outcome = error
        try:
            loop.call_soon_threadsafe(report, outcome)
        except RuntimeError:
            pass  # the loop is gone: the carrier is exiting anyway

    threading.Thread(target=work, name="stdout-writer", daemon=True).start()
    failure = await done
    if failure is not None:
        raise failure


def write_all(fd: int, data: bytes) -> None:
    """Given an fd and bytes, write all of them (raise OSError, e.g. EPIPE)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
