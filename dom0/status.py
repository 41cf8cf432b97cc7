"""`qbackup status [--max-age HOURS] [--remote]`: last success per job, for humans and monitors.

A job whose last success is older than --max-age (or that never succeeded)
makes the command exit non-zero and raises a critical notification: the
failure a timer cannot report is the backup that silently stopped happening.
`--remote` also compares the history with the server's listing (tampering).
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable
from pathlib import Path

from dom0 import config, history
from dom0.carrier import CarrierClient
from dom0.errors import StaleBackup, VerificationError
from dom0.execute import notify
from dom0.log import say, show_time
from dom0.qubes import QubesAdapter
from dom0.session import Context, running_carrier

logger = logging.getLogger(__name__)


def last_runs(runs: list[history.Run]) -> dict[str, tuple[history.Run | None, history.Run]]:
    """Given runs, return per job (last success or None, last run)."""
    table: dict[str, tuple[history.Run | None, history.Run]] = {}
    for run in runs:
        success, _ = table.get(run.job, (None, run))
        if run.outcome == history.OUTCOME_OK and run.name:
            success = run
        table[run.job] = (success, run)
    return table


def run(args: argparse.Namespace, context: Context) -> int:
    """Given `status` arguments, report every job; return 0 or raise."""
    path = context.config or config.default_config_path()
    jobs = sorted(config.open_config(path).jobs) if path else []
    return run_status(context.history, jobs, args.max_age, args.remote, context.get_app)


def run_status(history_path: Path, configured_jobs: list[str], max_age_hours: float | None,
               remote: bool, get_app: Callable[[], QubesAdapter]) -> int:
    """Given the history, the configured job names, an age limit and whether to
    ask the servers, print one line per job; return 0 or raise StaleBackup /
    VerificationError."""
    runs = history.read_runs(history_path)
    table = last_runs(runs)
    now = time.time()
    stale: list[str] = []
    for job in sorted(set(table) | set(configured_jobs)):
        success, last = table.get(job, (None, None))
        if success is None:
            say(f"{job}: no successful backup" + (f" (last run: {last.outcome})" if last else ""))
            stale.append(f"{job}: never")
            continue
        age = (now - success.end) / 3600
        say(f"{job}: last success {success.name} at {show_time(success.end)} ({age:.1f} h ago),"
            f" {success.size} bytes; last run: {last.outcome if last else '-'}")
        if max_age_hours is not None and age > max_age_hours:
            stale.append(f"{job}: {age:.1f} h old")
    problems: list[str] = []
    if remote:
        carriers = sorted({run.carrier for run in history.committed_runs(runs)})
        app = get_app()
        for carrier in carriers:
            mine = [run for run in runs if run.carrier == carrier]
            with running_carrier(app, carrier, keep=False):
                listing = CarrierClient(app, carrier).listing("")
                problems += history.find_tampering(mine, listing.records, not listing.truncated)
        for problem in problems:
            say(f"TAMPERING? {problem}")
            logger.error("TAMPERING? %s", problem)
        if not problems:
            logger.info("remote comparison: %d backup(s) as recorded",
                        len(history.committed_runs(runs)))
    if problems:
        notify("qbackup: stored backups changed", "\n".join(problems[:5]), critical=True)
        raise VerificationError(f"{len(problems)} stored backup(s) vanished or changed")
    if max_age_hours is not None and stale:
        notify("qbackup: backups are stale", "\n".join(stale[:5]), critical=True)
        raise StaleBackup(f"no backup newer than {max_age_hours} h for: {', '.join(stale)}")
    return 0
