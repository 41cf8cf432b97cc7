"""Progress goes to a terminal only: a pipe or a file (a log, a script's
capture) gets none of it."""

from __future__ import annotations

import io
from collections.abc import Iterator
from itertools import count

from qbackup_extract.progress import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def ticking() -> Iterator[float]:
    return (float(second) for second in count())


def test_progress_shows_bytes_and_rate_on_a_terminal() -> None:
    terminal = Terminal()
    clock = ticking()
    progress = Progress(8 * 2**20, terminal, clock=lambda: next(clock))
    progress.label = "backup.bin"
    progress.count(4 * 2**20)
    assert "backup.bin" in terminal.getvalue() and "4 of 8 MiB" in terminal.getvalue()
    progress.done()
    assert terminal.getvalue().endswith("\r")


def test_progress_writes_nothing_when_stderr_is_not_a_terminal() -> None:
    captured = io.StringIO()
    clock = ticking()
    progress = Progress(None, captured, clock=lambda: next(clock))
    progress.count(2**30)
    progress.done()
    assert captured.getvalue() == ""
