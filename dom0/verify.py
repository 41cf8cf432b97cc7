"""`qbackup verify` and `qbackup restore`: qvm-backup-restore reading from the carrier.

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

A normal restore that fails to extract data only LOGS "Error extracting data"
and exits 0: success is judged from its output and the VMs that now exist.
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
from dom0.config import PassphraseSource, carrier_and_passphrase, is_vm_name, need_passphrase
from dom0.engine import running_vm
from dom0.errors import PassphraseError, UsageError, VerificationError
from dom0.log import clean_text, say
from dom0.passphrase import MAX_PASSPHRASE_FILE, read_passphrase
from dom0.profile import CARRIER_COMMAND, profile_name
from dom0.qubes import QubesAdapter
from dom0.session import Context, require_vm, running_carrier

logger = logging.getLogger(__name__)
MAX_LOGGED_LINES = 40
PASSPHRASE_SERVICE = "qubes.BackupPassphrase"  # noqa: S105 - a service name, no secret
PASSPHRASE_TIMEOUT = 120.0  # a person may have to type it in the passphrase VM
EXTRACTION_ERROR = b"Error extracting data"  # qubesadmin/backup/restore.py restore_do
PARANOID_OPTIONS = frozenset({"--paranoid-mode", "--plan-b"})


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


def location_command(name: str) -> str:
    """Given a backup NAME, return the command qvm-backup-restore runs in the
    carrier; check_name keeps it free of anything `eval` would interpret."""
    return f"{CARRIER_COMMAND} get {check_name(name)}"


def restore_arguments(carrier: str, passphrase_argument: str, name: str, verify_only: bool,
                      options: Sequence[str] = (), vms: Sequence[str] = ()) -> list[str]:
    """Given what to restore, return qvm-backup-restore's arguments."""
    arguments = ["--verify-only"] if verify_only else []
    arguments += [*options, "-d", carrier, "-p", passphrase_argument, location_command(name)]
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


def check_stored(app: QubesAdapter, carrier: str, name: str, committed: Committed | None) -> None:
    """Given a backup NAME and dom0's record of it, prove the stored bytes are
    the committed ones: the server re-hashes them, and its record must equal
    dom0's; raise VerificationError otherwise."""
    record, ok = CarrierClient(app, carrier).check(name)
    if not ok:
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
                  committed: Committed | None) -> None:
    """Given the carrier, the passphrase source, a backup NAME and dom0's
    record of it, check the stored bytes, then run qvm-backup-restore
    --verify-only; raise VerificationError if either fails."""
    require_vm(app, carrier, "carrier VM")
    check_stored(app, carrier, name, committed)
    argument, stdin = passphrase_input(app, carrier, source)
    options = restore_options(committed.compression if committed else None)
    logger.info("verifying %s through %s", name, carrier)
    code, output = app.backup_restore(
        restore_arguments(carrier, argument, name, True, options), capture=True,
        input_data=stdin)
    log_output(output)
    if code != 0:
        detail = last_error(output)
        raise VerificationError(
            f"verification of {name} FAILED (qvm-backup-restore exit {code})"
            + (f": {detail}" if detail else ": the backup is damaged, incomplete or taken"
               " with another passphrase"))
    logger.info("verification of %s: ok", name)


def restore_problem(code: int, output: bytes, created: set[str], vms: Sequence[str],
                    options: Sequence[str]) -> str | None:
    """Given how qvm-backup-restore ended, what it printed, the VMs that exist
    now and did not before, and what was asked, return why the restore
    failed, or None if it did not."""
    if code != 0:
        return f"qvm-backup-restore exit {code}" + (f": {last_error(output)}"
                                                     if last_error(output) else "")
    if EXTRACTION_ERROR in output:
        return last_error(output) or "Error extracting data"
    if "--skip-conflicting" in options:
        return None  # every VM may rightly have been skipped
    if vms and "--rename-conflicting" not in options:
        missing = [vm for vm in vms if vm not in created]
        if missing:
            return f"VMs not restored: {' '.join(missing)}"
    if not created:
        return "no VM was restored"
    return None


def restore_backup(app: QubesAdapter, carrier: str, source: PassphraseSource, name: str,
                   options: Sequence[str], vms: Sequence[str],
                   committed: Committed | None = None) -> None:
    """Given the carrier, passphrase source, backup NAME, pass-through OPTIONS,
    VMs and dom0's record of the backup, run qvm-backup-restore; raise
    UsageError for --paranoid-mode with a passphrase VM, VerificationError
    if the restore failed."""
    if source.vm is not None and PARANOID_OPTIONS & set(options):
        # Paranoid mode copies the passphrase FILE into a disposable VM
        # (qubesadmin/backup/dispvm.py): `-p -` cannot reach it.
        raise UsageError("--paranoid-mode needs the passphrase in a file (-p FILE), not from a"
                         " passphrase VM")
    require_vm(app, carrier, "carrier VM")
    argument, stdin = passphrase_input(app, carrier, source)
    logger.info("restoring %s through %s%s", name, carrier,
                f" (VMs {' '.join(vms)})" if vms else "")
    before = app.vm_names()
    all_options = [*options, *restore_options(committed.compression if committed else None)]
    code, output = app.backup_restore(
        restore_arguments(carrier, argument, name, False, all_options, vms), capture=False,
        input_data=stdin)
    log_output(output)
    problem = restore_problem(code, output, app.vm_names() - before, vms, options)
    if problem is not None:
        raise VerificationError(f"restore of {name} FAILED: {problem}")
    logger.info("restore of %s: done", name)


# --- the `verify` and `restore` actions (argument handling only) -------------
def run_verify(args: argparse.Namespace, context: Context) -> int:
    """Given `verify` arguments, verify the named backup and say what was
    verified; return 0 or raise (NoSuchBackup for a name the server lacks)."""
    target = carrier_and_passphrase(args, context.config)
    carrier = target.carrier
    name = check_name(args.name)  # before the carrier starts: it reaches its `eval`
    source = need_passphrase(target.passphrase)
    committed = committed_record(context.history, name)
    app = context.get_app()
    with running_carrier(app, carrier, keep=False):
        verify_backup(app, carrier, source, name, committed)
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


def run_restore(args: argparse.Namespace, context: Context) -> int:
    """Given `restore` arguments, restore from the named backup; return 0 or raise."""
    target = carrier_and_passphrase(args, context.config)
    carrier = target.carrier
    name = check_name(args.name)
    source = need_passphrase(target.passphrase)
    if args.paranoid_mode and source.vm is not None:
        # Paranoid mode copies the passphrase FILE into a disposable VM: an
        # answer from a passphrase VM on stdin (-p -) cannot get there.
        raise UsageError("--paranoid-mode needs the passphrase in a file (-p FILE), not from a"
                         " passphrase VM")
    # They become qvm-backup-restore arguments: a word like '--x' must not
    # turn into one of its options.
    for vm in [*args.vms, *args.exclude]:
        if not is_vm_name(vm):
            raise UsageError(f"not a VM name: {vm!r}")
    options = [flag for flag, wanted in (
        ("--rename-conflicting", args.rename_conflicting),
        ("--skip-conflicting", args.skip_conflicting),
        ("--paranoid-mode", args.paranoid_mode)) if wanted]
    for vm in args.exclude:
        options += ["-x", vm]
    app = context.get_app()
    with running_carrier(app, carrier, keep=False):
        CarrierClient(app, carrier, target.answer_timeout).require(name)
        restore_backup(app, carrier, source, name, options, args.vms,
                       committed_record(context.history, name))
    return 0
