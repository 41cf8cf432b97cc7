"""Qubes' size estimate of a backup: admin.backup.Info's summary, read.

qubesd answers Info with a human-readable table (qubes/backup.py
get_backup_summary): a row per VM, `NAME | TYPE | SIZE |`, then a last row
`Total size: | SIZE`, sizes written like `30`, `512.0 KiB`, `1.2 GiB`
(size_to_human: bytes plain, else one decimal and a binary unit). The
estimate is of the volumes' data before compression, so it is an upper bound
for a compressed backup. The summary comes from qubesd (trusted), not from
the carrier.
"""

from __future__ import annotations

import re

from dom0.settings import VM_NAME

SIZE_UNITS = {"": 1, "B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "TiB": 1024**4}
SIZE = r"([0-9]+(?:\.[0-9]+)?)\s*(B|KiB|MiB|GiB|TiB)?"
TOTAL_SIZE = re.compile(r"Total size:\s*\|?\s*" + SIZE + r"\b")
# A VM's row: its name (Qubes' VM name rule), its type, its size.
VM_ROW = re.compile(r"^\s*(" + VM_NAME.pattern + r") \|[^|\n]*\|\s*" + SIZE + r"\s*\|",
                    re.MULTILINE)


def size_in_bytes(number: str, unit: str | None) -> int:
    """Given a size as size_to_human writes it (number, unit), return bytes,
    rounded up: size_to_human rounds to one decimal, so half a step is added
    and the estimate never understates what Qubes will send."""
    slack = 0.05 if "." in number else 0.0
    return int((float(number) + slack) * SIZE_UNITS[unit or ""])


def parse_estimate(summary: bytes) -> int | None:
    """Given Info's summary, return the total size in bytes (rounded up to the
    next unit fraction shown), or None if no total is found."""
    found = TOTAL_SIZE.search(summary.decode("utf-8", "replace"))
    return None if found is None else size_in_bytes(found.group(1), found.group(2))


def vm_sizes(summary: bytes) -> dict[str, int]:
    """Given Info's summary, return each VM's estimated size in bytes (dom0:
    its home), in the table's order."""
    return {row.group(1): size_in_bytes(row.group(2), row.group(3))
            for row in VM_ROW.finditer(summary.decode("utf-8", "replace"))}
