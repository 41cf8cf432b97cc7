"""The framed stream `get NAME` prints (docs/PROTOCOL.md §2): data frames,
then one end frame with the total length and SHA-256, then EOF. Read as
hostile: a stream that is cut, garbled or disagrees with its end frame is
refused like a truncated file."""

from __future__ import annotations

import hashlib
from typing import BinaryIO

from qbackup_extract.errors import ExtractError, ExtractExit
from qbackup_protocol.wire import (
    FRAME_DATA,
    FRAME_HEADER_SIZE,
    ProtocolError,
    StreamEnd,
    decode_end_payload,
    decode_frame_header,
)


class GetStream:
    """A reader of the data in a `get` stream: read() returns data bytes,
    b"" only after a valid end frame followed by EOF."""

    def __init__(self, pipe: BinaryIO, label: str) -> None:
        self._pipe = pipe
        self._label = label
        self._left = 0
        self._total = 0
        self._digest = hashlib.sha256()
        self.finished = False
        self.cut = False  # the sender stopped before its end frame

    def _exact(self, size: int) -> bytes:
        data = self._pipe.read(size)
        if len(data) != size:
            self.cut = True
            raise ExtractError(f"{self._label}: the stream was cut (no end frame): truncated",
                               ExtractExit.DATA)
        return data

    def read(self, size: int) -> bytes:
        """Return up to SIZE data bytes (b"" at the verified end); raise
        ExtractError if the stream breaks the framing."""
        while not self._left:
            if self.finished:
                return b""
            try:
                frame = decode_frame_header(self._exact(FRAME_HEADER_SIZE))
                if frame.kind == FRAME_DATA:
                    self._left = frame.length
                    continue
                self._end(decode_end_payload(self._exact(frame.length)))
            except ProtocolError as error:
                raise ExtractError(f"{self._label}: garbled stream ({error})") from None
            return b""
        data = self._pipe.read(min(size, self._left))
        if not data:
            self.cut = True
            raise ExtractError(f"{self._label}: the stream was cut (no end frame): truncated")
        self._left -= len(data)
        self._total += len(data)
        self._digest.update(data)
        return data

    def _end(self, end: StreamEnd) -> None:
        # threat: a stream that lost or gained bytes on the way, or a server
        # that ends early: the end frame must describe exactly what came
        if end.length != self._total or end.digest != self._digest.digest():
            raise ExtractError(f"{self._label}: the stream does not match its end frame")
        if self._pipe.read(1):
            raise ExtractError(f"{self._label}: data after the end frame")
        self.finished = True
