"""Tamper detection against dom0's history (dom0/history.py): every committed
backup that vanished, shrank or changed is found; other prefixes and failed
runs are left alone."""

from __future__ import annotations

import pytest

from dom0.carrier import Listing, Record
from dom0.history import Run, compare_with_server

DIGEST = "a" * 64


def find_tampering(runs: list[Run], listing: Listing, prefix: str = "") -> list[str]:
    return compare_with_server(runs, listing.records, not listing.truncated, prefix).problems


def run(name: str, size: int, sha: str = DIGEST) -> Run:
    return Run("job", "c", name, size, sha, 0.0, 1.0, "ok")


@pytest.mark.parametrize(("stored", "problem"), [
    ([], "vanished"),
    ([Record("a-1", 4, DIGEST, 1)], "shrank"),
    ([Record("a-1", 6, DIGEST, 1)], "size changed"),
    ([Record("a-1", 5, "b" * 64, 1)], "digest changed"),
    ([Record("a-1", 5, None, 1)], "digest changed"),
])
def test_tampering_is_found(stored: list[Record], problem: str) -> None:
    [found] = find_tampering([run("a-1", 5)], Listing(stored, False))
    assert problem in found


def test_tampering_ignores_other_prefixes_and_failed_runs() -> None:
    runs = [run("b-1", 5), Run("job", "c", None, None, None, 0, 1, "failed: X")]
    assert find_tampering(runs, Listing([], False), "a") == []
    stored = [Record("a-1", 5, DIGEST, 1)]
    assert find_tampering([run("a-1", 5)], Listing(stored, False), "a") == []
