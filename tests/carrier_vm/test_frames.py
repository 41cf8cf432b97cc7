"""The stdin reader thread always ends in a terminal item the put sees: EOF,
its error, or -- if it vanished without either -- ReaderGone within
READER_CHECK seconds. A put never waits for ever on a reader that is gone
(seen under load: dom0 had closed the stream, the put waited idle)."""

from __future__ import annotations

import asyncio
import os

import pytest

import carrier_vm.frames as frames
from carrier_vm.frames import FrameReader, ReaderGone


async def read_all(fd: int) -> list[int]:
    reader = FrameReader(fd, max_frames=4, frame_size=1024)
    reader.start()
    sizes = []
    try:
        while (frame := await reader.next_frame()) is not None:
            sizes.append(frame.length)
            reader.recycle(frame)
    finally:
        reader.stop()
    return sizes


def pipe_with(data: bytes) -> int:
    read_fd, write_fd = os.pipe()
    os.write(write_fd, data)
    os.close(write_fd)
    return read_fd


def test_reader_hands_over_frames_then_eof() -> None:
    fd = pipe_with(b"x" * 2500)
    try:
        assert asyncio.run(read_all(fd)) == [1024, 1024, 452]
    finally:
        os.close(fd)


def test_an_unexpected_error_in_the_reader_reaches_the_put(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: FrameReader, buffer: object) -> int:
        raise RuntimeError("boom")

    monkeypatch.setattr(FrameReader, "_fill", broken)
    fd = pipe_with(b"x" * 100)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            asyncio.run(asyncio.wait_for(read_all(fd), 10))
    finally:
        os.close(fd)


def test_a_reader_that_vanishes_silently_is_noticed(monkeypatch: pytest.MonkeyPatch) -> None:
    # The thread ends without handing over EOF or an error.
    monkeypatch.setattr(FrameReader, "_read_frames", lambda self: None)
    monkeypatch.setattr(FrameReader, "_hand_over", lambda self, item: None)
    monkeypatch.setattr(frames, "READER_CHECK", 0.2)
    fd = pipe_with(b"x" * 100)
    try:
        with pytest.raises(ReaderGone):
            asyncio.run(asyncio.wait_for(read_all(fd), 10))
    finally:
        os.close(fd)
