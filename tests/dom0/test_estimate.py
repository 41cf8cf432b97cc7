"""Qubes' size estimate, read from the total of its backup summary (dom0/backup.py)."""

from __future__ import annotations

import pytest

from dom0.backup import parse_estimate
from dom0.estimate import vm_sizes
from testbed.qubes_sim.simulator import human


@pytest.mark.parametrize(("summary", "expected"), [
    (human(3 * 1024 * 1024), int(3.05 * 1024 * 1024)),  # rounding slack
    (human(1536), int(1.55 * 1024)),
    (human(500), 500),
    (human(5 * 1024**3), int(5.05 * 1024**3)),
])
def test_estimate_reads_the_total_of_qubes_summary(summary: str, expected: int) -> None:
    text = f"   work |  VM | 1 GiB |\n      Total size: | {summary}\n".encode()
    assert parse_estimate(text) == expected


def test_estimate_is_none_without_a_total() -> None:
    assert parse_estimate(b"nothing here") is None


def test_each_vms_size_is_read_from_qubes_own_table() -> None:
    # get_backup_summary's layout (qubes/backup.py), a running VM's warning included.
    summary = (b"-----------------+-------------+-------------+\n"
               b"               VM |        type |        size |\n"
               b"-----------------+-------------+-------------+\n"
               b"             work |          VM |     1.2 GiB | <-- The VM is running, backup"
               b" will contain its state from before its start!\n"
               b"             dom0 |   User home |    12.0 KiB |\n"
               b"         personal |          VM |         500 |\n"
               b"-----------------+-------------+-------------+\n"
               b"      Total size: |                   1.2 GiB |\n")
    assert vm_sizes(summary) == {"work": int(1.25 * 1024**3), "dom0": int(12.05 * 1024),
                                 "personal": 500}
