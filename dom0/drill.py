"""`qbackup drill`: prove, unattended, that a job's backups still restore.

A drill takes the job's NEWEST committed backup and ONE randomly chosen older
one (so over time every backup gets drilled, and a server that keeps only the
latest intact is caught), and for each proves the stored bytes are the
committed ones (the server's re-hash and dom0's record) and then runs Qubes'
`--verify-only`. The outcome goes into dom0's drill history, next to the
backup history; `qbackup status` shows the last drill per job and fails when
it failed or is older than `--max-drill-age`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from dom0 import history
from dom0.config import PassphraseSource, Target, carrier_and_passphrase, need_passphrase
from dom0.errors import Interrupted, QbackupError, UsageError, VerificationError
from dom0.locking import carrier_lock
from dom0.processes import notify
from dom0.qubes import QubesAdapter
from dom0.session import Context, running_carrier
from dom0.verify import Committed, verify_backup

logger = logging.getLogger(__name__)
DRILLS_FILE = "drills.jsonl"
OUTCOME_OK = "ok"
MAX_DRILLS_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class Drill:
    """One drill of a job: the backups it verified and how it ended."""

    job: str
    names: list[str]
    start: float
    end: float
    outcome: str


def drills_path(history_path: Path) -> Path:
    """Given the backup history's path, return the drill history's (its sibling)."""
    return history_path.with_name(DRILLS_FILE)


def append_drill(path: Path, drill: Drill) -> None:
    """Given the drill history PATH and a drill, append it as one line and fsync."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, (json.dumps(asdict(drill), sort_keys=True) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def read_drills(path: Path) -> list[Drill]:
    """Given the drill history PATH, return its drills oldest first (none if
    missing); lines that are no drill record are skipped with a warning."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_DRILLS_BYTES)
    except FileNotFoundError:
        return []
    drills: list[Drill] = []
    for number, line in enumerate(data.splitlines(), 1):
        try:
            drill = Drill(**json.loads(line))
        except (ValueError, TypeError):
            logger.warning("%s line %d is not a drill record; ignored", path, number)
            continue
        drills.append(drill)
    return drills


def choose_backups(runs: Sequence[history.Run], chooser: random.Random) -> list[history.Run]:
    """Given a job's committed runs oldest first, return the newest and one
    randomly chosen older one (just the newest if there is no older)."""
    if not runs:
        return []
    newest = runs[-1]
    older = list(runs[:-1])
    return [newest, chooser.choice(older)] if older else [newest]


def run_drill(app: QubesAdapter, job_key: str, target: Target, source: PassphraseSource,
              history_path: Path, lock_dir: Path, chooser: random.Random | None = None) -> int:
    """Given a job's history key, where its backups are (carrier, answer
    timeout) and the passphrase source, drill it and record the outcome;
    return 0 or raise VerificationError."""
    carrier = target.carrier
    # --destination, else the job's first, else the carrier's first (its
    # runs of any destination then, each name once: one stream, one digest).
    destination = target.destination or (target.destinations[0] if target.destinations
                                          else None)
    runs = list({run.name: run for run in history.committed_runs(history.read_runs(history_path))
                 if run.job == job_key and destination in (None, run.destination)}.values())
    chosen = choose_backups(runs, chooser or random.SystemRandom())
    start = time.time()
    if not chosen:
        append_drill(drills_path(history_path),
                     Drill(job_key, [], start, time.time(), "failed: no committed backup"))
        raise VerificationError(f"drill {job_key}: dom0 has no committed backup of this job")
    names = [run.name or "" for run in chosen]
    logger.info("drill %s: verifying %s", job_key, " and ".join(names))
    outcome = "interrupted"
    try:
        with carrier_lock(lock_dir, carrier), running_carrier(app, carrier, keep=False):
            for run in chosen:
                verify_backup(app, carrier, source, run.name or "",
                              Committed(run.size or 0, run.sha256 or "", run.compression),
                              target.answer_timeout, destination)
        outcome = OUTCOME_OK
    except Interrupted as error:
        # Stopped (a timer unit stopped, the laptop shutting down): the drill
        # proved nothing, and says so; the restore and the carrier's transfer
        # were ended before this (processes.started, running_carrier).
        outcome = f"interrupted: {error}"
        raise
    except QbackupError as error:
        outcome = f"failed: {error}"
        notify("qbackup drill FAILED", f"{job_key}: {error}", critical=True)
        raise
    finally:
        append_drill(drills_path(history_path),
                     Drill(job_key, names, start, time.time(), outcome))
    logger.info("drill %s: ok (%s)", job_key, " and ".join(names))
    return 0


def add_drill_parser(commands: argparse._SubParsersAction,  # type: ignore[type-arg]
                     formatter: type[argparse.HelpFormatter],
                     parents: list[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    """Given the subcommand table, add `drill` and return its parser (the
    caller adds the shared carrier/passphrase options)."""
    drill = commands.add_parser(
        "drill", formatter_class=formatter, help="verify the newest and one random older backup",
        parents=parents,
        description="Prove a job's backups restore: the newest and one randomly chosen older\n"
                    "one are checked against dom0's record, then verified by Qubes.",
        epilog="examples:\n  qbackup drill --job daily\n"
               "  qbackup drill -f laptop -t sys-backup -p ~/.qbackup-pass")
    drill.add_argument("-f", "--prefix", help="drill command-line backups of this prefix")
    return drill


def history_key(args: argparse.Namespace) -> str:
    """Given drill arguments, return the job's key in the history; raise
    UsageError without --job or -f."""
    if args.job:
        return str(args.job)
    if args.prefix:
        return f"cli:{args.prefix}"
    raise UsageError("give the job to drill with --job NAME (or -f PREFIX)")


def run(args: argparse.Namespace, context: Context) -> int:
    """`qbackup drill`: given its arguments, drill the job; return 0 or raise."""
    target = carrier_and_passphrase(args, context.config)
    source = need_passphrase(target.passphrase)
    return run_drill(context.get_app(), history_key(args), target, source, context.history,
                     context.lock_dir)
