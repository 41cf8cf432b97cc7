"""The upload's bookkeeping (pure): which offsets a put/resume may continue
from, what an ack may free, and how a frame is cut at a resume offset.

Threat: a hostile or broken server answering a resume with an offset it
cannot hold (data never sent), or one the carrier no longer holds (it lost
acknowledged data): neither may produce a stored backup with a hole or a
duplicate. Residual risk: none here; the server's whole-stream digest check
is the second line of defence.
"""

from __future__ import annotations

import mmap
from collections import deque

import pytest

from carrier_vm.errors import DataError
from carrier_vm.frames import PAYLOAD_AT, Frame
from carrier_vm.upload import Outbox, ResumeImpossible, check_start_offset
from qbackup_protocol import VERB_PUT, VERB_RESUME, CarrierExit, decode_frame_header

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
    box = Outbox(FakeReader())  # type: ignore[arg-type]
    box.frames = deque(frame(first + i * FRAME, i) for i in range(count))
    box.taken = first + count * FRAME
    box.acked, box.sent_high = acked, sent_high
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
    assert [f.start for f in box.frames] == [2000, 3000]
    assert [f.start for f in box.reader.recycled] == [0, 1000]  # type: ignore[attr-defined]
    assert box.held_from == 2000


@pytest.mark.parametrize("offset", [4001, 100])
def test_an_ack_beyond_what_was_sent_or_going_back_is_a_data_error(offset: int) -> None:
    box = outbox_holding(0, 4, 500, 4000)
    with pytest.raises(DataError):
        box.acknowledge(offset)


def test_a_frame_cut_at_a_resume_offset_carries_exactly_the_rest() -> None:
    piece = frame(5000, 7)
    wire = bytes(piece.wire_bytes(5300))
    kind, length = decode_frame_header(wire[:5])
    assert (kind, length) == (b"D", 700)
    assert wire[5:] == bytes([7]) * 700
    whole = bytes(piece.wire_bytes(5000))
    assert decode_frame_header(whole[:5]) == (b"D", FRAME)


def test_resent_bytes_are_counted_once_per_resend() -> None:
    box = outbox_holding(0, 4, 0, 0)
    box.note_sent(0, 3000)
    box.note_sent(2000, 4000)  # a resume from 2000: 1000 bytes again
    assert (box.resent, box.sent_high) == (1000, 4000)


def test_a_repeated_ack_is_no_progress() -> None:
    # R2 finding 3: useless acks (the same offset again) must not count as
    # progress, or a server dripping them keeps a full outbox waiting for ever.
    box = outbox_holding(0, 4, 1000, 4000)
    box.acked_event.clear()
    box.acknowledge(1000)
    assert not box.acked_event.is_set()
    box.acknowledge(2000)
    assert box.acked_event.is_set()
