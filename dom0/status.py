"""`qbackup status [--max-age AGE] [--remote] [--json]`: the last success per
job, for people and monitors.

A job that never succeeded, or whose last success is older than --max-age,
makes the command exit 7 and raises a critical notification: the failure a
timer cannot report is the backup that silently stopped happening. `--remote`
also compares the history with the servers' listings: a backup that vanished
(unless the job's retention policy let the server prune it), shrank or
changed is reported (exit 4), and the backups the policy removed are counted.
Then the last restore drill per job (dom0/drill.py records them): one that
failed exits 4, one older than its limit 7. Ages are qbackup_protocol.names'
(`36h`, `7d`; a bare number means hours), as in `qbackup-server status`.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from dom0 import config, history
from dom0.carrier import DEFAULT_ANSWER_TIMEOUT, CarrierClient
from dom0.drill import OUTCOME_OK, Drill, drills_path, read_drills
from dom0.errors import StaleBackup, VerificationError
from dom0.log import human_size, say, say_json, show_time
from dom0.processes import notify
from dom0.qubes import QubesAdapter
from dom0.session import Context, running_carrier
from qbackup_protocol.carrier_service import DEFAULT_DESTINATION
from qbackup_protocol.names import show_age

logger = logging.getLogger(__name__)


@dataclass
class JobStatus:
    """What status knows about one job."""

    job: str
    success: history.Run | None = None
    last: history.Run | None = None
    broken: list[str] = field(default_factory=list)
    policy: str | None = None
    pruned: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    strangers: list[str] = field(default_factory=list)
    # Per destination: the last success and the last run (a run that failed
    # before any destination answered counts for each); the job's own list.
    successes: dict[str, history.Run] = field(default_factory=dict)
    lasts: dict[str, history.Run] = field(default_factory=dict)
    named: tuple[str, ...] = ()

    def age(self, now: float) -> float | None:
        """Given the time now, return the last success's age in seconds (None: none)."""
        return None if self.success is None else now - self.success.end

    def destinations(self) -> list[str]:
        """Return the destinations to judge: those the job names, then those
        its history names (one that never got a backup included)."""
        return list(dict.fromkeys([*self.named, *self.lasts]))

    def stale(self, now: float, max_age: float | None) -> list[str]:
        """Given the time now and the --max-age (None: none), return a line
        for each destination whose last success is missing or too old."""
        found = []
        several = self.destinations() != [DEFAULT_DESTINATION]
        for destination in self.destinations():
            where = f" on {destination}" if several else ""
            success = self.successes.get(destination)
            if success is None:
                found.append(f"{self.job}: no successful backup{where} yet")
            elif max_age is not None and now - success.end > max_age:
                found.append(f"{self.job}: newest backup{where} {show_age(now - success.end)}"
                             f" old > {show_age(max_age)}")
        return found

    def to_json(self, now: float, stale: bool) -> dict[str, object]:
        success = self.success
        return {
            "job": self.job,
            "last_success": None if success is None else {
                "name": success.name, "size": success.size, "sha256": success.sha256,
                "end": success.end},
            "age_hours": None if success is None else round((now - success.end) / 3600, 3),
            "last_run": None if self.last is None else history.shown_outcome(self.last.outcome),
            "last_transfer": None if success is None else success.transfer,
            "stale": stale, "configuration_problems": self.broken,
            "retention": self.policy, "pruned_by_policy": self.pruned,
            "tampering": self.problems, "unknown_backups": self.strangers,
            "destinations": {destination: {"name": run.name, "end": run.end,
                                           "age_hours": round((now - run.end) / 3600, 3)}
                             for destination, run in self.successes.items()},
        }


def job_table(runs: list[history.Run], jobs: dict[str, config.Job],
              broken: dict[str, list[str]]) -> dict[str, JobStatus]:
    """Given the history, the valid jobs and the broken ones, return every
    job's status (jobs only in the history included)."""
    table = {name: JobStatus(name) for name in {*jobs, *broken}}
    for run in runs:
        status = table.setdefault(run.job, JobStatus(run.job))
        if run.outcome == history.OUTCOME_OK and run.name:
            status.success = run
            status.successes[run.destination or DEFAULT_DESTINATION] = run
        if run.destination is not None:
            status.lasts[run.destination] = run
        else:
            status.lasts = dict.fromkeys(status.lasts, run)
        status.last = run
    for name, problems in broken.items():
        table[name].broken = problems
    for name, job in jobs.items():
        table[name].policy = job.keep.describe() if job.keep else None
        table[name].named = job.destinations or ()
    return table


def compare_remote(runs: list[history.Run], jobs: dict[str, config.Job],
                   table: dict[str, JobStatus], get_app: Callable[[], QubesAdapter]) -> None:
    """Given the history, the jobs and the status table, compare each job's
    committed backups with the listing of each destination they went to,
    filling in pruned/problems."""
    by_place: dict[tuple[str, str], set[str]] = {}
    for run in history.committed_runs(runs):
        place = (run.carrier, run.destination or DEFAULT_DESTINATION)
        by_place.setdefault(place, set()).add(run.job)
    app = get_app()
    for carrier, destination in sorted(by_place):
        mine_here = [run for run in runs if run.carrier == carrier
                     and (run.destination or DEFAULT_DESTINATION) == destination]
        with running_carrier(app, carrier, keep=False):
            answer_timeout = max((job.answer_timeout for job in jobs.values()
                                  if job.carrier == carrier), default=DEFAULT_ANSWER_TIMEOUT)
            client = CarrierClient(app, carrier, answer_timeout, destination)
            listing = client.listing("")
            committed = {run.name for run in history.committed_runs(mine_here) if run.name}
            stored = client.records_of(committed, listing)
        for name in sorted(by_place[(carrier, destination)]):
            mine = [run for run in mine_here if run.job == name]
            policy = jobs[name].keep if name in jobs else None
            comparison = history.compare_with_server(mine, stored, True, "", policy)
            where = "" if destination == DEFAULT_DESTINATION else f" (on {destination})"
            table[name].pruned += comparison.pruned
            table[name].problems += [problem + where for problem in comparison.problems]
            table[name].strangers += comparison.strangers


def show(status: JobStatus, now: float) -> None:
    """Given one job's status, print its lines."""
    last = history.shown_outcome(status.last.outcome) if status.last else "-"
    success = status.success
    if status.broken:
        say(f"{status.job}: the job file entry has {len(status.broken)} problem(s)"
            " (qbackup config check shows them)")
    if success is None:
        say(f"{status.job}: no successful backup yet" + (f" (last run: {last})"
                                                          if status.last else ""))
    several = status.destinations() != [DEFAULT_DESTINATION]
    for destination in status.destinations() if success is not None else ():
        run = status.successes.get(destination)
        where = f" on {destination}" if several else ""
        latest = status.lasts.get(destination)
        last_here = history.shown_outcome(latest.outcome) if latest else last
        if run is None:
            say(f"{status.job}: no successful backup{where} yet (last run: {last_here})")
            continue
        say(f"{status.job}: last success{where} {run.name} at {show_time(run.end)}"
            f" ({show_age(now - run.end)} ago), {human_size(run.size or 0)};"
            f" {history.describe_transfer(run.transfer)}; last run: {last_here}")
    if status.pruned:
        say(f"{status.job}: {len(status.pruned)} backup(s) removed by the retention policy"
            f" ({status.policy})")
    for problem in status.problems:
        say(f"TAMPERING? {problem}")
    for name in status.strangers:
        say(f"UNKNOWN BACKUP? {name}: under {status.job}'s prefix, but this dom0 never"
            " committed it")


def backup_status(args: argparse.Namespace, context: Context) -> int:
    """Given `status` arguments, report every job's backups; return 0 or
    raise StaleBackup / VerificationError."""
    path = context.config or config.default_config_path()
    found = config.all_jobs(config.read_config(path)) if path else config.Jobs({}, {})
    jobs = found.valid
    broken = found.broken
    runs = history.read_runs(context.history)
    table = job_table(runs, jobs, broken)
    if args.remote:
        compare_remote(runs, jobs, table, context.get_app)
    now = time.time()
    stale: list[str] = []
    for status in table.values():
        if status.broken:
            stale.append(f"{status.job}: job file entry broken")
        elif status.success is None:
            stale.append(f"{status.job}: no successful backup yet")
        else:
            stale += status.stale(now, args.max_age)
    if not table:
        stale.append("no job in the job file and no backup in the history")
    problems = [problem for status in table.values() for problem in status.problems]
    if context.json:
        say_json({"jobs": [status.to_json(now, any(line.startswith(f"{name}:")
                                                          for line in stale))
                                 for name, status in sorted(table.items())],
                        "tampering": bool(problems), "stale": stale})
    else:
        for _, status in sorted(table.items()):
            show(status, now)
    for problem in problems:
        logger.error("TAMPERING? %s", problem)
    for status in table.values():
        for name in status.strangers:
            logger.warning("UNKNOWN BACKUP? %s: under %s's prefix, but this dom0 never"
                           " committed it", name, status.job)
    if args.remote and not problems:
        logger.info("remote comparison: every backup as recorded or pruned by policy")
    if problems:
        notify("qbackup: stored backups changed", "\n".join(problems[:5]), critical=True)
        raise VerificationError(f"{len(problems)} stored backup(s) vanished or changed")
    if stale:
        notify("qbackup: backups are stale", "\n".join(stale[:5]), critical=True)
        raise StaleBackup(f"no recent enough backup for: {'; '.join(stale)}")
    return 0


def drill_status(history_path: Path, limits: Mapping[str, float | None],
                 max_age: float | None, show: bool = True) -> None:
    """Given the history, each configured job's own age limit in seconds (its
    `drill_max_age`, None: none) and an age limit for every job (--max-drill-age,
    None: none), print the last drill per job; raise VerificationError if one
    failed, StaleBackup if one is older than its limit (or missing)."""

    def limit_of(job: str) -> float | None:
        return max_age if max_age is not None else limits.get(job)

    last: dict[str, Drill] = {}
    for recorded in read_drills(drills_path(history_path)):
        last[recorded.job] = recorded
    now = time.time()
    failed: list[str] = []
    stale: list[str] = []
    for job in sorted(set(last) | {job for job in limits if limit_of(job) is not None}):
        limit = limit_of(job)
        entry = last.get(job)
        if entry is None:
            if show:
                say(f"{job}: never drilled")
            stale.append(f"{job}: never")
            continue
        age = now - entry.end
        if show:
            say(f"{job}: last drill at {show_time(entry.end)} ({show_age(age)} ago):"
                f" {entry.outcome} ({', '.join(entry.names) or '-'})")
        if entry.outcome != OUTCOME_OK:
            failed.append(job)
        elif limit is not None and age > limit:
            stale.append(f"{job}: last drill {show_age(age)} old > {show_age(limit)}")
    if failed:
        notify("qbackup: drill failed", ", ".join(failed), critical=True)
        raise VerificationError(f"the last drill failed for: {', '.join(failed)}")
    if stale:
        notify("qbackup: drills are stale", "\n".join(stale[:5]), critical=True)
        raise StaleBackup(f"no recent enough drill for: {', '.join(stale)}")


def run(args: argparse.Namespace, context: Context) -> int:
    """`qbackup status`: the backups' status, then the last drill per job
    (shown and judged whatever the backups' state; not shown with --json)."""
    path = context.config or config.default_config_path()
    jobs = config.all_jobs(config.read_config(path)).valid if path else {}
    limits = {name: job.drill_max_age for name, job in jobs.items()}
    try:
        return backup_status(args, context)
    finally:
        drill_status(context.history, limits, args.max_drill_age, show=not context.json)
