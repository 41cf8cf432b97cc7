"""What the last upload of each NAME to each destination left behind in
this VM, kept for later (a directory per destination).

``put`` records its TransferStats (times the connection was lost, each
outage's length, bytes resent) here when it ends; dom0 asks for them with
``qubes.BackupCarrier+transfer`` (NAME on stdin) after the commit and logs
them. The carrier's own log has the same story.

``put`` also keeps the receipt it verified (name, size, SHA-256 of what it
sent): a later ``commit NAME`` -- dom0's path -- refuses a commit receipt
that differs from it, as ``put --commit`` does.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Mapping
from pathlib import Path

from carrier_vm.errors import DataError
from qbackup_protocol.carrier_service import TransferStats, parse_transfer_stats
from qbackup_protocol.client import parse_record
from qbackup_protocol.wire import MAX_REPLY_LINE, BackupRecord, ProtocolError, encode_reply

logger = logging.getLogger(__name__)

TRANSFERS_SUBDIR = ".cache/qbackup-carrier/transfers"
RECEIPTS_SUBDIR = ".cache/qbackup-carrier/receipts"


def stats_path(environ: Mapping[str, str], name: str, destination: str,
               subdir: str = TRANSFERS_SUBDIR) -> Path:
    """Given the environment, a valid backup NAME and a valid DESTINATION,
    return where its stats (or, with RECEIPTS_SUBDIR, its receipt) live (the
    name hashed: names contain '/'). DESTINATION was checked against
    DESTINATION_PATTERN wherever it came from (carrier.yaml, --to, --from):
    one path component, never '..' or a path."""
    home = environ.get("HOME") or os.path.expanduser("~")
    digest = hashlib.sha256(name.encode("ascii")).hexdigest()[:32]
    return Path(home) / subdir / destination / f"{digest}.json"


def save_stats(environ: Mapping[str, str], stats: TransferStats) -> None:
    """Given the environment and an upload's stats, store them (replacing
    any earlier ones for the name and destination); a failure to store is
    only logged."""
    path = stats_path(environ, stats.name, stats.destination)
    keep(path, encode_reply(stats.to_reply()), stats.name)


def save_receipt(environ: Mapping[str, str], destination: str, record: BackupRecord) -> None:
    """Given the environment, a destination and the receipt a put to it
    verified, keep it for commit."""
    path = stats_path(environ, record.name, destination, RECEIPTS_SUBDIR)
    keep(path, encode_reply(record.to_reply()), record.name)


def forget_receipt(environ: Mapping[str, str], name: str, destination: str) -> None:
    """Given the environment, NAME and a destination, drop the receipt an
    earlier put of NAME there left (a put starting anew has none yet)."""
    with contextlib.suppress(OSError):
        stats_path(environ, name, destination, RECEIPTS_SUBDIR).unlink()


def load_receipt(environ: Mapping[str, str], name: str, destination: str) -> BackupRecord | None:
    """Given the environment, a valid NAME and a destination, return the
    receipt the last put of NAME there from this VM verified, or None if
    there is none (or it is damaged: then commit checks what it can without it)."""
    try:
        with open(stats_path(environ, name, destination, RECEIPTS_SUBDIR), "rb") as handle:
            record = parse_record(handle.read(MAX_REPLY_LINE + 1))
    except (OSError, ProtocolError, RecursionError):
        return None
    return record if record.name == name else None


def keep(path: Path, line: bytes, name: str) -> None:
    """Given a path, one line and the backup NAME it is about, store the line
    atomically; a failure to store is only logged."""
    temporary = path.with_suffix(f".{os.getpid()}.tmp")
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        temporary.write_bytes(line)
        os.replace(temporary, path)
    except OSError as error:
        logger.warning("cannot keep %s for %s: %s", path.parent.name, name, error)
        with contextlib.suppress(OSError):
            temporary.unlink()


def load_stats(environ: Mapping[str, str], name: str, destination: str) -> TransferStats:
    """Given the environment, a valid NAME and a destination, return the
    stats of NAME's last upload there through this VM (zeros if none are
    kept); raise DataError if the kept file is damaged."""
    path = stats_path(environ, name, destination)
    try:
        with open(path, "rb") as handle:
            line = handle.read(MAX_REPLY_LINE + 1)
    except FileNotFoundError:
        return TransferStats(name, 0, (), 0, destination)
    except OSError as error:
        raise DataError(f"cannot read the transfer stats: {error.strerror}") from None
    try:
        stats = parse_transfer_stats(line)
    except (ProtocolError, RecursionError):
        raise DataError("the kept transfer stats are damaged") from None
    if (stats.name, stats.destination) != (name, destination):
        raise DataError("the kept transfer stats name another backup or destination")
    return stats
