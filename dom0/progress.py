"""Backup progress: on a terminal a bar with rate and time left, in the
journal a line every 10%.

Qubes reports a percentage of its size estimate (admin.backup.Info, the
volumes' data before compression), so the rate shown is that of the data
Qubes reads, approximate by nature; the ETA follows from the percentages.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import TextIO

from dom0.log import human_size

logger = logging.getLogger(__name__)
BAR_WIDTH = 30
JOURNAL_STEP = 10


def show_duration(seconds: float) -> str:
    """Given seconds, return e.g. '42s', '3m05s', '2h07m'."""
    seconds = int(max(0, seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class ProgressReporter:
    """Receives percentages from Qubes' backup-progress events."""

    def __init__(self, name: str, terminal: TextIO | None = None, estimate: int | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """Given the backup NAME, a terminal stream (None: no bar), Qubes' size
        ESTIMATE in bytes (None: no rate) and a clock, start at 0%."""
        self.name = name
        self.terminal = terminal
        self.estimate = estimate
        self.clock = clock
        self.started = clock()
        self.logged_step = 0
        self.percent = 0.0

    @classmethod
    def for_stderr(cls, name: str, estimate: int | None = None,
                   quiet: bool = False) -> ProgressReporter:
        """Return a reporter drawing its bar on stderr if stderr is a terminal
        and the user did not ask for quiet."""
        terminal = sys.stderr if sys.stderr.isatty() and not quiet else None
        return cls(name, terminal, estimate)

    def rate_and_eta(self) -> str:
        """Return e.g. '12.0 MiB/s, 3m05s left' (empty before the first progress)."""
        elapsed = self.clock() - self.started
        if self.percent <= 0 or elapsed <= 0:
            return ""
        left = elapsed * (100 - self.percent) / self.percent
        rate = f"{human_size(self.estimate * self.percent / 100 / elapsed)}/s, " \
            if self.estimate else ""
        return f"{rate}{show_duration(left)} left"

    def __call__(self, percent: float) -> None:
        """Given a new percentage (untrusted float-ish), update bar and journal."""
        percent = max(0.0, min(100.0, float(percent)))
        self.percent = percent
        step = int(percent // JOURNAL_STEP) * JOURNAL_STEP
        while self.logged_step < step:  # one line per 10% even if events skip some
            self.logged_step += JOURNAL_STEP
            logger.info("progress %s: %d%%", self.name, self.logged_step)
        if self.terminal is not None:
            filled = int(BAR_WIDTH * percent / 100)
            self.terminal.write(f"\r[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {percent:5.1f}%"
                                f"  {self.rate_and_eta():<28}")
            self.terminal.flush()

    def finish(self) -> None:
        """End the bar's line on the terminal."""
        if self.terminal is not None:
            self.terminal.write("\n")
            self.terminal.flush()
