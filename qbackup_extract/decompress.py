"""The compression filters a backup header may name, as streaming decoders
with bounded output (threat: a compression bomb filling memory)."""

from __future__ import annotations

import bz2
import lzma
import zlib
from collections.abc import Callable
from functools import partial
from typing import Protocol

from qbackup_extract.errors import ExtractError, unsupported

# Plaintext handed on per call, at most.
MAX_OUTPUT = 1024 * 1024


class Decoder(Protocol):
    @property
    def eof(self) -> bool: ...

    @property
    def unused_data(self) -> bytes: ...

    def decompress(self, data: bytes, max_length: int = -1) -> bytes: ...


def gzip_decoder() -> Decoder:
    """Return a decoder of one gzip stream (zlib with the gzip wrapper)."""
    return zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)  # type: ignore[return-value]


DECODERS: dict[str, Callable[[], Decoder]] = {
    "gzip": gzip_decoder,
    "bzip2": bz2.BZ2Decompressor,
    "xz": partial(lzma.LZMADecompressor, format=lzma.FORMAT_XZ),
}
FILTER_NAMES = tuple(DECODERS)


def check_filter(name: str) -> str:
    """Given the filter a header names, return it; raise ExtractError unless it is readable here."""
    if name not in DECODERS:
        raise unsupported(
            f"compression filter {name!r} is not supported (only {', '.join(FILTER_NAMES)})"
        )
    return name


class Decompressor:
    """One file's compressed stream, fed in pieces (concatenated streams, as
    pigz or pbzip2 write, are read on)."""

    def __init__(self, filter_name: str | None, what: str) -> None:
        self._make = DECODERS[filter_name] if filter_name else None
        self._decoder = self._make() if self._make else None
        self._what = what
        self._pending = b""
        self._started = False

    def feed(self, data: bytes) -> None:
        """Queue DATA (compressed) for output()."""
        self._pending += data

    def output(self) -> bytes:
        """Return up to MAX_OUTPUT bytes decoded from what was fed (b"" when
        more input is needed); raise ExtractError if the data is not valid."""
        if self._decoder is None:
            out = self._pending[:MAX_OUTPUT]
            self._pending = self._pending[MAX_OUTPUT:]
            return out
        if self._decoder.eof:
            if not self._pending:
                return b""
            self._decoder = self._make()  # type: ignore[misc]  # the next concatenated stream
        if not self._pending and not self._started:
            return b""
        try:
            out = self._decoder.decompress(self._pending, MAX_OUTPUT)
        except (OSError, EOFError, ValueError, zlib.error, lzma.LZMAError) as error:
            raise ExtractError(f"{self._what}: compressed data is damaged ({error})") from None
        self._started = True
        self._pending = self._decoder.unused_data if self._decoder.eof else b""
        if not self._decoder.eof and hasattr(self._decoder, "unconsumed_tail"):
            self._pending = self._decoder.unconsumed_tail  # zlib keeps input it did not use
        return out

    def finish(self) -> None:
        """Return if the stream ended cleanly; raise ExtractError if it was cut short."""
        if self._decoder is not None and not self._decoder.eof:
            raise ExtractError(f"{self._what}: compressed data ends early (truncated)")
        if self._pending:
            raise ExtractError(f"{self._what}: data follows the compressed stream")
