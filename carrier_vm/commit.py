"""``commit NAME``: have the server publish the upload ``put NAME`` staged.

dom0 sends it (through ``qubes.BackupCarrier+commit``) only after Qubes'
``admin.backup.Execute`` succeeded: the carrier cannot tell a stream Qubes
aborted from a complete one (both may end in a clean EOF on its stdin), so a
put alone never makes a backup. Success is claimed only when the shell exited
0 and its receipt is one well-formed line naming NAME -- and, when the
carrier still knows what it sent (``put --commit``), the same size and SHA-256.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from carrier_vm.config import CarrierConfig
from carrier_vm.errors import DataError, NoSuchBackup, error_for_shell_status
from carrier_vm.ssh import exit_status, read_bounded, transport_error, with_stderr
from carrier_vm.upload import parse_receipt
from qbackup_protocol import MAX_REPLY_LINE, BackupRecord, build_command

logger = logging.getLogger(__name__)

SHELL_NOTHING_STAGED = 66
NOTHING_STAGED = (
    "nothing staged under that name on the server (never put, already committed, or expired)"
)


async def commit_backup(
    connection: Any, name: str, config: CarrierConfig, sent: BackupRecord | None = None
) -> BackupRecord:
    """Given a connection, a valid NAME, the config and (optionally) the put's
    receipt, have the server publish NAME; return its record. Raise
    NoSuchBackup if nothing is staged, DataError if the receipt is malformed,
    names another backup or differs from SENT, another CarrierError otherwise."""
    try:
        return await asyncio.wait_for(_commit(connection, name, config, sent), config.reply_timeout)
    except TimeoutError:
        raise DataError(f"no commit receipt within {config.reply_timeout:g}s") from None


async def _commit(
    connection: Any, name: str, config: CarrierConfig, sent: BackupRecord | None
) -> BackupRecord:
    try:
        writer, reader, errors = await connection.open_session(
            build_command("commit", name), encoding=None
        )
        writer.write_eof()
        output, detail = await with_stderr(read_bounded(reader, 2 * MAX_REPLY_LINE), errors)
        await writer.channel.wait_closed()
    except DataError:
        raise
    except Exception as error:
        raise transport_error(error, config) from None
    status = exit_status(writer.channel)
    if status == SHELL_NOTHING_STAGED:
        raise NoSuchBackup(NOTHING_STAGED)
    if status != 0:
        raise error_for_shell_status(status, detail)
    record = parse_receipt(output, name)
    # The server publishes the digest it verified at put time: if that is not
    # what we sent, what it published is not this backup.
    if sent is not None and (record.size, record.sha256) != (sent.size, sent.sha256):
        raise DataError("the server's commit receipt differs from the upload's receipt")
    logger.info("committed %s: %d bytes, sha256 %s", name, record.size, record.sha256)
    return record
