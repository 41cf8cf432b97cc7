"""``commit NAME``: have the server publish the upload ``put NAME`` staged.

dom0 sends it (through ``qubes.BackupCarrier+commit``) only after Qubes'
``admin.backup.Execute`` succeeded: the carrier cannot tell a stream Qubes
aborted from a complete one (both may end in a clean EOF on its stdin), so a
put alone never makes a backup. Success is claimed only when the shell exited
0 and its receipt is one well-formed line naming NAME -- and, when the
carrier still knows what it sent (``put --commit``), the same size and SHA-256.

A commit whose session is lost before its receipt came may or may not have
published NAME (the shell publishes, then writes the receipt). Its outcome
is learned, never assumed: the carrier reconnects within resume_window and
sends ``commit NAME`` again, the one probe that is atomic with publishing --
still staged, it publishes now (a commit that is still running on the
server holds the staged upload's lock, so the second waits for it); nothing
staged, ``list NAME`` tells whether NAME was published with the put's size
and SHA-256.
"""

from __future__ import annotations

import logging
import time

from carrier_vm.config import CarrierConfig
from carrier_vm.errors import AlreadyExists, DataError, NoSuchBackup, TemporaryFailure
from carrier_vm.replies import find_backup
from carrier_vm.ssh import Connection, Link, bounded_output, run_session, within
from carrier_vm.upload import parse_receipt
from qbackup_protocol.client import build_command
from qbackup_protocol.wire import MAX_REPLY_LINE, VERB_COMMIT, BackupRecord, ShellExit

logger = logging.getLogger(__name__)

NOTHING_STAGED = (
    "nothing staged under that name on the server (never put, already committed, or expired)"
)
MAX_RECONNECTS = 1000  # per commit: a bound even for a server that cuts every session


async def commit_backup(
    link: Link, name: str, config: CarrierConfig, sent: BackupRecord | None = None
) -> BackupRecord:
    """Given a Link, a valid NAME, the config and (optionally) the put's
    receipt, have the server publish NAME; return its record. When a commit
    session is lost, reconnect within resume_window and learn what happened
    (see the module docstring). Raise NoSuchBackup if nothing is staged (and,
    after a lost session, NAME is not listed either), DataError if a receipt
    or the listed record names another backup or differs from SENT,
    TemporaryFailure if the outcome cannot be learned within resume_window,
    another CarrierError otherwise."""
    lost: TemporaryFailure | None = None
    lost_at = 0.0
    reconnects = 0
    while True:
        try:
            return await commit_session(link.connection, name, config, sent)
        except (NoSuchBackup, AlreadyExists):
            if lost is None:
                raise
            # Nothing (or no longer anything) to publish after a lost session:
            # the lost commit may have published NAME. The listing decides.
            return await committed_record(link.connection, name, config, sent, lost)
        except TemporaryFailure as failure:
            if config.resume_window <= 0:
                raise
            if reconnects >= MAX_RECONNECTS:
                raise TemporaryFailure(
                    f"{failure} (gave up after {MAX_RECONNECTS} reconnections)"
                ) from None
            if lost is None:
                lost = failure
                lost_at = time.monotonic()
            reconnects += 1
            logger.warning("connection lost while committing %s: %s", name, failure)
            outage = await link.reconnect_within(failure, lost_at)
            logger.info("reconnected after %.1fs, asking whether %s was committed", outage, name)


async def commit_session(
    connection: Connection, name: str, config: CarrierConfig, sent: BackupRecord | None
) -> BackupRecord:
    """Given a connection, NAME, the config and (optionally) the put's
    receipt, run one ``commit NAME`` session; return the verified record.
    Raise TemporaryFailure if the session ended without a status or was cut
    (the outcome is unknown), NoSuchBackup if nothing is staged, DataError if
    the receipt is malformed or differs from SENT, another CarrierError
    otherwise."""
    end = await within(
        run_session(
            connection,
            build_command(VERB_COMMIT, name),
            config,
            bounded_output(2 * MAX_REPLY_LINE),
        ),
        config.reply_timeout,
        "commit receipt",
    )
    if end.status is None or end.status == ShellExit.IO:
        # Killed, cut, or interrupted: the shell may have published first.
        raise TemporaryFailure(f"the commit session ended before its receipt ({end.detail})")
    if end.status == ShellExit.NO_SUCH_BACKUP:
        raise NoSuchBackup(NOTHING_STAGED)
    end.raise_for_status()
    record = parse_receipt(end.value, name)
    # The server publishes the digest it verified at put time: if that is not
    # what we sent, what it published is not this backup.
    if sent is not None and (record.size, record.sha256) != (sent.size, sent.sha256):
        raise DataError("the server's commit receipt differs from the upload's receipt")
    logger.info("committed %s: %d bytes, sha256 %s", name, record.size, record.sha256)
    return record


async def committed_record(
    connection: Connection,
    name: str,
    config: CarrierConfig,
    sent: BackupRecord | None,
    lost: TemporaryFailure,
) -> BackupRecord:
    """Given a connection, NAME, the put's receipt (if kept) and the failure
    that lost an earlier commit session, return NAME's listed record if it
    shows that commit published the put; raise NoSuchBackup if NAME is
    neither staged nor listed, DataError if it is listed with another size
    or SHA-256, TemporaryFailure if the put's receipt was not kept (a listed
    NAME then proves nothing about this put)."""
    try:
        record = await find_backup(connection, name, config)
    except NoSuchBackup:
        raise NoSuchBackup(
            f"the commit's session was lost ({lost}) and {name} is neither staged nor "
            "listed on the server: nothing was committed"
        ) from None
    if sent is None:
        raise TemporaryFailure(
            f"the commit's session was lost ({lost}); {name} is listed, but without the "
            "put's receipt in this VM the carrier cannot tell whether it is this upload"
        )
    if (record.size, record.sha256) != (sent.size, sent.sha256):
        raise DataError(f"{name} is listed with another size or SHA-256 than the upload's")
    logger.info(
        "committed %s (learned from the listing after the commit's session was lost): "
        "%d bytes, sha256 %s", name, record.size, record.sha256,
    )
    return record
