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
from dataclasses import dataclass
from datetime import UTC, datetime

from dom0 import history
from dom0.carrier import CarrierClient, Record, check_name
from dom0.config import Hooks, Job, PassphraseSource, all_jobs, backup_job, open_config
from dom0.errors import (
    BackupEngineError,
    CarrierFailed,
    ConfigError,
    Interrupted,
    NoSpaceError,
    QbackupError,
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
                       passphrase_vm=job.passphrase_vm)


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


def report_tampering(comparison: history.Comparison) -> None:
    """Given the comparison with the server, log each problem as an error and
    notify once; log what the retention policy removed."""
    for problem in comparison.problems:
        logger.error("TAMPERING? %s", problem)
    if comparison.problems:
        notify("qbackup: stored backups changed", "\n".join(comparison.problems[:5]),
               critical=True)
    for name in comparison.strangers:
        logger.warning("UNKNOWN BACKUP? %s: under this job's prefix, but this dom0 never"
                       " committed it (a compromised carrier can plant backups)", name)
    if comparison.pruned:
        logger.info("%d earlier backup(s) removed by the retention policy, as it allows: %s",
                    len(comparison.pruned), " ".join(comparison.pruned[-5:]))


def attempt(app: QubesAdapter, job: Job, passphrase: str | None, context: Context,
            tried: set[str], transfers: dict[str, dict[str, object] | None]
            ) -> tuple[Record, list[str]]:
    """Given a checked job, take one backup; return (its server record,
    tampering problems found on the way) and put how its upload went into
    TRANSFERS; raise on any failure."""
    client = CarrierClient(app, job.carrier, job.answer_timeout)
    info = client.info()
    logger.info("server via %s: %s available (%s free, %s reserved)", job.carrier,
                human_size(info.available), human_size(info.free), human_size(info.reserve))
    listing = client.listing(job.prefix)
    # Only this job's own runs: their names are PREFIX-TIMESTAMP, which the
    # prefix listing surely covers.
    runs = [run for run in history.read_runs(context.history) if run.job == history_job(job)]
    stored = client.records_of({run.name for run in history.committed_runs(runs)
                                if run.name and run.name.startswith(job.prefix)}, listing)
    comparison = history.compare_with_server(runs, stored, True, job.prefix, job.keep)
    report_tampering(comparison)
    problems = comparison.problems
    name = fresh_name(job.prefix, {record.name for record in listing.records}, tried)
    with written_profile(app.profile_dir, job_profile(job, name, passphrase)) as profile:
        estimate = parse_estimate(app.backup_info(profile))
        check_space(estimate, info.available)
        logger.info("backing up to %s as %s", job.carrier, name)
        progress = ProgressReporter.for_stderr(name, estimate, quiet=context.quiet)
        try:
            # qubesd asks the passphrase VM without starting it: a halted one
            # would fail every backup (docs/QUBES.md, "The passphrase VM").
            with running_vm(app, job.passphrase_vm, "passphrase VM"):
                run_qubes_backup(app, job.carrier, profile, context.guard, progress)
        finally:
            progress.finish()
    record = publish(client, name)
    transfers[name] = transfer_of(client, name)
    return record, problems


def transfer_of(client: CarrierClient, name: str) -> dict[str, object] | None:
    """Given a committed backup's NAME, log how its upload went (the carrier's
    own count of lost connections, outages and bytes sent again) and return it
    for the history; None (a warning) if the carrier cannot say: the backup is
    committed either way."""
    try:
        stats = client.transfer(name)
    except QbackupError as error:
        logger.warning("the carrier did not report how the upload of %s went: %s", name, error)
        return None
    record = history.transfer_record(stats)
    logger.info("upload of %s: %s", name, history.describe_transfer(record))
    return record


def publish(client: CarrierClient, name: str) -> Record:
    """Given the name of a backup Qubes finished writing, have the server
    publish it and return its record; raise CarrierFailed if it cannot.

    `put` only stages an upload: a stream Qubes aborted can look like a clean
    end to the carrier, and only dom0 knows Execute succeeded, so only dom0
    commits. There is no fallback for carriers without `commit`: one that
    published at `put` would publish aborted streams too."""
    return client.commit(name)


def check_after(app: QubesAdapter, job: Job, record: Record, problems: list[str]) -> None:
    """Given a committed backup, verify it if the job asks to; raise
    VerificationError if that fails or earlier backups were tampered with."""
    if job.verify:
        source = PassphraseSource(file=job.passphrase_file, vm=job.passphrase_vm)
        verify_backup(app, job.carrier, source, record.name,
                      Committed(record.size, record.sha256 or "", job.compression),
                      job.answer_timeout)
    if problems:
        raise VerificationError(
            f"backup {record.name} succeeded, but {len(problems)} earlier backup(s) changed"
            " on the server (see the log)")


@dataclass(frozen=True)
class Finished:
    """A run that committed its backup, as its end reports it."""

    job: str
    record: Record
    seconds: float
    attempts: int
    verified: bool

    def summary(self) -> str:
        """Return one line: name, size, duration, throughput."""
        rate = self.record.size / self.seconds if self.seconds > 0 else 0.0
        return (f"{self.record.name}: {human_size(self.record.size)} in {self.seconds:.1f} s"
                f" ({human_size(rate)}/s), {self.attempts} attempt(s)"
                + (", verified" if self.verified else ""))

    def to_json(self) -> dict[str, object]:
        return {"job": self.job, "name": self.record.name, "size": self.record.size,
                "sha256": self.record.sha256, "seconds": round(self.seconds, 3),
                "attempts": self.attempts, "verified": self.verified, "exit": 0}


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
                transfers: dict[str, dict[str, object] | None] = {}
                while True:
                    attempts += 1
                    start = time.time()
                    try:
                        record, problems = attempt(app, job, passphrase, context, tried,
                                                   transfers)
                        break
                    except QbackupError as error:
                        append_failure(context, job, start, error)
                        if not isinstance(error, RETRYABLE) or attempts > job.retries:
                            raise
                        logger.warning("attempt %d failed: %s; retrying in %s", attempts,
                                       error, names.show_age(job.retry_delay))
                        time.sleep(job.retry_delay)
                end = time.time()
                history.append_run(context.history, history.Run(
                    history_job(job), job.carrier, record.name, record.size, record.sha256,
                    start, end, history.OUTCOME_OK, compression=job.compression,
                    transfer=transfers.get(record.name)))
                logger.info("backup %s committed: %s bytes (%s), sha256 %s, %.1f s",
                            record.name, record.size, human_size(record.size), record.sha256,
                            end - start)
                check_after(app, job, record, problems)
    except QbackupError as error:
        if attempts == 0:  # failed before the first attempt: still a run to remember
            append_failure(context, job, first_start, error)
        if attempts:
            logger.error("backup %s: %d attempt(s) in %.1f s in total", history_job(job),
                         attempts, time.time() - first_start)
        report_failure(context, monitor, error)
        raise
    outcome = Finished(history_job(job), record, time.time() - first_start, attempts, job.verify)
    monitor.succeeded(record.name, outcome.summary())
    return outcome


def append_failure(context: Context, job: Job, start: float, error: QbackupError) -> None:
    """Given a failed attempt (or a run that failed before its first attempt),
    add it to the history in words a person reads."""
    code = exit_code_for(error)
    history.append_run(context.history, history.Run(
        history_job(job), job.carrier, None, None, None, start, time.time(),
        history.failed_outcome(code, exit_meaning(code))))
