"""``commit NAME``: have the server publish the upload ``put NAME`` staged.

dom0 sends it (through ``qubes.BackupCarrier+commit``) only after Qubes'
``admin.backup.Execute`` succeeded: the carrier cannot tell a stream Qubes
aborted from a complete one (both may end in a clean EOF on its stdin), so a
put alone never makes a backup. Success is claimed only when the shell exited
0 and its receipt is one well-formed line naming NAME -- and, when the
carrier still knows what it sent (``put --commit``), the same size and SHA-256.
"""

from __future__ import annotations

import logging

from carrier_vm.config import CarrierConfig
from carrier_vm.errors import DataError, NoSuchBackup
from carrier_vm.ssh import Connection, bounded_output, run_session, within
from carrier_vm.upload import parse_receipt
from qbackup_protocol import MAX_REPLY_LINE, VERB_COMMIT, BackupRecord, ShellExit, build_command

logger = logging.getLogger(__name__)

NOTHING_STAGED = (
    "nothing staged under that name on the server (never put, already committed, or expired)"
)


async def commit_backup(
    connection: Connection, name: str, config: CarrierConfig, sent: BackupRecord | None = None
) -> BackupRecord:
    """Given a connection, a valid NAME, the config and (optionally) the put's
    receipt, have the server publish NAME; return its record. Raise
    NoSuchBackup if nothing is staged, DataError if the receipt is malformed,
    names another backup or differs from SENT, another CarrierError otherwise."""
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
