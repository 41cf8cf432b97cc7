"""What commands print on stdout for the user: always cleaned, one line each."""

from __future__ import annotations

import sys
from datetime import UTC, datetime

from dom0.untrusted import clean_text

MAX_OUTPUT_LINE = 1000


def say(text: str) -> None:
    """Given a line of output (which may quote carrier text), print it cleaned."""
    sys.stdout.write(clean_text(text, MAX_OUTPUT_LINE) + "\n")
    sys.stdout.flush()


def show_time(epoch: float | None) -> str:
    """Given seconds since the epoch (or None), return ISO UTC or '-'."""
    if epoch is None:
        return "-"
    try:
        return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    except (OverflowError, ValueError, OSError):
        return "?"  # a carrier may send any 63-bit mtime
