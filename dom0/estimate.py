"""The size estimate in Qubes' backup summary (admin.backup.Info).

qubesd answers Info with a human-readable table whose last row is
`Total size: <size>`, sizes written like `30`, `512.0 KiB`, `1.2 GiB`
(qubes.backup's size_to_human). The estimate is of the volumes' data before
compression, so it is an upper bound for a compressed backup.
"""

from __future__ import annotations

import re

UNITS = {"": 1, "B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "TiB": 1024**4}
TOTAL = re.compile(r"Total size:\s*\|?\s*([0-9]+(?:\.[0-9]+)?)\s*(B|KiB|MiB|GiB|TiB)?\b")


def parse_estimate(summary: bytes) -> int | None:
    """Given Info's summary, return the total size in bytes (rounded up to the
    next unit fraction shown), or None if no total is found."""
    found = TOTAL.search(summary.decode("utf-8", "replace"))
    if found is None:
        return None
    number, unit = found.group(1), found.group(2) or ""
    # size_to_human rounds to one decimal: add half a step so the estimate
    # never understates what Qubes will send.
    slack = 0.05 if "." in number else 0.0
    return int((float(number) + slack) * UNITS[unit])


def human_size(size: int) -> str:
    """Given a byte count, return it as e.g. '1.5 GiB'."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"
