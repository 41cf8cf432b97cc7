"""`qbackup verify` and `qbackup restore`: qvm-backup-restore reading from the carrier.

qvm-backup-restore runs the location command in the carrier like qubes.Backup
does (eval), so the command carries only a checked name. `--verify-only`
decrypts and checks every part with the passphrase: the proof that a stored
backup is restorable, which a server-side digest check cannot give.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from dom0.errors import QbackupError, VerificationError
from dom0.names import check_name
from dom0.passphrase import read_passphrase
from dom0.profile import CARRIER_COMMAND
from dom0.qubes import QubesAdapter
from dom0.session import require_vm
from dom0.untrusted import clean_text

logger = logging.getLogger(__name__)
MAX_LOGGED_LINES = 40


def location_command(name: str) -> str:
    """Given a backup NAME, return the command qvm-backup-restore runs in the
    carrier; check_name keeps it free of anything `eval` would interpret."""
    return f"{CARRIER_COMMAND} get {check_name(name)}"


def restore_arguments(carrier: str, passphrase_file: Path, name: str, verify_only: bool,
                      options: Sequence[str] = (), vms: Sequence[str] = ()) -> list[str]:
    """Given what to restore, return qvm-backup-restore's arguments."""
    arguments = ["--verify-only"] if verify_only else []
    arguments += [*options, "-d", carrier, "-p", str(passphrase_file), location_command(name)]
    return arguments + list(vms)


def log_output(output: bytes) -> None:
    """Given qvm-backup-restore's output (it quotes the backup's own, carrier
    supplied, header), log its last lines cleaned."""
    lines = [line for line in output.splitlines() if line.strip()]
    for line in lines[-MAX_LOGGED_LINES:]:
        logger.info("qvm-backup-restore: %s", clean_text(line))


def verify_backup(app: QubesAdapter, carrier: str, passphrase_file: Path, name: str) -> None:
    """Given the carrier, the passphrase file and a backup NAME, run
    qvm-backup-restore --verify-only; raise VerificationError if it fails."""
    read_passphrase(passphrase_file)  # refuse a bad file before Qubes reads it
    require_vm(app, carrier, "carrier VM")
    logger.info("verifying %s through %s", name, carrier)
    code, output = app.backup_restore(
        restore_arguments(carrier, passphrase_file, name, verify_only=True), capture=True)
    log_output(output)
    if code != 0:
        raise VerificationError(
            f"verification of {name} FAILED (qvm-backup-restore exit {code}): the backup is"
            " damaged, incomplete or taken with another passphrase")
    logger.info("verification of %s: ok", name)


def restore_backup(app: QubesAdapter, carrier: str, passphrase_file: Path, name: str,
                   options: Sequence[str], vms: Sequence[str]) -> None:
    """Given the carrier, passphrase file, backup NAME, pass-through OPTIONS and
    VMs, run qvm-backup-restore on the terminal; raise QbackupError if it fails."""
    read_passphrase(passphrase_file)
    require_vm(app, carrier, "carrier VM")
    logger.info("restoring %s through %s%s", name, carrier,
                f" (VMs {' '.join(vms)})" if vms else "")
    code, output = app.backup_restore(
        restore_arguments(carrier, passphrase_file, name, False, options, vms), capture=False)
    log_output(output)
    if code != 0:
        raise QbackupError(f"restore of {name} failed (qvm-backup-restore exit {code})")
    logger.info("restore of %s: done", name)
