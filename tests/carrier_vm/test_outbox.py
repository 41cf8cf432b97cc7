"""The upload's bookkeeping (pure): which offsets a put/resume may continue
from, what an ack may free, and how a frame is cut at a resume offset.

Threat: a hostile or broken server answering a resume with an offset it
cannot hold (data never sent), or one the carrier no longer holds (it lost
acknowledged data): neither may produce a stored backup with a hole or a
duplicate. Residual risk: none here; the server's whole-stream digest check
is the second line of defence.
"""

from __future__ import annotations

import asyncio
import mmap
import os
from collections import deque
from pathlib import Path

import pytest

from carrier_vm.config import CarrierConfig
from carrier_vm.errors import DataError, Dropped
from carrier_vm.frames import PAYLOAD_AT, Frame, FrameReader
from carrier_vm.upload import (
    Outbox,
    ResumeImpossible,
    Stream,
    check_start_offset,
    drop_stalled,
    send_stream,
)
from qbackup_protocol.carrier_service import CarrierExit
from qbackup_protocol.wire import (
    FRAME_END,
    FRAME_HEADER_SIZE,
    VERB_PUT,
    VERB_RESUME,
    FrameHeader,
    decode_frame_header,
)

FRAME = 1000


class FakeReader:
    """Stands in for FrameReader: a pool size and a recycle bin."""

    max_frames = 4

    def __init__(self) -> None:
        self.recycled: list[Frame] = []

    def recycle(self, frame: Frame) -> None:
        self.recycled.append(frame)


def frame(start: int, fill: int) -> Frame:
    buffer = mmap.mmap(-1, PAYLOAD_AT + FRAME)
    buffer[PAYLOAD_AT:] = bytes([fill]) * FRAME
    return Frame(buffer, start, FRAME)


def outbox_holding(first: int, count: int, acked: int, sent_high: int) -> Outbox:
    """An outbox whose frames cover [first, first + count * FRAME)."""
    box = Outbox(Stream(FakeReader()))  # type: ignore[arg-type]
    box.stream.frames = deque(frame(first + i * FRAME, i) for i in range(count))
    box.stream.taken = first + count * FRAME
    box.acked = acked
    box.sent_high = sent_high
    return box


def test_put_must_start_at_zero() -> None:
    box = outbox_holding(0, 2, 0, 0)
    check_start_offset(VERB_PUT, 0, box)
    with pytest.raises(DataError):
        check_start_offset(VERB_PUT, 5, box)


@pytest.mark.parametrize("offset", [1000, 1500, 2999, 3000])
def test_resume_from_an_offset_the_carrier_holds_is_accepted(offset: int) -> None:
    check_start_offset(VERB_RESUME, offset, outbox_holding(1000, 3, 1000, 3000))


def test_resume_beyond_what_was_sent_is_a_data_error() -> None:
    # The server claims bytes it never received: a lie, or someone else's data.
    with pytest.raises(DataError):
        check_start_offset(VERB_RESUME, 3001, outbox_holding(1000, 3, 1000, 3000))


@pytest.mark.parametrize("offset", [0, 999])
def test_resume_before_what_the_carrier_holds_is_impossible(offset: int) -> None:
    with pytest.raises(ResumeImpossible) as refused:
        check_start_offset(VERB_RESUME, offset, outbox_holding(1000, 3, 1000, 3000))
    # Reported as any lost connection is: try the backup again later.
    assert refused.value.exit_code == CarrierExit.TEMPORARY


def test_resume_below_an_acknowledged_offset_is_impossible() -> None:
    # The server lost data it said it held durably: do not paper over it.
    with pytest.raises(ResumeImpossible):
        check_start_offset(VERB_RESUME, 1500, outbox_holding(1000, 3, 2000, 3000))


def test_an_ack_frees_exactly_the_frames_wholly_before_it() -> None:
    box = outbox_holding(0, 4, 0, 4000)
    box.acknowledge(2500)
    assert [f.start for f in box.stream.frames] == [2000, 3000]
    assert [f.start for f in box.stream.reader.recycled] == [0, 1000]  # type: ignore[attr-defined]
    assert box.stream.held_from == 2000


@pytest.mark.parametrize("offset", [4001, 100])
def test_an_ack_beyond_what_was_sent_or_going_back_is_a_data_error(offset: int) -> None:
    box = outbox_holding(0, 4, 500, 4000)
    with pytest.raises(DataError):
        box.acknowledge(offset)


def test_a_frame_cut_at_a_resume_offset_carries_exactly_the_rest() -> None:
    piece = frame(5000, 7)
    wire = bytes(piece.wire_bytes(5300))
    assert decode_frame_header(wire[:5]) == FrameHeader(b"D", 700)
    assert wire[5:] == bytes([7]) * 700
    whole = bytes(piece.wire_bytes(5000))
    assert decode_frame_header(whole[:5]) == FrameHeader(b"D", FRAME)


def test_resent_bytes_are_counted_once_per_resend() -> None:
    box = outbox_holding(0, 4, 0, 0)
    box.note_sent(0, 3000)
    box.note_sent(2000, 4000)  # a resume from 2000: 1000 bytes again
    assert (box.resent, box.sent_high) == (1000, 4000)


def test_a_repeated_ack_is_no_progress() -> None:
    # Useless acks (the same offset again) must not count as
    # progress, or a server dripping them keeps a full outbox waiting for ever.
    box = outbox_holding(0, 4, 1000, 4000)
    box.acked_event.clear()
    box.acknowledge(1000)
    assert not box.acked_event.is_set()
    box.acknowledge(2000)
    assert box.acked_event.is_set()


class RecordingWriter:
    """Stands in for the SSH channel's writer: keeps what was written."""

    def __init__(self) -> None:
        self.written = bytearray()
        self.eof = False

    def write(self, data: bytes) -> None:
        self.written += data

    async def drain(self) -> None:
        await asyncio.sleep(0)

    def write_eof(self) -> None:
        self.eof = True


def payload_of(wire: bytes) -> bytes:
    """Given D frames then an E frame, return the D frames' payload."""
    payload = bytearray()
    view = memoryview(wire)
    while True:
        header = decode_frame_header(bytes(view[:FRAME_HEADER_SIZE]))
        if header.kind == FRAME_END:
            return bytes(payload)
        payload += view[FRAME_HEADER_SIZE : FRAME_HEADER_SIZE + header.length]
        view = view[FRAME_HEADER_SIZE + header.length :]


def test_an_ack_inside_the_oldest_frame_frees_no_buffer_and_the_put_waits() -> None:
    # Both buffers hold unacknowledged data and the sender waits for an ack.
    # The server acknowledges half of the first frame (it syncs on its own
    # cadence, not on frame boundaries): no buffer is free yet, so the sender
    # must go on waiting -- not take a third buffer (memory would no longer be
    # bounded), nor fail -- until an ack frees one.
    data = os.urandom(3 * FRAME)
    read_fd, write_fd = os.pipe()
    os.write(write_fd, data)
    os.close(write_fd)
    config = CarrierConfig(host="server", known_hosts=Path("/dev/null"), progress_timeout=30)

    async def send() -> tuple[RecordingWriter, Outbox]:
        reader = FrameReader(read_fd, max_frames=2, frame_size=FRAME)
        reader.start()
        box = Outbox(Stream(reader))
        writer = RecordingWriter()
        sender = asyncio.ensure_future(send_stream(writer, box, 0, config))  # type: ignore[arg-type]
        try:
            # Until the sender waits for an ack with both buffers out (only
            # that wait clears the event).
            box.acked_event.set()
            while box.acked_event.is_set():
                await asyncio.sleep(0)
            assert box.sent_high == 2 * FRAME and box.stream.full()
            box.acknowledge(FRAME // 2)
            for _ in range(20):  # the sender runs (and must not take a buffer)
                await asyncio.sleep(0)
            assert not sender.done()
            assert box.sent_high == 2 * FRAME
            box.acknowledge(2 * FRAME)
            await sender
        finally:
            sender.cancel()
            reader.stop()
        return writer, box

    try:
        writer, box = asyncio.run(asyncio.wait_for(send(), 30))
    finally:
        os.close(read_fd)
    assert writer.eof
    assert payload_of(bytes(writer.written)) == data


def test_a_stream_ending_while_every_buffer_is_out_ends_without_an_ack() -> None:
    # The last, short frame takes the last buffer: the end frame must go out
    # without waiting for an ack. The server acknowledges only every
    # sync_interval bytes, and fewer than that may be left unacknowledged.
    data = os.urandom(FRAME + FRAME // 2)
    read_fd, write_fd = os.pipe()
    os.write(write_fd, data)
    os.close(write_fd)
    config = CarrierConfig(host="server", known_hosts=Path("/dev/null"), progress_timeout=60)

    async def send() -> RecordingWriter:
        reader = FrameReader(read_fd, max_frames=2, frame_size=FRAME)
        reader.start()
        writer = RecordingWriter()
        try:
            await send_stream(writer, Outbox(Stream(reader)), 0, config)  # type: ignore[arg-type]
        finally:
            reader.stop()
        return writer

    try:
        writer = asyncio.run(asyncio.wait_for(send(), 10))
    finally:
        os.close(read_fd)
    assert writer.eof
    assert payload_of(bytes(writer.written)) == data


def test_a_resume_inside_a_frame_leaves_the_shared_buffer_alone() -> None:
    # Threat: several destinations send from one buffer; a resume inside a
    # frame must not write its header over bytes another destination has
    # still to send (the stream would differ from its digest there).
    piece = frame(5000, 9)
    before = bytes(piece.buffer)
    wire = bytes(piece.wire_bytes(5300))
    assert bytes(piece.buffer) == before
    assert wire[FRAME_HEADER_SIZE:] == bytes([9]) * 700


def two_outboxes() -> tuple[Outbox, Outbox]:
    """Two destinations' outboxes on one stream of 4 frames, all sent to both."""
    home = outbox_holding(0, 4, 0, 4 * FRAME)
    offsite = Outbox(home.stream, "offsite", progress_timeout=30)
    offsite.sent_high = 4 * FRAME
    return home, offsite


def test_a_frame_is_recycled_only_once_every_destination_acknowledged_it() -> None:
    home, offsite = two_outboxes()
    home.acknowledge(3 * FRAME)
    assert home.stream.held_from == 0  # offsite still needs it all
    offsite.acknowledge(FRAME + 1)
    assert home.stream.held_from == FRAME
    assert [f.start for f in home.stream.reader.recycled] == [0]  # type: ignore[attr-defined]


def test_a_destination_leaving_the_run_frees_what_only_it_held() -> None:
    home, offsite = two_outboxes()
    home.acknowledge(3 * FRAME)
    home.stream.leave(offsite)
    assert home.stream.held_from == 3 * FRAME and home.stream.freed.is_set()


def test_a_stalled_holder_is_dropped_but_never_the_last_in_the_run() -> None:
    # Progress stamps set in the past: the clock is never waited for.
    home, offsite = two_outboxes()
    home.acknowledge(4 * FRAME)  # home made progress just now
    offsite.progress_at -= 31  # offsite: none for longer than its progress_timeout
    dropped: list[Outbox] = []
    home.stream.on_drop = dropped.append
    drop_stalled(home)
    assert dropped == [offsite] and "progress_timeout" in offsite.dropped
    assert home.stream.outboxes == [home] and home.stream.held_from == 4 * FRAME
    home.progress_at -= 1000
    drop_stalled(home)  # the last one in the run is never dropped
    assert home.stream.outboxes == [home] and not home.dropped


def test_a_stalled_caller_is_dropped_by_raising() -> None:
    home, offsite = two_outboxes()
    offsite.acknowledge(4 * FRAME)
    home.progress_at -= 1000
    home.progress_timeout = 30
    with pytest.raises(Dropped):
        drop_stalled(home)
    assert home.stream.outboxes == [offsite]
