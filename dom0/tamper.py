"""Tamper detection: what dom0 wrote down versus what the server lists now.

A hostile or broken server (or carrier) could delete, truncate or replace
backups. The history in dom0 records name, size and digest of every backup
the server confirmed; any committed backup that vanished, shrank or changed
digest is reported, so history cannot be rolled back silently.
"""

from __future__ import annotations

from dom0.history import Run, committed_runs
from dom0.replies import Listing


def prefix_matches(name: str, prefix: str) -> bool:
    """Given a NAME and a listing PREFIX, return whether the listing covers it."""
    return name.startswith(prefix)


def find_tampering(runs: list[Run], listing: Listing, prefix: str = "") -> list[str]:
    """Given the history RUNS and the server's LISTING of PREFIX, return one
    line per committed backup that vanished, shrank, grew or changed digest."""
    stored = {record.name: record for record in listing.records}
    problems: list[str] = []
    for run in committed_runs(runs):
        if run.name is None or not prefix_matches(run.name, prefix):
            continue
        record = stored.get(run.name)
        if record is None:
            if not listing.truncated:
                problems.append(f"{run.name}: vanished from the server")
            continue
        if run.size is not None and record.size < run.size:
            problems.append(f"{run.name}: shrank from {run.size} to {record.size} bytes")
        elif run.size is not None and record.size != run.size:
            problems.append(f"{run.name}: size changed from {run.size} to {record.size} bytes")
        if record.sha256 != run.sha256:
            problems.append(f"{run.name}: digest changed on the server")
    return problems
