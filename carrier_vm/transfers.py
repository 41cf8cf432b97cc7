"""How the last upload of each NAME went, kept for dom0 to fetch.

``put`` records its TransferStats (times the connection was lost, each
outage's length, bytes resent) here when it ends; dom0 asks for them with
``qubes.BackupCarrier+transfer`` (NAME on stdin) after the commit and logs
them. The carrier's own log has the same story.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Mapping
from pathlib import Path

from carrier_vm.errors import DataError
from qbackup_protocol import (
    MAX_REPLY_LINE,
    ProtocolError,
    TransferStats,
    encode_reply,
    parse_transfer_stats,
)

logger = logging.getLogger(__name__)

TRANSFERS_SUBDIR = ".cache/qbackup-carrier/transfers"


def stats_path(environ: Mapping[str, str], name: str) -> Path:
    """Given the environment and a valid backup NAME, return where its stats
    live (the name hashed: names contain '/')."""
    home = environ.get("HOME") or os.path.expanduser("~")
    digest = hashlib.sha256(name.encode("ascii")).hexdigest()[:32]
    return Path(home) / TRANSFERS_SUBDIR / f"{digest}.json"


def save_stats(environ: Mapping[str, str], stats: TransferStats) -> None:
    """Given the environment and an upload's stats, store them (replacing
    any earlier ones for the name); a failure to store is only logged."""
    path = stats_path(environ, stats.name)
    temporary = path.with_suffix(f".{os.getpid()}.tmp")
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        temporary.write_bytes(encode_reply(stats.to_reply()))
        os.replace(temporary, path)
    except (OSError, ProtocolError) as error:
        logger.warning("cannot keep the transfer stats of %s: %s", stats.name, error)
        with contextlib.suppress(OSError):
            temporary.unlink()


def load_stats(environ: Mapping[str, str], name: str) -> TransferStats:
    """Given the environment and a valid NAME, return the stats of NAME's
    last upload through this VM (zeros if none are kept); raise DataError if
    the kept file is damaged."""
    path = stats_path(environ, name)
    try:
        with open(path, "rb") as handle:
            line = handle.read(MAX_REPLY_LINE + 1)
    except FileNotFoundError:
        return TransferStats(name, 0, (), 0)
    except OSError as error:
        raise DataError(f"cannot read the transfer stats: {error.strerror}") from None
    try:
        stats = parse_transfer_stats(line)
    except (ProtocolError, RecursionError):
        raise DataError("the kept transfer stats are damaged") from None
    if stats.name != name:
        raise DataError("the kept transfer stats name another backup")
    return stats
