"""The stdin reader: whole frames from whatever pieces the pipe delivers,
the SHA-256 of every byte exactly once, a bounded pool of buffers, and
stdin handed back in the blocking mode it came in (its file description
may be shared with the process that started the carrier)."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import pytest

from carrier_vm.frames import PAYLOAD_AT, FrameReader, PoolExhausted


async def read_all(fd: int, frame_size: int = 1024) -> tuple[list[bytes], bytes]:
    """Read FD to EOF; return the frames' payloads and the reader's digest."""
    reader = FrameReader(fd, max_frames=4, frame_size=frame_size)
    reader.start()
    payloads = []
    try:
        while (frame := await reader.next_frame()) is not None:
            payloads.append(bytes(frame.buffer[PAYLOAD_AT : PAYLOAD_AT + frame.length]))
            reader.recycle(frame)
    finally:
        reader.stop()
    return payloads, reader.digest()


def pipe_with(data: bytes) -> int:
    read_fd, write_fd = os.pipe()
    os.write(write_fd, data)
    os.close(write_fd)
    return read_fd


def test_reader_hands_over_whole_frames_then_eof() -> None:
    data = os.urandom(2500)
    fd = pipe_with(data)
    try:
        payloads, digest = asyncio.run(read_all(fd))
    finally:
        os.close(fd)
    assert [len(p) for p in payloads] == [1024, 1024, 452]
    assert b"".join(payloads) == data
    assert digest == hashlib.sha256(data).digest()


def test_frames_are_whole_however_the_pipe_delivers_the_pieces() -> None:
    # qrexec writes 64 KiB at a time; here 100-byte pieces, one per turn of
    # the event loop, so the reader keeps finding the pipe empty and waiting.
    data = os.urandom(3000)
    read_fd, write_fd = os.pipe()
    pieces = [data[i : i + 100] for i in range(0, len(data), 100)]

    async def feed_and_read() -> tuple[list[bytes], bytes]:
        loop = asyncio.get_running_loop()

        def write_next() -> None:
            if pieces:
                os.write(write_fd, pieces.pop(0))
                loop.call_soon(write_next)
            else:
                os.close(write_fd)

        loop.call_soon(write_next)
        return await read_all(read_fd)

    try:
        payloads, digest = asyncio.run(feed_and_read())
    finally:
        os.close(read_fd)
    assert [len(p) for p in payloads] == [1024, 1024, 952]
    assert b"".join(payloads) == data
    assert digest == hashlib.sha256(data).digest()


def test_a_read_error_reaches_the_put(tmp_path: Path) -> None:
    fd = os.open(tmp_path, os.O_RDONLY)  # reading a directory: EISDIR

    async def read_directory() -> None:
        reader = FrameReader(fd, max_frames=2, frame_size=1024)
        reader.start()
        try:
            await reader.next_frame()
        finally:
            reader.stop()

    try:
        with pytest.raises(IsADirectoryError):
            asyncio.run(asyncio.wait_for(read_directory(), 10))
    finally:
        os.close(fd)


def test_a_caller_cancelled_while_waiting_for_stdin_loses_no_byte() -> None:
    # The session is lost while the carrier waits for Qubes mid-frame: the
    # send task is cancelled. The bytes already read (and hashed) must come
    # out in the next frame, once, or the resumed stream has a hole.
    data = os.urandom(2500)
    read_fd, write_fd = os.pipe()
    os.write(write_fd, data[:700])

    async def cancel_then_read() -> tuple[list[bytes], bytes, int]:
        reader = FrameReader(read_fd, max_frames=2, frame_size=1024)
        reader.start()
        try:
            waiting = asyncio.ensure_future(reader.next_frame())
            while not reader._waiting:  # noqa: SLF001 - until it waits for more
                await asyncio.sleep(0)
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            os.write(write_fd, data[700:])
            os.close(write_fd)
            payloads = []
            while (frame := await reader.next_frame()) is not None:
                payloads.append(bytes(frame.buffer[PAYLOAD_AT : PAYLOAD_AT + frame.length]))
                reader.recycle(frame)
        finally:
            reader.stop()
        return payloads, reader.digest(), reader.total

    try:
        payloads, digest, total = asyncio.run(asyncio.wait_for(cancel_then_read(), 10))
    finally:
        os.close(read_fd)
    assert b"".join(payloads) == data
    assert (total, digest) == (len(data), hashlib.sha256(data).digest())
    assert [len(p) for p in payloads] == [1024, 1024, 452]


def test_eof_needs_no_free_buffer() -> None:
    # Every buffer holds unacknowledged data when the stream ends in a short
    # frame: the end is known without another buffer (waiting for an ack
    # that frees one could wait for ever).
    fd = pipe_with(b"x" * 1500)

    async def hold_all() -> tuple[list[int], object]:
        reader = FrameReader(fd, max_frames=2, frame_size=1024)
        reader.start()
        try:
            first = await reader.next_frame()
            second = await reader.next_frame()
            assert first is not None and second is not None
            return [first.length, second.length], await reader.next_frame()
        finally:
            reader.stop()

    try:
        lengths, last = asyncio.run(asyncio.wait_for(hold_all(), 10))
    finally:
        os.close(fd)
    assert (lengths, last) == ([1024, 476], None)


def test_the_pool_never_grows_past_max_frames() -> None:
    # Memory is bounded by the pool: a caller that asks for more frames than
    # it returned gets an error, never another buffer.
    fd = pipe_with(b"x" * 10_000)

    async def take_without_returning() -> int:
        reader = FrameReader(fd, max_frames=3, frame_size=1024)
        reader.start()
        taken = 0
        try:
            while True:
                await reader.next_frame()
                taken += 1
        except PoolExhausted:
            return taken
        finally:
            reader.stop()

    try:
        assert asyncio.run(take_without_returning()) == 3
    finally:
        os.close(fd)


def test_stdin_gets_back_its_blocking_mode() -> None:
    fd = pipe_with(b"x" * 10)
    try:
        assert os.get_blocking(fd)
        asyncio.run(read_all(fd))
        assert os.get_blocking(fd)
    finally:
        os.close(fd)
