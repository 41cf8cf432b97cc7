"""`qbackup list [PREFIX]` and `qbackup check NAME`: the server's view via the carrier."""

from __future__ import annotations

import logging
from pathlib import Path

from dom0 import history
from dom0.carrier import CarrierClient
from dom0.errors import VerificationError
from dom0.names import check_name
from dom0.output import say, show_time
from dom0.qubes import QubesAdapter

logger = logging.getLogger(__name__)


def run_list(app: QubesAdapter, carrier: str, prefix: str) -> int:
    """Given the carrier and a name PREFIX ('' = all), print every stored
    backup (name, size, stored time, digest); return 0."""
    if prefix:
        check_name(prefix.rstrip("/"))  # a prefix obeys the name rules
    listing = CarrierClient(app, carrier).listing(prefix)
    for record in listing.records:
        say(f"{record.name}  {record.size}  {show_time(record.mtime)}  {record.sha256 or '-'}")
    if listing.truncated:
        logger.warning("the server cut the listing short: give a longer prefix")
    logger.info("listed %d backup(s) via %s", len(listing.records), carrier)
    return 0


def run_check(app: QubesAdapter, carrier: str, name: str, history_path: Path) -> int:
    """Given the carrier and a backup NAME, have the server re-hash it and
    compare with its record and with dom0's history; return 0 or raise
    VerificationError."""
    record, ok = CarrierClient(app, carrier).check(check_name(name))
    say(f"{record.name}  {record.size}  {record.sha256 or '-'}  {'ok' if ok else 'MISMATCH'}")
    if not ok:
        raise VerificationError(f"server check of {name} FAILED: stored data no longer matches")
    for run in history.committed_runs(history.read_runs(history_path)):
        if run.name == name and (run.sha256 != record.sha256 or run.size != record.size):
            raise VerificationError(
                f"{name} differs from what the server confirmed at backup time: tampering?")
    logger.info("server check of %s: ok", name)
    return 0
