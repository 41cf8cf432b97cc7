"""``get NAME``: de-frame a stored backup onto stdout, verifying it as it flows.

The bytes go out as they arrive (a backup can be hundreds of GiB), so the
verdict comes at the end: exit 0 only if exactly one well-formed end frame
closed the stream with the length and SHA-256 of everything written, and
nothing followed it. Qubes' restore verifies its own HMACs on top of this.

The server is not trusted to end the stream: before `get NAME` the carrier
asks `list NAME` for NAME's size (on the same connection) and
refuses, before writing it out, any data frame that would take the stream
beyond that size -- a hostile server cannot make a restore read for ever.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import threading
import time
from collections.abc import Awaitable

from carrier_vm.config import CarrierConfig
from carrier_vm.errors import DataError, OutputClosed, TemporaryFailure
from carrier_vm.replies import find_backup
from carrier_vm.ssh import TIMEOUTS, Link, Reader, run_session
from qbackup_protocol.client import build_command
from qbackup_protocol.wire import (
    FRAME_DATA,
    FRAME_HEADER_SIZE,
    VERB_GET,
    ProtocolError,
    ShellExit,
    decode_end_payload,
    decode_frame_header,
)

logger = logging.getLogger(__name__)

READ_SIZE = 1024 * 1024
MAX_RECONNECTS = 1000  # per transfer: a bound even for a server that cuts every session


class Deframer:
    """Incremental decoder of a D...D E stream: feed() bytes, get payload back."""

    def __init__(self, limit: int | None = None, listed_sha256: str | None = None) -> None:
        self.limit = limit  # the listed size: exactly this many bytes; None = no listing
        self.listed_sha256 = listed_sha256
        self.total = 0
        self.finished = False
        self._hash = hashlib.sha256()
        self._pending = bytearray()
        self._kind: bytes | None = None
        self._need = FRAME_HEADER_SIZE

    def restart(self) -> None:
        """Forget any partly received frame: a new session resends from the
        first byte not yet delivered (total and the running hash stay)."""
        self._pending.clear()
        self._kind = None
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
                self._kind = None
                self._need = FRAME_HEADER_SIZE
            else:
                self._finish(chunk)
        if self.finished and self._pending:
            raise DataError("the server sent data after the end of the backup")
        return pieces

    def _start_frame(self, header: bytes) -> None:
        try:
            frame = decode_frame_header(header)
        except ProtocolError as error:
            raise DataError(f"the server sent a malformed stream: {error}") from None
        self._kind = frame.kind
        self._need = frame.length
        # Checked before the frame's payload is passed on: stdout never gets
        # a byte beyond the listed size, and an endless stream ends here.
        if (
            self._kind == FRAME_DATA
            and self.limit is not None
            and self.total + self._need > self.limit
        ):
            raise DataError(f"the server sent more than the backup's listed {self.limit} bytes")

    def _finish(self, payload: bytes) -> None:
        end = decode_end_payload(payload)
        total = end.length
        digest = end.digest
        # The end frame must describe exactly what was delivered: a short,
        # padded or altered stream is refused, never reported as a backup.
        if total != self.total:
            raise DataError(f"size mismatch: the end frame says {total} bytes, {self.total} came")
        if digest != self._hash.digest():
            raise DataError("SHA-256 mismatch: the backup read back differs from the one stored")
        # The listing named the backup's size and digest before a byte came: a
        # stream that is shorter (or another backup) is not NAME, even when
        # its own end frame agrees with it.
        if self.limit is not None and total != self.limit:
            raise DataError(f"size mismatch: the server listed {self.limit} bytes, sent {total}")
        if self.listed_sha256 is not None and digest.hex() != self.listed_sha256:
            raise DataError("SHA-256 mismatch: the stream differs from the backup's listed digest")
        self.finished = True
        self._kind = None
        self._need = 1

    def close(self) -> None:
        """Raise DataError unless the stream ended right after a valid end frame."""
        if not self.finished:
            raise DataError(f"the stream was truncated after {self.total} bytes (no end frame)")


async def get_backup(link: Link, name: str, out_fd: int, config: CarrierConfig) -> int:
    """Given a Link, a valid NAME and an output FD, write the backup's bytes
    to OUT_FD and return its size, resuming with ``get NAME OFFSET`` over a
    new connection (within resume_window) when one is lost; raise a
    CarrierError if the server refused, stalled past the window, or the
    stream was malformed, truncated or did not match its digest."""
    listed = await find_backup(link.connection, name, config)
    deframer = Deframer(limit=listed.size, listed_sha256=listed.sha256)
    lost = 0
    # The window runs from the first loss after the last delivered byte.
    lost_at = 0.0
    progress_mark = -1
    while True:
        try:
            await get_session(link, name, deframer, out_fd, config)
        except TemporaryFailure as failure:
            if config.resume_window <= 0 or deframer.finished:
                raise
            if lost >= MAX_RECONNECTS:
                raise TemporaryFailure(
                    f"{failure} (gave up after {MAX_RECONNECTS} reconnections)"
                ) from None
            lost += 1
            logger.warning("connection lost during the download of %s: %s", name, failure)
            if deframer.total > progress_mark:
                lost_at = time.monotonic()
                progress_mark = deframer.total
            outage = await link.reconnect_within(failure, lost_at)
            logger.info(
                "reconnected after %.1fs, resuming %s at byte %d", outage, name, deframer.total
            )
            continue
        break
    deframer.close()
    logger.info(
        "got %s: %d bytes, digest verified (connection lost %d times)", name, deframer.total, lost
    )
    return deframer.total


async def get_session(
    link: Link, name: str, deframer: Deframer, out_fd: int, config: CarrierConfig
) -> None:
    """Given the link and the deframer, run one ``get NAME [OFFSET]`` session
    from what was already delivered; raise TemporaryFailure when the session
    or connection is lost (resumable), another CarrierError otherwise."""
    deframer.restart()

    async def relay(reader: Reader[bytes]) -> None:
        while True:
            data = await progress(reader.read(READ_SIZE), config)
            if not data:
                return
            pieces = deframer.feed(data)
            if pieces:
                # Writing off the loop keeps keepalives flowing while a slow
                # consumer blocks; the read window stops the server meanwhile.
                try:
                    await write_off_loop(out_fd, b"".join(pieces))
                except OSError as error:
                    raise OutputClosed(
                        f"output closed by the reader ({error.strerror}); transfer aborted"
                    ) from None

    command = build_command(VERB_GET, name, offset=deframer.total or None)
    end = await run_session(link.connection, command, config, relay)
    if end.status is None or end.status == ShellExit.IO:
        # Killed, cut, or ended by the server's idle timeout: ask again.
        raise TemporaryFailure(f"the server session ended before the backup did ({end.detail})")
    end.raise_for_status()


async def progress(read: Awaitable[bytes], config: CarrierConfig) -> bytes:
    """Given a pending read from the server, return its bytes; raise
    TemporaryFailure if none come within progress_timeout (a server that
    stalls while sshd still answers keepalives)."""
    try:
        return await asyncio.wait_for(read, config.progress_timeout)
    except TIMEOUTS:
        raise TemporaryFailure(
            f"the server sent nothing for {config.progress_timeout:g}s (progress_timeout)"
        ) from None


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
