"""Progress on a terminal: bytes read from the source and the rate, on one
line of stderr, only when stderr is a terminal."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

INTERVAL = 0.5


class Progress:
    """Counts the source's bytes (count()) and shows them now and then."""

    def __init__(self, total: int | None, stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._stream = stream or sys.stderr
        self._enabled = self._stream.isatty()
        self._total = total
        self._clock = clock
        self._start = clock()
        self._shown = self._start
        self.bytes = 0
        self.label = ""

    def count(self, size: int) -> None:
        """Given bytes just read from the source, count them; show progress now and then."""
        self.bytes += size
        now = self._clock()
        if self._enabled and now - self._shown >= INTERVAL:
            self._shown = now
            self._show(now)

    def _show(self, now: float) -> None:
        mib = self.bytes / 2**20
        rate = mib / max(now - self._start, 1e-6)
        of = f" of {self._total / 2**20:.0f}" if self._total else ""
        self._stream.write(f"\r{self.label[:40]:40} {mib:8.0f}{of} MiB  {rate:6.1f} MiB/s ")
        self._stream.flush()

    def done(self) -> None:
        """Clear the progress line, if one was shown."""
        if self._enabled and self._shown != self._start:
            self._stream.write("\r" + " " * 79 + "\r")
            self._stream.flush()
