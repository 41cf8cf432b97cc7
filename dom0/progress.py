"""Backup progress: a bar on a terminal, a journal line every 10%."""

from __future__ import annotations

import logging
import sys
from typing import TextIO

logger = logging.getLogger(__name__)
BAR_WIDTH = 40
JOURNAL_STEP = 10


class ProgressReporter:
    """Receives percentages from Qubes' backup-progress events."""

    def __init__(self, name: str, terminal: TextIO | None = None) -> None:
        """Given the backup NAME and a terminal stream (None: no bar), start at 0%."""
        self.name = name
        self.terminal = terminal
        self.logged_step = 0
        self.percent = 0.0

    @classmethod
    def for_stderr(cls, name: str) -> ProgressReporter:
        """Return a reporter drawing its bar on stderr if stderr is a terminal."""
        return cls(name, sys.stderr if sys.stderr.isatty() else None)

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
            self.terminal.write(f"\r[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {percent:5.1f}%")
            self.terminal.flush()

    def finish(self) -> None:
        """End the bar's line on the terminal."""
        if self.terminal is not None:
            self.terminal.write("\n")
            self.terminal.flush()
