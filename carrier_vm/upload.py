"""``put NAME``: stream the backup on stdin to the server, surviving lost
connections, and insist on its receipt.

The server only STAGES the upload: it becomes the backup NAME when dom0 sends
``commit NAME`` (commit.py) after Qubes reported success -- a stream Qubes
aborted may end in a clean EOF here, which the carrier cannot tell from a
complete backup. Success is claimed only when the server's shell exited 0 AND
its receipt names the same name, size and SHA-256 the carrier computed while
sending.

Resuming (protocol 3): the server answers ``{"offset": 0}``, then
``{"ack": N}`` each time it has stored the first N bytes durably. The carrier
keeps every byte read from stdin until it is acknowledged (at most
``resume_buffer`` bytes: then it stops reading stdin, which holds
Qubes). When the connection is lost (or the server stops taking data), it
reconnects with backoff for up to ``resume_window`` seconds, sends ``resume
NAME``, checks that the offset D the server answers lies within what it still
holds, and sends the data from D on; the end frame still carries the length
and SHA-256 of the WHOLE stream, hashed once as it was read. Past the window,
the put fails as a lost connection always did (exit 75).

Several destinations (the fan-out): stdin is read once, hashed once, into
ONE Stream whose frames every destination's Outbox sends from, each with
its own connection, acks and resume state; a frame is recycled once every
destination still in the run acknowledged it, so memory stays the buffer
plus a constant. A slower destination that keeps making progress paces the
run; one that holds the full buffer without progress for its
progress_timeout is dropped from the run (Dropped) and the others go on.
One destination is the case N=1: nothing is ever dropped, and a stall is a
lost connection, resumed within resume_window.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

from carrier_vm.config import CarrierConfig
from carrier_vm.errors import (
    AlreadyExists,
    CarrierError,
    DataError,
    Dropped,
    TemporaryFailure,
    parse_hostile,
)
from carrier_vm.frames import Frame, FrameReader
from carrier_vm.replies import LineReader
from carrier_vm.ssh import TIMEOUTS, Link, Reader, Writer, run_session
from qbackup_protocol import client
from qbackup_protocol.carrier_service import (
    DEFAULT_DESTINATION,
    MAX_OUTAGES_REPORTED,
    TransferStats,
)
from qbackup_protocol.wire import (
    DEFAULT_DATA_FRAME,
    FRAME_HEADER_SIZE,
    VERB_PUT,
    VERB_RESUME,
    Ack,
    BackupRecord,
    ProtocolError,
    ShellExit,
    encode_end_frame,
)

logger = logging.getLogger(__name__)

MAX_RECONNECTS = 1000  # per transfer: a bound even for a server that cuts at every resume
# Smallest slice written at a time under a rate limit (keeps the pacing smooth).
MIN_RATE_SLICE = 16 * 1024


class ResumeImpossible(TemporaryFailure):
    """The server no longer holds what the carrier would continue from: the
    upload cannot be resumed (exit code as for any lost connection)."""


class NothingToResume(ResumeImpossible):
    """resume found no interrupted upload of that name on the server."""


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


class Stream:
    """The stream as the carrier holds it for every destination: frames read
    from stdin (once, hashed once) and not yet acknowledged by every
    destination still in the run, oldest first; the Outbox of each such
    destination; and the most frames ever held at once (the buffer's own
    accounting: never more than the reader's pool)."""

    def __init__(self, reader: FrameReader) -> None:
        self.reader = reader
        self.frames: deque[Frame] = deque()
        self.taken = 0  # end of the last frame taken from the reader
        self.finished = False  # the reader reached EOF (total and digest final)
        self.outboxes: list[Outbox] = []  # the destinations still in the run
        self.freed = asyncio.Event()  # set when a frame is recycled or a destination leaves
        self.peak = 0
        self.reading = asyncio.Lock()  # one destination at a time reads stdin
        # How the run stops a destination it dropped (its task is cancelled).
        self.on_drop: Callable[[Outbox], None] = lambda outbox: None

    @property
    def held_from(self) -> int:
        """The first stream offset the carrier can still send."""
        return self.frames[0].start if self.frames else self.taken

    def full(self) -> bool:
        """Return whether every buffer holds unacknowledged data (no more
        stdin can be read until the destinations acknowledge some)."""
        return len(self.frames) >= self.reader.max_frames

    def held(self, offset: int) -> Frame | None:
        """Given a stream OFFSET, return the held frame holding it, if any."""
        for frame in self.frames:
            if frame.start <= offset < frame.end:
                return frame
        return None

    async def frame_at(self, offset: int) -> Frame | None:
        """Given a stream OFFSET, return the frame holding it (reading a new
        one from stdin when OFFSET is where the held data ends), or None at
        the end of the stream."""
        frame = self.held(offset)
        if frame is not None:
            return frame
        async with self.reading:
            frame = self.held(offset)  # another destination read it meanwhile
            if frame is not None:
                return frame
            if offset != self.taken:
                raise ResumeImpossible("the carrier no longer holds the data to resume from")
            if self.finished:
                return None
            new = await self.reader.next_frame()
            if new is None:
                self.finished = True
                return None
            self.frames.append(new)
            self.taken = new.end
            self.peak = max(self.peak, len(self.frames))
            return new

    def release(self) -> None:
        """Recycle every frame that each destination still in the run acknowledged."""
        low = min((outbox.acked for outbox in self.outboxes), default=self.taken)
        freed = False
        while self.frames and self.frames[0].end <= low:
            self.reader.recycle(self.frames.popleft())
            freed = True
        if freed:
            self.freed.set()

    def leave(self, outbox: Outbox) -> None:
        """Given a destination's outbox, take it out of the run (it ended, or
        was dropped): it holds no data any more."""
        if outbox in self.outboxes:
            self.outboxes.remove(outbox)
            self.release()
            self.freed.set()

    def holders(self) -> list[Outbox]:
        """Return the destinations that keep the oldest frame held."""
        oldest = self.frames[0].end if self.frames else self.taken
        return [outbox for outbox in self.outboxes if outbox.acked < oldest]


@dataclass(eq=False)
class Outbox:
    """One destination's view of the Stream: what its server acknowledged,
    what was sent to it so far, and since when it made no progress."""

    stream: Stream
    destination: str = DEFAULT_DESTINATION
    progress_timeout: float = 0.0
    acked: int = 0  # the server holds the first ACKED bytes durably
    sent_high: int = 0  # the furthest offset ever written to a session
    resent: int = 0  # bytes written again after a reconnection
    acked_event: asyncio.Event = field(default_factory=asyncio.Event)
    progress_at: float = field(default_factory=time.monotonic)  # the last ack that freed data
    dropped: str = ""  # why the run dropped this destination

    def __post_init__(self) -> None:
        self.stream.outboxes.append(self)

    def acknowledge(self, offset: int) -> None:
        """Given the server's durable OFFSET, let the stream recycle every
        frame all destinations hold; raise DataError for an offset that goes
        back or beyond what was sent."""
        if offset < self.acked or offset > self.sent_high:
            raise DataError("the server acknowledged data it was never sent")
        if offset == self.acked:
            return  # no progress: it must not count as any (a drip of useless acks)
        self.acked = offset
        self.progress_at = time.monotonic()
        self.stream.release()
        self.acked_event.set()

    def note_sent(self, start: int, end: int) -> None:
        """Given the stream range [START, END) just written, count what was
        written before (resent) and move the high-water mark."""
        self.resent += max(0, min(end, self.sent_high) - start)
        self.sent_high = max(self.sent_high, end)


@dataclass
class Outages:
    """How often the connection was lost, and for how long each time."""

    lost: int = 0
    durations: list[float] = field(default_factory=list)

    def stats(self, name: str, outbox: Outbox) -> TransferStats:
        return TransferStats(
            name, self.lost, tuple(self.durations[:MAX_OUTAGES_REPORTED]), outbox.resent,
            outbox.destination,
        )


@dataclass(frozen=True)
class Uploaded:
    """What a finished put returns: the verified receipt and how it went."""

    record: BackupRecord
    stats: TransferStats


async def put_backup(
    link: Link,
    name: str,
    fd: int,
    config: CarrierConfig,
    keep_stats: Callable[[TransferStats], None] = lambda stats: None,
) -> Uploaded:
    """Given a Link, a valid NAME and the input FD, put FD to that one
    server (see put_to)."""
    reader = open_stream(fd, config)
    try:
        return await put_to(link, name, Outbox(Stream(reader)), config, keep_stats)
    finally:
        reader.stop()


def open_stream(fd: int, config: CarrierConfig) -> FrameReader:
    """Given the input FD and the config, return the started reader whose
    pool is resume_buffer (stop it when done)."""
    reader = FrameReader(fd, max(2, config.resume_buffer // DEFAULT_DATA_FRAME))
    reader.start()
    return reader


async def put_to(
    link: Link,
    name: str,
    outbox: Outbox,
    config: CarrierConfig,
    keep_stats: Callable[[TransferStats], None] = lambda stats: None,
) -> Uploaded:
    """Given a Link, a valid NAME and the destination's OUTBOX, stream the
    Stream to the server's ``put NAME`` (resuming over new connections when
    one is lost, within resume_window) and return the server's matching
    receipt and the transfer stats (also handed to KEEP_STATS, and logged,
    however the put ends); raise a CarrierError if the server refused, the
    link stayed down, the receipt differs, or the run dropped it (Dropped)."""
    outages = Outages()
    verb = VERB_PUT
    restarted = False
    # The window runs from the first loss after the last progress: failed
    # resumes (busy, refused, cut again) without progress stay one outage.
    lost_at = 0.0
    progress_mark = -1
    try:
        while True:
            try:
                record = await upload_session(link, verb, name, outbox, config)
            except NothingToResume:
                if outbox.stream.held_from != 0 or restarted:
                    raise
                # The first session was lost before the server made its
                # partial upload: start over (once), the carrier holds it all.
                restarted = True
                verb = VERB_PUT
                continue
            except TemporaryFailure as failure:
                if isinstance(failure, ResumeImpossible) or config.resume_window <= 0:
                    raise
                if outages.lost >= MAX_RECONNECTS:
                    raise TemporaryFailure(
                        f"{failure} (gave up after {MAX_RECONNECTS} reconnections)"
                    ) from None
                outages.lost += 1
                logger.warning("connection lost during the upload of %s to %s: %s", name,
                               outbox.destination, failure)
                if outbox.acked > progress_mark:
                    lost_at = time.monotonic()
                    progress_mark = outbox.acked
                outages.durations.append(await link.reconnect_within(failure, lost_at))
                verb = VERB_RESUME
                logger.info(
                    "reconnected after %.1fs, resuming %s (%d bytes acknowledged)",
                    outages.durations[-1],
                    name,
                    outbox.acked,
                )
                continue
            return Uploaded(record, outages.stats(name, outbox))
    finally:
        stats = outages.stats(name, outbox)
        log_stats(stats)
        keep_stats(stats)


def log_stats(stats: TransferStats) -> None:
    """Given how an upload went, log it when the connection was ever lost."""
    if stats.lost:
        logger.info(
            "upload of %s: connection lost %d times, outages %s s, %d bytes resent",
            stats.name,
            stats.lost,
            ", ".join(f"{seconds:.1f}" for seconds in stats.outages),
            stats.resent,
        )


async def upload_session(
    link: Link, verb: str, name: str, outbox: Outbox, config: CarrierConfig
) -> BackupRecord:
    """Given the link, ``put`` or ``resume``, NAME and the outbox, run one
    upload session to its end; return the verified receipt. Raise
    TemporaryFailure when the connection or session was lost (resumable),
    ResumeImpossible or another CarrierError when it cannot go on."""
    offset_known: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    sent = asyncio.Event()

    async def send(writer: Writer[bytes]) -> None:
        try:
            start = await asyncio.wait_for(asyncio.shield(offset_known), config.progress_timeout)
        except TIMEOUTS:
            raise TemporaryFailure(
                f"the server did not start the upload within {config.progress_timeout:g}s "
                "(progress_timeout)"
            ) from None
        await send_stream(writer, outbox, start, config)
        sent.set()

    async def read_replies(reader: Reader[bytes]) -> BackupRecord | None:
        return await follow_replies(LineReader(reader), verb, outbox, offset_known, sent, config)

    command = client.build_command(verb, name)
    try:
        end = await run_session(link.connection, command, config, read_replies, send)
    finally:
        if not offset_known.done():
            offset_known.cancel()
    if end.status is None or end.status == ShellExit.IO:
        # Killed, cut, or ended by the server's idle timeout: its partial
        # upload stays resumable.
        raise TemporaryFailure(f"the server session ended before the upload did ({end.detail})")
    if verb == VERB_RESUME and end.status != ShellExit.OK:
        raise resume_refusal(end.status, end.detail, outbox)
    if not end.input_complete:
        # The server ended the session while we were still sending: whatever
        # it says, the backup is not complete.
        if end.status == ShellExit.OK:
            raise DataError("the server ended the session before the whole backup was sent")
        end.raise_for_status()
    end.raise_for_status()
    if end.value is None:
        raise DataError("the server's reply has no receipt")
    reader = outbox.stream.reader
    return check_receipt_record(end.value, name, reader.total, reader.digest().hex())


def resume_refusal(status: int, detail: str, outbox: Outbox) -> CarrierError:
    """Given the exit status of a refused ``resume``, return the error: busy
    (a left-behind session still ending) is worth another try, the rest ends
    the upload as a lost connection would."""
    suffix = f" ({detail})" if detail else ""
    if status == ShellExit.UNAVAILABLE:
        return TemporaryFailure(f"the server is still busy with the interrupted upload{suffix}")
    if status == ShellExit.NO_SUCH_BACKUP:
        return NothingToResume(f"the server has nothing to resume{suffix}")
    if status == ShellExit.EXISTS:
        if outbox.stream.finished and outbox.sent_high == outbox.stream.taken:
            return ResumeImpossible(
                "the connection was lost after the whole backup was sent; its receipt "
                f"never came{suffix}"
            )
        return AlreadyExists(f"a backup of that name already exists (or is staged){suffix}")
    return ResumeImpossible(f"the server refused to resume (exit status {status}){suffix}")


async def follow_replies(
    lines: LineReader,
    verb: str,
    outbox: Outbox,
    offset_known: asyncio.Future[int],
    sent: asyncio.Event,
    config: CarrierConfig,
) -> BackupRecord | None:
    """Given a put/resume session's reply lines, hand the server's start
    offset to the sender, apply each ack to the outbox, and return the final
    receipt (None if the output ended before it: the exit status says why);
    raise DataError for anything malformed, ResumeImpossible for an offset
    the carrier no longer holds."""
    first = await lines.next_line()
    if first is None:
        return None
    offset = parse_hostile(client.parse_offset, first, "offset reply").offset
    check_start_offset(verb, offset, outbox)
    if offset_known.done():  # the sender gave up waiting (progress_timeout)
        return None
    offset_known.set_result(offset)
    clock = ReceiptClock(sent, config.reply_timeout)
    while True:
        line = await next_reply(lines, clock)
        if line is None:
            return None
        item = parse_hostile(client.parse_upload_line, line, "upload reply")
        if isinstance(item, Ack):
            outbox.acknowledge(item.offset)
            continue
        if await lines.next_line() is not None:
            raise DataError("the server sent lines after its receipt")
        return item


@dataclass
class ReceiptClock:
    """When the receipt is due: TIMEOUT (reply_timeout) seconds after SENT
    (the end frame went out) is first seen set, however many lines come."""

    sent: asyncio.Event
    timeout: float
    due: float | None = None

    def remaining(self) -> float:
        """Return the seconds left for the receipt, starting the clock if needed."""
        if self.due is None:
            self.due = time.monotonic() + self.timeout
        return max(0.0, self.due - time.monotonic())


async def next_reply(lines: LineReader, clock: ReceiptClock) -> bytes | None:
    """Given the reply lines and the receipt's clock, return the next line;
    once the end frame went out, raise DataError if the clock runs out."""
    reading = asyncio.ensure_future(lines.next_line())
    waiting = asyncio.ensure_future(clock.sent.wait())
    try:
        await asyncio.wait({reading, waiting}, return_when=asyncio.FIRST_COMPLETED)
        if reading.done():
            return reading.result()
        try:
            return await asyncio.wait_for(reading, clock.remaining())
        except TIMEOUTS:
            raise DataError(f"no receipt from the server within {clock.timeout:g}s") from None
    finally:
        reading.cancel()
        waiting.cancel()


def check_start_offset(verb: str, offset: int, outbox: Outbox) -> None:
    """Given the offset a put/resume answered, raise unless the carrier can
    continue from it: put starts at 0; resume within the data still held."""
    if verb == VERB_PUT:
        if offset != 0:
            raise DataError("the server's put did not start at offset 0")
        if outbox.stream.held_from != 0:
            raise ResumeImpossible("the carrier no longer holds the start of the upload")
        return
    if offset > outbox.sent_high:
        raise DataError("the server claims to hold data it was never sent")
    # Below what it acknowledged, the server lost data it promised to keep.
    if offset < outbox.stream.held_from or offset < outbox.acked:
        raise ResumeImpossible(
            f"the server holds {offset} bytes, the carrier kept only data from "
            f"{outbox.stream.held_from} on: the upload cannot be resumed"
        )


async def send_stream(
    writer: Writer[bytes], outbox: Outbox, start: int, config: CarrierConfig
) -> None:
    """Given the session's writer, the outbox and the offset to start at,
    send every frame from START, then the end frame and EOF; raise DataError
    if stdin cannot be read, TemporaryFailure if the server accepts nothing
    (or, with a full outbox, acknowledges nothing) for progress_timeout s."""
    limiter = RateLimiter(config.rate_limit)
    stream = outbox.stream
    position = start
    while True:
        # An ack inside the oldest frame frees no buffer: wait for the next.
        # At EOF no buffer is needed (a server whose sync_interval exceeds
        # what is left unacknowledged would never send the ack).
        while stream.full() and position == stream.taken and not stream.reader.at_eof:
            await wait_for_room(outbox, config)
        try:
            frame = await stream.frame_at(position)
        except OSError as error:
            raise DataError(f"cannot read the backup from stdin: {error.strerror}") from None
        if frame is None:
            break
        await write_frame(writer, outbox, frame, position, limiter, config)
        position = frame.end
    logger.info("sent %d bytes, sending the end frame", stream.reader.total)
    writer.write(encode_end_frame(stream.reader.total, stream.reader.digest()))
    writer.write_eof()
    # No drain here: once the end frame is queued this task must be done, so
    # a server that answers and closes quickly is never mistaken for one
    # that hung up early; the receipt is awaited next anyway.


async def wait_for_room(outbox: Outbox, config: CarrierConfig) -> None:
    """Wait until a buffer is free. Alone in the run: wait_for_ack. With
    others: wait until every destination still in the run acknowledged the
    oldest frame; one that holds it without progress for its
    progress_timeout is dropped from the run (raise Dropped if that is
    OUTBOX's own destination)."""
    stream = outbox.stream
    if len(stream.outboxes) <= 1:
        await wait_for_ack(outbox, config)
        return
    stream.freed.clear()
    holders = stream.holders()
    if not holders:
        return
    due = min(holder.progress_at + holder.progress_timeout for holder in holders)
    try:
        await asyncio.wait_for(stream.freed.wait(), max(0.0, due - time.monotonic()))
    except TIMEOUTS:
        drop_stalled(outbox)


def drop_stalled(caller: Outbox) -> None:
    """Given the outbox of the destination waiting for room, drop from the
    run each destination that holds the oldest frame without progress for
    its progress_timeout (never the last one in the run); raise Dropped if
    the caller is one."""
    stream = caller.stream
    now = time.monotonic()
    for holder in sorted(stream.holders(), key=lambda outbox: outbox.progress_at):
        if len(stream.outboxes) <= 1 or now < holder.progress_at + holder.progress_timeout:
            continue
        holder.dropped = (
            f"dropped from the run: it acknowledged nothing for {holder.progress_timeout:g}s "
            "(progress_timeout) while the others waited for the shared resume_buffer"
        )
        logger.warning("%s: %s", holder.destination, holder.dropped)
        stream.leave(holder)
        if holder is caller:
            raise Dropped(caller.dropped)
        stream.on_drop(holder)


async def wait_for_ack(outbox: Outbox, config: CarrierConfig) -> None:
    """Wait until the server acknowledges more data; raise TemporaryFailure
    after progress_timeout seconds without an ack."""
    outbox.acked_event.clear()
    try:
        await asyncio.wait_for(outbox.acked_event.wait(), config.progress_timeout)
    except TIMEOUTS:
        raise TemporaryFailure(
            f"the server acknowledged nothing for {config.progress_timeout:g}s "
            "(progress_timeout) while the carrier's resume_buffer was full"
        ) from None


async def write_frame(
    writer: Writer[bytes],
    outbox: Outbox,
    frame: Frame,
    offset: int,
    limiter: RateLimiter,
    config: CarrierConfig,
) -> None:
    """Given a frame and the stream OFFSET to start at, write it as one D
    frame (in slices under a rate limit) and wait for the channel to take it;
    asyncssh copies the bytes, so the buffer stays the outbox's."""
    data = frame.wire_bytes(offset)
    step = limiter.slice_size(len(data))
    sent = offset
    for start in range(0, len(data), step):
        piece = data[start : start + step]
        # asyncssh takes any bytes-like object and copies it (typed as bytes).
        writer.write(cast(bytes, piece))
        # Counted as sent at once, before any pause: the server may
        # acknowledge these bytes while the rate limiter sleeps.
        data_end = min(frame.end, offset + start + len(piece) - FRAME_HEADER_SIZE)
        outbox.note_sent(sent, max(sent, data_end))
        sent = max(sent, data_end)
        await drain_with_progress(writer, config)
        await limiter.account(len(piece))


async def drain_with_progress(writer: Writer[bytes], config: CarrierConfig) -> None:
    """Wait until the channel took what was written; raise TemporaryFailure if
    the server accepts nothing for progress_timeout seconds (it stopped
    reading -- a hung disk or process -- while sshd still answers keepalives)."""
    try:
        await asyncio.wait_for(writer.drain(), config.progress_timeout)
    except TIMEOUTS:
        raise TemporaryFailure(
            f"the server accepted no data for {config.progress_timeout:g}s (progress_timeout)"
        ) from None


def check_receipt_record(record: BackupRecord, name: str, size: int, sha256: str) -> BackupRecord:
    """Given the server's parsed receipt, return it if it names NAME with
    SIZE and SHA256; raise DataError otherwise."""
    try:
        client.check_receipt(record, name)
    except ProtocolError as error:
        raise DataError(f"the server's {error}") from None
    # The receipt is the server's word that it stored THIS stream: every
    # field must match what we sent, or the backup is not proven stored.
    if record.size != size:
        raise DataError(f"the server stored {record.size} bytes, the carrier sent {size}")
    if record.sha256 != sha256:
        raise DataError("the server's receipt has a different SHA-256 than the data sent")
    return record


def check_receipt(output: bytes, name: str, size: int, sha256: str) -> BackupRecord:
    """Given the server's whole stdout after a commit, return its BackupRecord
    if it is exactly one receipt line for NAME, SIZE and SHA256; raise
    DataError otherwise."""
    return check_receipt_record(parse_receipt(output, name), name, size, sha256)


def parse_receipt(output: bytes, name: str) -> BackupRecord:
    """Given the server's whole stdout after a commit, return its BackupRecord
    if it is exactly one well-formed receipt for NAME; raise DataError otherwise."""
    return parse_hostile(lambda line: client.parse_receipt(line, name), output, "receipt")
