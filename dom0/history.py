"""The local history: one JSON line per run, the memory tamper detection trusts.

Kept in dom0 (the most trusted place): the server and the carrier can lie
about what they store, but not about what dom0 wrote down when the server
confirmed each backup.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from dom0.names import is_valid_name

logger = logging.getLogger(__name__)
OUTCOME_OK = "ok"
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
    if run.name is not None and not is_valid_name(run.name):
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
        except ValueError:
            run = None
        if run is None:
            logger.warning("%s line %d is not a history record; ignored", path, number)
            continue
        runs.append(run)
    return runs


def committed_runs(runs: list[Run]) -> list[Run]:
    """Given runs, return those whose backup the server confirmed."""
    return [run for run in runs if run.name and run.sha256 and run.size is not None]
