"""`qbackup backup`: one backup through Qubes' engine straight into the carrier.

The run's story, each step in the journal: check the passphrase, the VMs and
the carrier; take the carrier lock; start the carrier; write the profile;
Qubes' size estimate; the server's free space (info) and its listing (tamper
check, name collision); admin.backup.Execute with progress; the server's
record of the new backup (size, digest) into the history; optional verify.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from dom0 import history, notify
from dom0.carrier import CarrierClient
from dom0.config import Job
from dom0.engine import run_engine, running_vm
from dom0.errors import (
    BackupEngineError,
    CarrierError,
    NoSpaceError,
    QbackupError,
    TemporaryError,
    VerificationError,
)
from dom0.estimate import human_size, parse_estimate
from dom0.locking import carrier_lock
from dom0.names import make_name
from dom0.passphrase import read_passphrase
from dom0.profile import ProfileSpec, written_profile
from dom0.progress import ProgressReporter
from dom0.qubes import QubesAdapter
from dom0.replies import Record
from dom0.session import SignalGuard, require_vm, running_carrier
from dom0.tamper import find_tampering
from dom0.verify import Committed, PassphraseSource, verify_backup

logger = logging.getLogger(__name__)
RETRYABLE = (TemporaryError, BackupEngineError)


@dataclass(frozen=True)
class Paths:
    """Where this dom0 user keeps qbackup's state."""

    history: Path
    lock_dir: Path


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


def fresh_name(prefix: str, stored: set[str], tried: set[str]) -> str:
    """Given the prefix, the names the server lists and the names earlier
    attempts of this run used, return a new name; raise CarrierError if it is
    stored already (never overwrite: a clash means two runs within a second)."""
    name = make_name(prefix)
    while name in tried:  # a retry within the same second: take the next one
        time.sleep(0.2)
        name = make_name(prefix)
    if name in stored:
        raise CarrierError(f"a backup named {name} already exists; try again in a second")
    tried.add(name)
    return name


def report_tampering(problems: list[str]) -> None:
    """Given tampering problems found, log each as an error and notify once."""
    for problem in problems:
        logger.error("TAMPERING? %s", problem)
    if problems:
        notify.notify("qbackup: stored backups changed", "\n".join(problems[:5]), critical=True)


def attempt(app: QubesAdapter, job: Job, passphrase: str | None, paths: Paths,
            guard: SignalGuard, tried: set[str]) -> tuple[Record, list[str]]:
    """Given a checked job, take one backup; return (its server record,
    tampering problems found on the way); raise on any failure."""
    client = CarrierClient(app, job.carrier)
    info = client.info()
    logger.info("server via %s: %s available (%s free, %s reserved)", job.carrier,
                human_size(info.available), human_size(info.free), human_size(info.reserve))
    listing = client.listing(job.prefix)
    # Only this job's own runs: their names are PREFIX-TIMESTAMP, which the
    # prefix listing surely covers.
    runs = [run for run in history.read_runs(paths.history) if run.job == history_job(job)]
    problems = find_tampering(runs, listing, job.prefix)
    report_tampering(problems)
    name = fresh_name(job.prefix, {record.name for record in listing.records}, tried)
    spec = ProfileSpec(carrier=job.carrier, name=name, vms=job.vms, exclude=job.exclude,
                       compression=job.compression, passphrase_text=passphrase,
                       passphrase_vm=job.passphrase_vm)
    with written_profile(app.profile_dir, spec) as profile:
        estimate = parse_estimate(app.backup_info(profile))
        if estimate is None:
            logger.warning("Qubes gave no size estimate; skipping the free space check")
        else:
            logger.info("estimated size %s (before compression)", human_size(estimate))
            if estimate > info.available:
                raise NoSpaceError(
                    f"the server has {human_size(info.available)} available but the backup may"
                    f" need {human_size(estimate)}: free space on the server or lower its reserve"
                )
        logger.info("backing up to %s as %s", job.carrier, name)
        progress = ProgressReporter.for_stderr(name)
        try:
            with running_vm(app, job.passphrase_vm, "passphrase VM"):
                run_engine(app, job.carrier, profile, guard, progress)
        finally:
            progress.finish()
    return publish(client, name), problems


def publish(client: CarrierClient, name: str) -> Record:
    """Given the name of a backup Qubes finished writing, have the server
    publish it and return its record; raise CarrierError if it cannot.

    `put` only stages an upload: a stream Qubes aborted can look like a clean
    end to the carrier, and only dom0 knows Execute succeeded, so only dom0
    commits. There is no fallback for carriers without `commit`: one that
    published at `put` would publish aborted streams too."""
    record = client.commit(name)
    if record.sha256 is None:
        raise CarrierError(f"the carrier's receipt for {name} has no digest")
    return record


def check_after(app: QubesAdapter, job: Job, record: Record, problems: list[str]) -> None:
    """Given a committed backup, verify it if the job asks to; raise
    VerificationError if that fails or earlier backups were tampered with."""
    if job.verify:
        source = PassphraseSource(file=job.passphrase_file, vm=job.passphrase_vm)
        verify_backup(app, job.carrier, source, record.name,
                      Committed(record.size, record.sha256 or "", job.compression))
    if problems:
        raise VerificationError(
            f"backup {record.name} succeeded, but {len(problems)} earlier backup(s) changed"
            " on the server (see the log)")


def run_backup(app: QubesAdapter, job: Job, paths: Paths, guard: SignalGuard) -> int:
    """Given a resolved job, run it (with retries) and return 0 or raise the
    error of the last attempt; the outcome of every attempt goes to history."""
    passphrase, vms = check_inputs(app, job)
    with carrier_lock(paths.lock_dir, job.carrier):
        logger.info("backup %s started: VMs %s, carrier %s, prefix %s",
                    history_job(job), " ".join(vms), job.carrier, job.prefix)
        notify.notify("qbackup started", f"{history_job(job)}: {len(vms)} VMs to {job.carrier}")
        with running_carrier(app, job.carrier, job.keep_carrier):
            tried: set[str] = set()  # a staged upload of a failed attempt keeps its name
            for number in range(job.retries + 1):
                start = time.time()
                try:
                    record, problems = attempt(app, job, passphrase, paths, guard, tried)
                except QbackupError as error:
                    outcome = f"failed: {type(error).__name__}"
                    history.append_run(paths.history, history.Run(
                        history_job(job), job.carrier, None, None, None, start, time.time(),
                        outcome))
                    if isinstance(error, RETRYABLE) and number < job.retries:
                        logger.warning("attempt %d failed: %s; retrying in %d s", number + 1,
                                       error, job.retry_delay)
                        time.sleep(job.retry_delay)
                        continue
                    logger.error("backup %s outcome: failed after %d attempt(s), %.1f s",
                                 history_job(job), number + 1, time.time() - start)
                    notify.notify("qbackup FAILED", f"{history_job(job)}: {error}", critical=True)
                    raise
                break
            end = time.time()
            history.append_run(paths.history, history.Run(
                history_job(job), job.carrier, record.name, record.size, record.sha256, start,
                end, history.OUTCOME_OK, compression=job.compression))
            logger.info("backup %s committed: %s bytes (%s), sha256 %s, %.1f s",
                        record.name, record.size, human_size(record.size), record.sha256,
                        end - start)
            try:
                check_after(app, job, record, problems)
            except QbackupError as error:
                notify.notify("qbackup FAILED", f"{record.name}: {error}", critical=True)
                raise
        notify.notify("qbackup finished", f"{record.name}: {human_size(record.size)}")
        logger.info("backup %s outcome: success", history_job(job))
    return 0

