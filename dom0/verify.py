"""`qbackup verify` and `qbackup restore`: qvm-backup-restore reading from the carrier.

qvm-backup-restore runs the location command in the carrier through
qubes.Restore (eval, like qubes.Backup), so the command holds only a checked
name. `--verify-only` decrypts and checks every part with the passphrase. That
proves a stored backup can be restored, which a server-side digest check
cannot.

The passphrase comes from a 0600 file (`-p FILE`). A job that uses
`passphrase_vm` has dom0 ask that VM through `qubes.BackupPassphrase+PROFILE`
(the call qubesd makes for a backup) and hands the answer to
qvm-backup-restore on stdin (`-p -`). No passphrase file ever exists in dom0.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
from collections.abc import Sequence

from dom0.carrier import CarrierClient, check_name
from dom0.config import PassphraseSource, carrier_and_passphrase, is_vm_name, need_passphrase
from dom0.errors import PassphraseError, QbackupError, UsageError, VerificationError
from dom0.log import clean_text, say
from dom0.passphrase import MAX_PASSPHRASE_FILE, read_passphrase
from dom0.profile import CARRIER_COMMAND, profile_name
from dom0.qubes import QubesAdapter
from dom0.session import Context, require_vm, running_carrier

logger = logging.getLogger(__name__)
MAX_LOGGED_LINES = 40
PASSPHRASE_SERVICE = "qubes.BackupPassphrase"  # noqa: S105 - a service name, no secret
PASSPHRASE_TIMEOUT = 120.0  # a person may have to type it in the passphrase VM


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
    try:
        answer = app.run_service_for_stdio(source.vm, service, b"",
                                           max_output=MAX_PASSPHRASE_FILE,
                                           timeout=PASSPHRASE_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise PassphraseError(f"{source.vm} did not answer {service} within"
                              f" {PASSPHRASE_TIMEOUT:.0f} s") from None
    # qvm-backup-restore reads one line from stdin and strips its right side.
    line = answer.split(b"\n", 1)[0].rstrip()
    if not line:
        raise PassphraseError(f"{source.vm} answered {service} with an empty passphrase")
    return "-", line + b"\n"


def log_output(output: bytes) -> None:
    """Given qvm-backup-restore's output (it quotes the backup's own header,
    which came through the carrier), log its last lines cleaned."""
    lines = [line for line in output.splitlines() if line.strip()]
    for line in lines[-MAX_LOGGED_LINES:]:
        logger.info("qvm-backup-restore: %s", clean_text(line))


def verify_backup(app: QubesAdapter, carrier: str, source: PassphraseSource, name: str) -> None:
    """Given the carrier, the passphrase source and a backup NAME, run
    qvm-backup-restore --verify-only; raise VerificationError if it fails."""
    require_vm(app, carrier, "carrier VM")
    argument, stdin = passphrase_input(app, carrier, source)
    logger.info("verifying %s through %s", name, carrier)
    code, output = app.backup_restore(
        restore_arguments(carrier, argument, name, verify_only=True), capture=True,
        input_data=stdin)
    log_output(output)
    if code != 0:
        raise VerificationError(
            f"verification of {name} FAILED (qvm-backup-restore exit {code}): the backup is"
            " damaged, incomplete or taken with another passphrase")
    logger.info("verification of %s: ok", name)


def restore_backup(app: QubesAdapter, carrier: str, source: PassphraseSource, name: str,
                   options: Sequence[str], vms: Sequence[str]) -> None:
    """Given the carrier, passphrase source, backup NAME, pass-through OPTIONS
    and VMs, run qvm-backup-restore; raise QbackupError if it fails."""
    require_vm(app, carrier, "carrier VM")
    argument, stdin = passphrase_input(app, carrier, source)
    logger.info("restoring %s through %s%s", name, carrier,
                f" (VMs {' '.join(vms)})" if vms else "")
    code, output = app.backup_restore(
        restore_arguments(carrier, argument, name, False, options, vms), capture=False,
        input_data=stdin)
    log_output(output)
    if code != 0:
        raise QbackupError(f"restore of {name} failed (qvm-backup-restore exit {code})")
    logger.info("restore of %s: done", name)


# --- the `verify` and `restore` actions (argument handling only) -------------
def run_verify(args: argparse.Namespace, context: Context) -> int:
    """Given `verify` arguments, verify the named backup and say what was
    verified; return 0 or raise (NoSuchBackup for a name the server lacks)."""
    target = carrier_and_passphrase(args, context.config)
    carrier = target.carrier
    name = check_name(args.name)  # before the carrier starts: it reaches its `eval`
    source = need_passphrase(target.passphrase)
    app = context.get_app()
    with running_carrier(app, carrier, keep=False):
        record = CarrierClient(app, carrier, target.answer_timeout).require(name)
        verify_backup(app, carrier, source, name)
    say(f"{name}: verified: Qubes decrypted and checked every part of the"
        f" {record.size}-byte backup read through {carrier} (qvm-backup-restore --verify-only)")
    return 0


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
        restore_backup(app, carrier, source, name, options, args.vms)
    return 0
