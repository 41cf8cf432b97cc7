"""`qbackup backup`: one backup through Qubes' engine straight into the carrier.

The run's story, each step in the journal: check the passphrase, the VMs and
the carrier; take the carrier lock; start the carrier; write the profile;
Qubes' size estimate; the server's free space (info) and its listing (tamper
check, name collision); admin.backup.Execute with progress; the server's
record of the new backup (size, digest) into the history; optional verify.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from dom0 import history
from dom0.carrier import CarrierClient, Record, ReplyError, carrier_error, check_name
from dom0.config import Hooks, Job, PassphraseSource, all_jobs, backup_job, open_config
from dom0.errors import (
    BackupEngineError,
    CarrierFailed,
    ConfigError,
    Interrupted,
    NoSpaceError,
    PartialBackup,
    QbackupError,
    QbackupExit,
    TemporaryFailure,
    UsageError,
    VerificationError,
    exit_code_for,
    exit_meaning,
)
from dom0.estimate import parse_estimate
from dom0.locking import carrier_lock
from dom0.log import human_size, say, say_json
from dom0.monitor import Monitor
from dom0.passphrase import read_passphrase
from dom0.processes import notify
from dom0.profile import ProfileSpec, written_profile
from dom0.progress import ProgressReporter
from dom0.qubes import QubesAdapter
from dom0.qubes_backup import run_qubes_backup
from dom0.session import Context, require_vm, running_carrier, running_vm
from dom0.verify import Committed, verify_backup
from qbackup_protocol import names
from qbackup_protocol.carrier_service import DEFAULT_DESTINATION
from qbackup_protocol.text import clean_text

logger = logging.getLogger(__name__)
RETRYABLE = (TemporaryFailure, BackupEngineError)
NAME_WAIT_STEPS = 25  # 5 s of waiting for a fresh second
def make_name(prefix: str, now: datetime | None = None) -> str:
    """Given a valid PREFIX and a time (default: now), return PREFIX-<UTC stamp>."""
    return check_name(names.timestamped_name(prefix, now or datetime.now(UTC)))


def history_job(job: Job) -> str:
    """Given a job, return its key in the history (command-line runs by prefix)."""
    return job.name or f"cli:{job.prefix}"


def check_inputs(app: QubesAdapter, job: Job) -> tuple[str | None, list[str]]:
    """Given a job, return (passphrase text or None for passphrase_vm, VM names
    to log); raise before anything is touched if one input is wrong."""
    passphrase = read_passphrase(job.passphrase_file) if job.passphrase_file else None
    # passphrase_vm: qubesd asks that VM itself (qubes.BackupPassphrase+PROFILE).
    require_vm(app, job.carrier, "carrier VM")
    if job.passphrase_vm:
        require_vm(app, job.passphrase_vm, "passphrase VM")
    if job.vms:
        for vm in job.vms:
            require_vm(app, vm, "VM to back up")
        selected = list(job.vms)
    else:
        selected = app.vms_in_backups()
    chosen = [vm for vm in selected if vm not in job.exclude]
    if not chosen:
        raise QbackupError("no VM selected for backup: name VMs or set include_in_backups")
    return passphrase, chosen


def check_space(estimate: int | None, available: int) -> None:
    """Given Qubes' size estimate (None: none) and the server's available
    bytes, log the estimate; raise NoSpaceError if the backup may not fit."""
    if estimate is None:
        logger.warning("Qubes gave no size estimate; skipping the free space check")
        return
    logger.info("estimated size %s (before compression)", human_size(estimate))
    if estimate > available:
        raise NoSpaceError(
            f"the server has {human_size(available)} available but the backup may"
            f" need {human_size(estimate)}: free space on the server or lower its reserve")


def job_profile(job: Job, name: str, passphrase: str | None) -> ProfileSpec:
    """Given a job, the backup's NAME and the passphrase (None: the job's
    passphrase VM answers, or a dry run that writes none), return the profile
    Qubes' backup engine runs: the one a dry run estimates is the backup's."""
    return ProfileSpec(carrier=job.carrier, name=name, vms=job.vms, exclude=job.exclude,
                       compression=job.compression, passphrase_text=passphrase,
                       passphrase_vm=job.passphrase_vm, destinations=job.destinations)


def fresh_name(prefix: str, stored: set[str], tried: set[str]) -> str:
    """Given the prefix, the names the server lists and the names earlier
    attempts of this run used, return a name that is neither: names carry the
    second, so a clash (two runs within a second) waits for the next one. The
    server never overwrites a name anyway (put refuses an existing one)."""
    name = make_name(prefix)
    for _ in range(NAME_WAIT_STEPS):
        if name not in tried and name not in stored:
            break
        time.sleep(0.2)
        name = make_name(prefix)
    else:
        raise CarrierFailed(f"no free backup name for {prefix} (the clock seems stuck)")
    tried.add(name)
    return name


def on(destination: str) -> str:
    """Given a destination, return ' on NAME' for a message (nothing for the
    one server of a carrier that has no others: its messages read as before)."""
    return "" if destination == DEFAULT_DESTINATION else f" on {destination}"


def report_tampering(comparison: history.Comparison, destination: str) -> None:
    """Given the comparison with one DESTINATION's server, log each problem as
    an error and notify once; log what the retention policy removed."""
    for problem in comparison.problems:
        logger.error("TAMPERING? %s%s", problem, on(destination))
    if comparison.problems:
        notify(f"qbackup: stored backups changed{on(destination)}",
               "\n".join(comparison.problems[:5]), critical=True)
    for name in comparison.strangers:
        logger.warning("UNKNOWN BACKUP? %s%s: under this job's prefix, but this dom0 never"
                       " committed it (a compromised carrier can plant backups)", name,
                       on(destination))
    if comparison.pruned:
        logger.info("%d earlier backup(s)%s removed by the retention policy, as it allows: %s",
                    len(comparison.pruned), on(destination), " ".join(comparison.pruned[-5:]))


@dataclass(frozen=True)
class Missed:
    """A destination that did not commit a backup: the exit code its failure
    maps to, and why (one clean line)."""

    code: int
    reason: str


@dataclass(frozen=True)
class Published:
    """A backup Qubes finished, as the carrier's destinations took it: the
    receipt of each destination that committed it, why each other did not,
    how each upload went, and tampering found on the way."""

    records: dict[str, Record]
    missed: dict[str, Missed]
    transfers: dict[str, dict[str, object] | None]
    problems: list[str]

    @property
    def record(self) -> Record:
        """Return the receipt of the first destination that committed it."""
        return next(iter(self.records.values()))

    def partial(self) -> str:
        """Return, in one line, where the backup is stored and where not and why."""
        missed = "; ".join(f"{destination}: {miss.reason}"
                           for destination, miss in self.missed.items())
        return f"stored on {', '.join(self.records)} only; NOT on {missed}"


@dataclass(frozen=True)
class Preflight:
    """The destinations that answered before the backup, the least space
    among them, the names they list, and those that did not answer."""

    reachable: list[str]
    available: int
    listed: set[str]
    missed: dict[str, Missed]
    problems: list[str]


def preflight(app: QubesAdapter, job: Job, runs: list[history.Run],
              wanted: tuple[str, ...]) -> Preflight:
    """Given the job, its history and the destinations WANTED, ask each for
    its space and listing and compare that with the history (tamper check);
    return what they said. An unreachable destination is left out of the
    backup (the others still get it), unless every one is: then raise its
    TemporaryFailure."""
    reachable: list[str] = []
    missed: dict[str, Missed] = {}
    listed: set[str] = set()
    problems: list[str] = []
    available: int | None = None
    first_error: TemporaryFailure | None = None
    for destination in wanted:
        there = CarrierClient(app, job.carrier, job.answer_timeout, destination)
        try:
            info = there.info()
            listing = there.listing(job.prefix)
            mine = [run for run in runs if run.destination == destination]
            stored = there.records_of({run.name for run in history.committed_runs(mine)
                                       if run.name and run.name.startswith(job.prefix)},
                                      listing)
        except TemporaryFailure as error:
            logger.warning("destination %s is unreachable: %s; the backup goes to the others",
                           destination, error)
            missed[destination] = Missed(int(error.exit_code), str(error))
            first_error = first_error or error
            continue
        logger.info("server%s via %s: %s available (%s free, %s reserved)", on(destination),
                    job.carrier, human_size(info.available), human_size(info.free),
                    human_size(info.reserve))
        comparison = history.compare_with_server(mine, stored, True, job.prefix, job.keep)
        report_tampering(comparison, destination)
        problems += [problem + on(destination) for problem in comparison.problems]
        listed |= {record.name for record in listing.records}
        available = info.available if available is None else min(available, info.available)
        reachable.append(destination)
    if first_error is not None and not reachable:
        raise first_error
    return Preflight(reachable, available or 0, listed, missed, problems)


def job_destinations(client: CarrierClient, job: Job) -> tuple[str, ...]:
    """Given the job's carrier and the job, return the destinations its
    backups go to: the job's, else every one the carrier has; raise
    UsageError if the job names one the carrier's carrier.yaml lacks."""
    known = client.destinations()
    if job.destinations is None:
        return known
    unknown = [destination for destination in job.destinations if destination not in known]
    if unknown:
        raise UsageError(f"destinations: {', '.join(unknown)}: not in the carrier.yaml of"
                         f" {job.carrier} (it has {', '.join(known)})")
    return job.destinations


def destination_space(app: QubesAdapter, job: Job,
                      destinations: tuple[str, ...]) -> dict[str, int]:
    """Given a job and its destinations, return each one's available bytes
    (`info`); raise the first one's error if one does not answer."""
    return {destination: CarrierClient(app, job.carrier, job.answer_timeout,
                                       destination).info().available
            for destination in destinations}


def attempt(app: QubesAdapter, job: Job, passphrase: str | None, context: Context,
            tried: set[str]) -> Published:
    """Given a checked job, take one backup to each of its destinations that
    answers; return where it was committed and where not; raise on any
    failure, or when no destination committed it."""
    client = CarrierClient(app, job.carrier, job.answer_timeout)
    wanted = job_destinations(client, job)
    # Only this job's own runs: their names are PREFIX-TIMESTAMP, which the
    # prefix listing surely covers.
    runs = [run for run in history.read_runs(context.history) if run.job == history_job(job)]
    ready = preflight(app, job, runs, wanted)
    name = fresh_name(job.prefix, ready.listed, tried)
    # Named only when the job names them or one is left out: a carrier that
    # predates destinations knows no --to.
    targets = tuple(ready.reachable) if job.destinations or ready.missed else None
    spec = replace(job_profile(job, name, passphrase), destinations=targets,
                   several=len(ready.reachable) > 1)
    with written_profile(app.profile_dir, spec) as profile:
        estimate = parse_estimate(app.backup_info(profile))
        check_space(estimate, ready.available)
        logger.info("backing up to %s as %s", job.carrier, name)
        progress = ProgressReporter.for_stderr(name, estimate, quiet=context.quiet)
        try:
            # qubesd asks the passphrase VM without starting it: a halted one
            # would fail every backup (docs/QUBES.md, "The passphrase VM").
            with running_vm(app, job.passphrase_vm, "passphrase VM"):
                run_qubes_backup(app, job.carrier, profile, context.guard, progress)
        finally:
            progress.finish()
    published = publish(client, name, ready)
    published.transfers.update(transfer_of(client, name))
    return published


def transfer_of(client: CarrierClient, name: str) -> dict[str, dict[str, object] | None]:
    """Given a committed backup's NAME, log how its upload to each destination
    went (the carrier's own count of lost connections, outages and bytes sent
    again) and return it for the history; nothing (a warning) if the carrier
    cannot say: the backup is committed either way."""
    try:
        found = client.transfer(name)
    except QbackupError as error:
        logger.warning("the carrier did not report how the upload of %s went: %s", name, error)
        return {}
    records: dict[str, dict[str, object] | None] = {}
    for destination, stats in found.items():
        records[destination] = history.transfer_record(stats)
        logger.info("upload of %s%s: %s", name, on(destination),
                    history.describe_transfer(records[destination]))
    return records


def publish(client: CarrierClient, name: str, ready: Preflight) -> Published:
    """Given the name of a backup Qubes finished writing to the destinations
    READY found reachable, have each publish it; return where it was
    committed and where not; raise CarrierFailed (or the class of the first
    destination's failure) if none committed it.

    `put` only stages an upload: a stream Qubes aborted can look like a clean
    end to the carrier, and only dom0 knows Execute succeeded, so only dom0
    commits. There is no fallback for carriers without `commit`: one that
    published at `put` would publish aborted streams too."""
    outcomes = client.commit(name)
    records: dict[str, Record] = {}
    missed = dict(ready.missed)
    for outcome in outcomes:
        # Threat: a carrier inventing a destination dom0 never sent the backup to.
        if outcome.destination not in ready.reachable:
            raise ReplyError(f"the carrier's commit names destination {outcome.destination},"
                             " which this backup was not sent to")
        if outcome.record is not None:
            records[outcome.destination] = outcome.record
            continue
        cls, reason = carrier_error(outcome.exit)
        missed[outcome.destination] = Missed(int(cls.exit_code),
                                             f"{reason}: {clean_text(outcome.reason)}")
    for destination in ready.reachable:
        if destination not in records and destination not in missed:
            # The put dropped it (the carrier logs why in its journal; Qubes
            # shows no one a put's output when it exits 0); commit reports
            # only where the put staged.
            missed[destination] = Missed(QbackupExit.CARRIER, "its upload failed during the"
                                         " backup (journalctl -t qbackup-carrier in the"
                                         " carrier says why)")
    if not records:
        first = next(outcome for outcome in outcomes if outcome.record is None)
        cls, _ = carrier_error(first.exit)
        raise cls(f"commit via {client.vm}: stored nowhere: " + "; ".join(
            f"{destination}: {miss.reason}" for destination, miss in missed.items()))
    return Published(records, missed, {}, list(ready.problems))


def check_after(app: QubesAdapter, job: Job, published: Published) -> None:
    """Given a committed backup, verify it (through the first destination
    that committed it) if the job asks to; raise VerificationError if that
    fails or earlier backups were tampered with."""
    record = published.record
    if job.verify:
        source = PassphraseSource(file=job.passphrase_file, vm=job.passphrase_vm)
        verify_backup(app, job.carrier, source, record.name,
                      Committed(record.size, record.sha256 or "", job.compression),
                      job.answer_timeout, next(iter(published.records)))
    if published.problems:
        raise VerificationError(
            f"backup {record.name} succeeded, but {len(published.problems)} earlier backup(s)"
            " changed on the server (see the log)")


@dataclass(frozen=True)
class Finished:
    """A run that committed its backup, as its end reports it."""

    job: str
    record: Record
    seconds: float
    attempts: int
    verified: bool
    destinations: tuple[str, ...] = (DEFAULT_DESTINATION,)

    def summary(self) -> str:
        """Return one line: name, size, duration, throughput, destinations."""
        rate = self.record.size / self.seconds if self.seconds > 0 else 0.0
        return (f"{self.record.name}: {human_size(self.record.size)} in {self.seconds:.1f} s"
                f" ({human_size(rate)}/s), {self.attempts} attempt(s)"
                + (", verified" if self.verified else "")
                + ("" if self.destinations == (DEFAULT_DESTINATION,)
                   else f", on {', '.join(self.destinations)}"))

    def to_json(self) -> dict[str, object]:
        return {"job": self.job, "name": self.record.name, "size": self.record.size,
                "sha256": self.record.sha256, "seconds": round(self.seconds, 3),
                "attempts": self.attempts, "verified": self.verified,
                "destinations": list(self.destinations), "exit": 0}


def run(args: argparse.Namespace, context: Context) -> int:
    """`qbackup backup`: given its arguments, run the job they describe (or,
    with --all, every job of the job file); return the exit code."""
    if args.all:
        return run_all(args, context)
    try:
        job = backup_job(args, context.config)
    except QbackupError as error:
        # A configuration error is a failed backup too: say so everywhere.
        report_failure(context, Monitor(args.job or "command line", None, Hooks()), error)
        raise
    return report(context, run_backup(context.get_app(), job, context))


def run_all(args: argparse.Namespace, context: Context) -> int:
    """Given `backup --all`, run every valid job of the job file in turn; a
    broken or failing job is reported and the others still run. Return 0, or
    the exit code of the first job that failed."""
    if args.job or args.prefix or args.carrier or args.vms:
        raise UsageError("--all runs the job file's jobs as they are: give no job, prefix,"
                         " carrier or VMs with it")
    found = all_jobs(open_config(context.config))
    jobs = found.valid
    broken = found.broken
    first_failure = 0
    for name in sorted(set(jobs) | set(broken)):
        code = 0
        if name in broken:
            for problem in broken[name]:
                logger.error("%s", problem)
            error = ConfigError(broken[name])
            code = report_failure(context, Monitor(name, None, Hooks()), error)
        else:
            try:
                report(context, run_backup(context.get_app(), jobs[name], context))
            except Interrupted:
                raise
            except QbackupError as error:
                code = exit_code_for(error)  # reported by run_backup already
        first_failure = first_failure or code
    return first_failure


def report(context: Context, outcome: Finished) -> int:
    """Given a successful run, print its summary (a terminal) or JSON; return 0."""
    if context.json:
        say_json(outcome.to_json())
    elif not context.quiet and sys.stdout.isatty():
        say(outcome.summary())
    return 0


def report_failure(context: Context, monitor: Monitor, error: QbackupError) -> int:
    """Given a run that failed, tell the monitor (and --json); return the exit code."""
    code = exit_code_for(error)
    message = str(error)
    if isinstance(error, ConfigError):
        message = f"the configuration has {len(error.problems)} problem(s): see the log"
    monitor.failed(message, code)
    if context.json:
        say_json({"job": monitor.job, "error": message, "exit": code})
    return code


def run_backup(app: QubesAdapter, job: Job, context: Context) -> Finished:
    """Given a resolved job, run it (with retries) and return its outcome, or
    raise the error that ended it. Every failure, before the backup too, is
    recorded in the history and reported (journal, notification, hooks)."""
    monitor = Monitor(history_job(job), job.carrier, job.hooks)
    first_start = time.time()
    attempts = 0
    try:
        passphrase, vms = check_inputs(app, job)
        with carrier_lock(context.lock_dir, job.carrier):
            with running_carrier(app, job.carrier, job.keep_carrier):
                monitor.started(f"VMs {' '.join(vms)}, carrier {job.carrier},"
                                f" prefix {job.prefix}")
                tried: set[str] = set()  # a staged upload of a failed attempt keeps its name
                while True:
                    attempts += 1
                    start = time.time()
                    try:
                        published = attempt(app, job, passphrase, context, tried)
                        break
                    except QbackupError as error:
                        append_failure(context, job, start, error)
                        if not isinstance(error, RETRYABLE) or attempts > job.retries:
                            raise
                        logger.warning("attempt %d failed: %s; retrying in %s", attempts,
                                       error, names.show_age(job.retry_delay))
                        time.sleep(job.retry_delay)
                record_published(context, job, published, start)
                check_after(app, job, published)
                if published.missed:
                    raise PartialBackup(f"backup {published.record.name}"
                                        f" {published.partial()}")
    except QbackupError as error:
        if attempts == 0:  # failed before the first attempt: still a run to remember
            append_failure(context, job, first_start, error)
        if attempts:
            logger.error("backup %s: %d attempt(s) in %.1f s in total", history_job(job),
                         attempts, time.time() - first_start)
        report_failure(context, monitor, error)
        raise
    outcome = Finished(history_job(job), published.record, time.time() - first_start, attempts,
                       job.verify, tuple(published.records))
    monitor.succeeded(published.record.name, outcome.summary())
    return outcome


def record_published(context: Context, job: Job, published: Published, start: float) -> None:
    """Given a backup committed on some destinations, add a history line for
    each destination: its receipt and upload, or why it failed there."""
    end = time.time()
    for destination, record in published.records.items():
        history.append_run(context.history, history.Run(
            history_job(job), job.carrier, record.name, record.size, record.sha256,
            start, end, history.OUTCOME_OK, compression=job.compression,
            transfer=published.transfers.get(destination), destination=destination))
        logger.info("backup %s committed%s: %s bytes (%s), sha256 %s, %.1f s",
                    record.name, on(destination), record.size, human_size(record.size),
                    record.sha256, end - start)
    for destination, miss in published.missed.items():
        history.append_run(context.history, history.Run(
            history_job(job), job.carrier, None, None, None, start, end,
            history.failed_outcome(miss.code, miss.reason), destination=destination))
        logger.error("backup %s NOT stored on %s: %s", published.record.name, destination,
                     miss.reason)


def append_failure(context: Context, job: Job, start: float, error: QbackupError) -> None:
    """Given a failed attempt (or a run that failed before its first attempt),
    add it to the history in words a person reads."""
    code = exit_code_for(error)
    history.append_run(context.history, history.Run(
        history_job(job), job.carrier, None, None, None, start, time.time(),
        history.failed_outcome(code, exit_meaning(code)), destination=None))
