"""The local history (one JSON line per run) and tamper detection, which trusts it.

Kept in dom0 (the most trusted place): the server and the carrier can lie
about what they store, but not about what dom0 wrote down when the server
confirmed each backup. A hostile or broken server (or carrier) could delete,
truncate or replace backups; every committed backup that vanished, shrank or
changed digest is reported, so history cannot be rolled back silently.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from qbackup_protocol import carrier_service, names, wire

logger = logging.getLogger(__name__)
OUTCOME_OK = "ok"
FUTURE_SLACK = 3600.0  # clocks differ; a name dated later than this is suspicious
LEGACY_FAILURE = re.compile(r"failed: [A-Za-z]+")
MAX_HISTORY_BYTES = 64 * 1024 * 1024


def default_history_path() -> Path:
    """Return ~/.local/share/qbackup/history.jsonl (not $XDG_DATA_HOME, which
    cron and systemd may disagree on: every run must add to one history)."""
    return Path.home() / ".local" / "share" / "qbackup" / "history.jsonl"


@dataclass(frozen=True)
class Run:
    """One backup run. name/size/sha256 are None when nothing was committed."""

    job: str
    carrier: str
    name: str | None
    size: int | None
    sha256: str | None
    start: float
    end: float
    outcome: str
    # The job's `compression` (True/False/program): verify and restore pass
    # it on (dom0/compression.py). None in runs recorded before it was kept.
    compression: bool | str | None = None
    # How the upload went, as the carrier reported it (lost, outages, resent);
    # None when unknown (runs before it was kept, failed runs).
    transfer: dict[str, object] | None = None
    # The carrier's destination (server) this line is about: a run writes one
    # line per destination; None for a run that failed before any of them
    # answered. Runs recorded before destinations were kept went to the
    # carrier's one server: DEFAULT_DESTINATION.
    destination: str | None = carrier_service.DEFAULT_DESTINATION


def append_run(path: Path, run: Run) -> None:
    """Given the history PATH and a run, append it as one line and fsync."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    line = json.dumps(asdict(run), sort_keys=True) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, line.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def _run_from(value: object) -> Run | None:
    if not isinstance(value, dict):
        return None
    try:
        run = Run(**value)
    except TypeError:
        return None
    try:
        if run.name is not None:
            wire.check_name(run.name)
        if run.destination is not None:
            carrier_service.check_destination(run.destination)
    except (wire.InvalidName, wire.ProtocolError):
        return None
    return run


def read_runs(path: Path) -> list[Run]:
    """Given the history PATH, return its runs oldest first (none if the file
    is missing); unreadable lines are skipped with a warning."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_HISTORY_BYTES)
    except FileNotFoundError:
        return []
    runs: list[Run] = []
    for number, line in enumerate(data.splitlines(), 1):
        try:
            run = _run_from(json.loads(line))
        except (ValueError, RecursionError):
            run = None
        if run is None:
            logger.warning("%s line %d is not a history record; ignored", path, number)
            continue
        runs.append(run)
    return runs


def committed_runs(runs: list[Run]) -> list[Run]:
    """Given runs, return those whose backup the server confirmed."""
    return [run for run in runs if run.name and run.sha256 and run.size is not None]


def failed_outcome(code: int, meaning: str) -> str:
    """Given a failure's exit code and its meaning, return the history outcome."""
    return f"failed (exit {code}): {meaning}"


def shown_outcome(outcome: str) -> str:
    """Given a recorded outcome, return it for people: records written before
    outcomes were worded carry a class name of their version ("failed:
    TemporaryError"), which is dropped."""
    return "failed" if LEGACY_FAILURE.fullmatch(outcome) else outcome


@dataclass(frozen=True)
class Comparison:
    """dom0's history against the server's listing: what looks like tampering,
    and which vanished backups the retention policy let the server remove."""

    problems: list[str]
    pruned: list[str]
    strangers: list[str] = field(default_factory=list)


def strangers_among(mine: set[str], stored: Sequence[wire.BackupRecord],
                    now: float) -> list[str]:
    """Given the names dom0 committed and what the server lists, return the
    listed backups under one of dom0's prefixes that dom0 never committed and
    that are not older than its first backup there, or that are dated in the
    future. A compromised carrier can commit such names; with a chosen
    timestamp one would win its retention period on the server. (An older
    name is most likely from before a lost history and is left alone.)"""
    first: dict[str, datetime] = {}
    for name in mine:
        parts = names.split_backup_name(name)
        if parts and (parts[0] not in first or parts[1] < first[parts[0]]):
            first[parts[0]] = parts[1]
    future = datetime.fromtimestamp(now + FUTURE_SLACK, UTC)
    found = []
    for record in stored:
        parts = names.split_backup_name(record.name)
        if record.name in mine or parts is None or parts[0] not in first:
            continue
        if parts[1] >= first[parts[0]] or parts[1] > future:
            found.append(record.name)
    return sorted(found)


def compare_with_server(runs: list[Run], stored: Sequence[wire.BackupRecord],
                        complete: bool, prefix: str = "",
                        policy: names.RetentionPolicy | None = None,
                        now: float | None = None) -> Comparison:
    """Given the history RUNS of one job, the server's STORED records under
    PREFIX (COMPLETE: the listing was not cut short) and the job's retention
    POLICY, return the committed backups that vanished, shrank, grew or changed
    digest (problems), those that vanished exactly as the policy allows
    (pruned), and backups under the job's prefixes that dom0 never committed
    (strangers, see strangers_among). The policy is applied to dom0's own
    history only: names the server lists but dom0 never committed cannot push
    a backup out of it, and a server that prunes more than the policy allows
    is reported."""
    by_name = {record.name: record for record in stored}
    mine = [(run.name, run) for run in committed_runs(runs)
            if run.name and run.name.startswith(prefix)]
    allowed = set(names.prunable({name for name, _ in mine}, policy)) if policy else set()
    problems: list[str] = []
    pruned: list[str] = []
    for name, run in mine:
        record = by_name.get(name)
        if record is None:
            if not complete:
                continue
            if name in allowed:
                pruned.append(name)
            elif policy:
                problems.append(f"{name}: vanished from the server, but the retention"
                                f" policy ({policy.describe()}) keeps it")
            else:
                problems.append(f"{name}: vanished from the server (the job has no"
                                " retention policy that allows a prune)")
            continue
        if run.size is not None and record.size < run.size:
            problems.append(f"{name}: shrank from {run.size} to {record.size} bytes")
        elif run.size is not None and record.size != run.size:
            problems.append(f"{name}: size changed from {run.size} to {record.size} bytes")
        if record.sha256 != run.sha256:
            problems.append(f"{name}: digest changed on the server")
    strangers = strangers_among({name for name, _ in mine}, stored,
                                time.time() if now is None else now)
    return Comparison(problems=problems, pruned=sorted(set(pruned)), strangers=strangers)


def transfer_record(stats: carrier_service.TransferStats) -> dict[str, object]:
    """Given the carrier's transfer stats, return what the history keeps."""
    return {"lost": stats.lost, "outages": list(stats.outages), "resent": stats.resent}


def describe_transfer(transfer: dict[str, object] | None) -> str:
    """Given a history record's transfer field, return it for people."""
    if not isinstance(transfer, dict) or not transfer:
        return "transfer: not reported"
    lost = transfer.get("lost")
    outages = transfer.get("outages")
    resent = transfer.get("resent")
    if not isinstance(lost, int) or not isinstance(resent, int) or not isinstance(outages, list):
        return "transfer: not reported"
    if lost == 0:
        return "transfer: no connection lost"
    shown = ", ".join(f"{seconds:.1f} s" for seconds in outages[:5]
                      if isinstance(seconds, int | float))
    more = ", ..." if len(outages) > 5 else ""
    return (f"transfer: connection lost {lost} time(s) (outages {shown}{more}),"
            f" {resent} bytes sent again")
