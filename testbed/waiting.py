"""Waiting, bounded, for what a test cannot be told about: a process that
starts or ends, a file that grows, a lock someone waits for."""

from __future__ import annotations

import time
from collections.abc import Callable

POLL_SECONDS = 0.05


def wait_until(condition: Callable[[], object], what: str, timeout: float = 30) -> None:
    """Return as soon as CONDITION() is true; raise AssertionError naming WHAT
    if it is not within TIMEOUT seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"waited {timeout} s for {what}"
        time.sleep(POLL_SECONDS)
