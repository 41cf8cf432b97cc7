"""`qbackup verify`: qvm-backup-restore --verify-only reading from the carrier.

qvm-backup-restore runs the location command in the carrier through
qubes.Restore (eval, like qubes.Backup), so the command holds only a checked
name. qubes.Restore ignores the command's exit status and restore runs it
three times (docs/QUBES.md, "Restore"): a `get` that notices bad bytes cannot
fail Qubes' restore. So `verify` first proves the stored bytes are the ones
committed (the server's re-hash, and the size and SHA-256 dom0 recorded at
commit time), and only then lets `--verify-only` decrypt and check every part.

The passphrase comes from a 0600 file (`-p FILE`) or, for a job with
`passphrase_vm`, from that VM's `qubes.BackupPassphrase+PROFILE` (the call
qubesd makes for a backup), cleaned exactly as qubesd cleans it and handed to
qvm-backup-restore on stdin (`-p -`). No passphrase file ever exists in dom0.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dom0 import history
from dom0.carrier import CarrierClient, check_name, seconds
from dom0.compression import restore_options
from dom0.config import PassphraseSource, carrier_and_passphrase, need_passphrase
from dom0.errors import PassphraseError, VerificationError
from dom0.log import say, say_json
from dom0.passphrase import MAX_PASSPHRASE_FILE, read_passphrase
from dom0.profile import CARRIER_COMMAND, profile_name
from dom0.qubes import QubesAdapter
from dom0.session import Context, failure_as_json, require_vm, running_carrier, running_vm
from qbackup_protocol.carrier_service import DEFAULT_DESTINATION, check_destination
from qbackup_protocol.text import clean_text

logger = logging.getLogger(__name__)
MAX_LOGGED_LINES = 40
PASSPHRASE_SERVICE = "qubes.BackupPassphrase"  # noqa: S105 - a service name, no secret
PASSPHRASE_TIMEOUT = 120.0  # a person may have to type it in the passphrase VM


@dataclass(frozen=True)
class Committed:
    """What dom0 recorded when the server confirmed a backup."""

    size: int
    sha256: str
    compression: bool | str | None


def committed_record(history_path: Path, name: str) -> Committed | None:
    """Given the history and a backup NAME, return dom0's record of it (the
    newest, should there be more), or None if dom0 never committed it."""
    found = None
    for run in history.committed_runs(history.read_runs(history_path)):
        if run.name == name and run.size is not None and run.sha256:
            found = Committed(run.size, run.sha256, run.compression)
    return found


def location_command(name: str, destination: str | None = None) -> str:
    """Given a backup NAME and the destination to read it from (None or
    DEFAULT_DESTINATION: the carrier's first), return the command
    qvm-backup-restore runs in the carrier; check_name and check_destination
    keep it free of anything `eval` would interpret."""
    if destination is None or destination == DEFAULT_DESTINATION:
        return f"{CARRIER_COMMAND} get {check_name(name)}"
    return f"{CARRIER_COMMAND} get --from {check_destination(destination)} {check_name(name)}"


def restore_arguments(carrier: str, passphrase_argument: str, name: str, verify_only: bool,
                      options: Sequence[str] = (), vms: Sequence[str] = (),
                      destination: str | None = None) -> list[str]:
    """Given what to restore and from which destination, return
    qvm-backup-restore's arguments."""
    arguments = ["--verify-only"] if verify_only else []
    arguments += [*options, "-d", carrier, "-p", passphrase_argument,
                  location_command(name, destination)]
    return arguments + list(vms)


def clean_vm_passphrase(answer: bytes, vm: str) -> bytes:
    """Given a passphrase VM's answer, return the passphrase as qubesd uses it
    for a backup: stripped of surrounding whitespace; raise PassphraseError if
    a newline remains inside (qubesd refuses that backup too), if it holds a
    CR (`-p -` would end the line there) or is empty."""
    passphrase = answer.strip()  # qubes/api/admin.py _load_backup_profile: .strip()
    if b"\n" in passphrase:  # ... then enforce(b'\n' not in passphrase)
        raise PassphraseError(f"{vm} answered a passphrase with a newline inside; Qubes refuses it")
    if b"\r" in passphrase:
        raise PassphraseError(f"{vm} answered a passphrase holding a CR; restore cannot read it")
    if not passphrase:
        raise PassphraseError(f"{vm} answered an empty passphrase")
    return passphrase


def passphrase_input(app: QubesAdapter, carrier: str,
                     source: PassphraseSource) -> tuple[str, bytes | None]:
    """Given the passphrase source, return (the -p argument, bytes for stdin);
    raise PassphraseError if the file is unsafe or the VM gives nothing."""
    if source.file is not None:
        read_passphrase(source.file)  # refuse a bad file before Qubes reads it
        return str(source.file), None
    if source.vm is None:
        raise PassphraseError("give the passphrase with -p FILE or --passphrase-vm VM")
    require_vm(app, source.vm, "passphrase VM")
    service = f"{PASSPHRASE_SERVICE}+{profile_name(carrier)}"
    with running_vm(app, source.vm, "passphrase VM"):
        try:
            answer = app.run_service_for_stdio(source.vm, service, b"",
                                               max_output=MAX_PASSPHRASE_FILE,
                                               timeout=PASSPHRASE_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise PassphraseError(f"{source.vm} did not answer {service} within"
                                  f" {seconds(PASSPHRASE_TIMEOUT)} s") from None
    # qvm-backup-restore `-p -` reads ONE line from stdin and rstrips it.
    return "-", clean_vm_passphrase(answer, source.vm) + b"\n"


def log_output(output: bytes) -> None:
    """Given qvm-backup-restore's output (it quotes the backup's own header,
    which came through the carrier), log its last lines cleaned."""
    lines = [line for line in output.splitlines() if line.strip()]
    for line in lines[-MAX_LOGGED_LINES:]:
        logger.info("qvm-backup-restore: %s", clean_text(line))


def last_error(output: bytes) -> str:
    """Given qvm-backup-restore's output, return its last error line, cleaned."""
    lines = [line for line in output.splitlines() if b"rror" in line]
    return clean_text(lines[-1]) if lines else ""


def check_stored(app: QubesAdapter, carrier: str, name: str, committed: Committed | None,
                 answer_timeout: float, destination: str | None = None) -> None:
    """Given a backup NAME, dom0's record of it and the destination holding
    it, prove the stored bytes are the committed ones: the server re-hashes
    them, and its record must equal dom0's (one stream, one digest on every
    destination); raise VerificationError otherwise."""
    result = CarrierClient(app, carrier, answer_timeout, destination).check(name)
    record = result.record
    if not result.ok:
        raise VerificationError(f"verification of {name} FAILED: the server's re-hash does not"
                                " match its digest record (the stored data changed)")
    if committed is None:
        logger.warning("dom0 has no record of %s: only the server's check and Qubes'"
                       " verification vouch for it", name)
        return
    if record.size != committed.size or record.sha256 != committed.sha256:
        raise VerificationError(f"verification of {name} FAILED: the server holds other bytes"
                                " than dom0 recorded at commit time (tampering?)")
    logger.info("stored bytes of %s: as committed (%d bytes, sha256 %s)", name, record.size,
                record.sha256)


def verify_backup(app: QubesAdapter, carrier: str, source: PassphraseSource, name: str,
                  committed: Committed | None, answer_timeout: float,
                  destination: str | None = None) -> None:
    """Given the carrier, the passphrase source, a backup NAME, dom0's record
    of it, how long to wait for the carrier's answers and the destination to
    read (None: the carrier's first), check the stored bytes, then run
    qvm-backup-restore --verify-only; raise VerificationError if either fails."""
    require_vm(app, carrier, "carrier VM")
    check_stored(app, carrier, name, committed, answer_timeout, destination)
    argument, stdin = passphrase_input(app, carrier, source)
    options = restore_options(committed.compression if committed else None)
    logger.info("verifying %s through %s", name, carrier)
    code, output = app.backup_restore(
        restore_arguments(carrier, argument, name, True, options, (), destination), capture=True,
        input_data=stdin)
    log_output(output)
    if code != 0:
        detail = last_error(output)
        raise VerificationError(
            f"verification of {name} FAILED (qvm-backup-restore exit {code})"
            + (f": {detail}" if detail else ": the backup is damaged, incomplete or taken"
               " with another passphrase"))
    logger.info("verification of %s: ok", name)


# --- the `verify` action (argument handling only) ----------------------------
def run_verify(args: argparse.Namespace, context: Context) -> int:
    """Given `verify` arguments, verify the named backup and say what was
    verified (or JSON); return 0 or raise (NoSuchBackup for a name the server
    lacks)."""
    with failure_as_json(context, args.name):
        target = carrier_and_passphrase(args, context.config)
        carrier = target.carrier
        name = check_name(args.name)  # before the carrier starts: it reaches its `eval`
        source = need_passphrase(target.passphrase)
        committed = committed_record(context.history, name)
        app = context.get_app()
        with running_carrier(app, carrier, keep=False):
            verify_backup(app, carrier, source, name, committed, target.answer_timeout,
                          target.destination)
    if context.json:
        say_json({"backup": name, "dom0_record": committed is not None,
                  "size": committed.size if committed else None,
                  "sha256": committed.sha256 if committed else None})
    else:
        say(f"{name}: verified: {what_was_verified(committed)}")
    return 0


def what_was_verified(committed: Committed | None) -> str:
    """Given dom0's record of a backup that passed verify_backup, return what
    that proved, in one line."""
    proofs = ["the server re-hashed the stored bytes and they match its digest record"]
    if committed is not None:
        proofs.append(f"they are the {committed.size} bytes dom0 recorded at commit (sha256"
                      f" {committed.sha256[:16]}...)")
    else:
        proofs.append("dom0 has no record of this backup to compare them with")
    proofs.append("Qubes decrypted and checked every part (qvm-backup-restore --verify-only)")
    return "; ".join(proofs)
