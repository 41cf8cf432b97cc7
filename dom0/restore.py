"""`qbackup restore`: qvm-backup-restore reading from the carrier, judged by
what Qubes did rather than by its exit status.

A normal restore that fails to extract data only LOGS "Error extracting
data" and exits 0, and in paranoid mode the inner restore's log reaches dom0
only with --auto-close (docs/QUBES.md, "Restore"). So a restore is judged by
its output AND by the VMs that exist afterwards: qvm-backup-restore creates
them in its own process, and this process sees them only after it refreshed
its VM list (qubesadmin caches it: docs/QUBES.md, "What qubesadmin caches").

What was restored is reported by name: the VMs Qubes announced ("-> Restoring
NAME..."), under the names they got (a conflict renamed with
--rename-conflicting), each confirmed to exist now; and dom0's home, which
Qubes restores into a new `home-restore-DATE` directory instead of a VM.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

from dom0.carrier import CarrierClient, check_name
from dom0.compression import restore_options
from dom0.config import PassphraseSource, Target, carrier_and_passphrase, need_passphrase
from dom0.errors import (
    Interrupted,
    NoSuchBackup,
    QbackupError,
    TemporaryFailure,
    UsageError,
    VerificationError,
)
from dom0.log import say, say_json
from dom0.qubes import QubesAdapter
from dom0.session import Context, failure_as_json, require_vm, running_carrier
from dom0.settings import is_vm_name
from dom0.verify import (
    Committed,
    committed_record,
    last_error,
    log_output,
    passphrase_input,
    restore_arguments,
)
from qbackup_protocol.text import clean_text

logger = logging.getLogger(__name__)
DOM0 = "dom0"  # the AdminVM: in a backup it stands for dom0's home directory
PARANOID_OPTIONS = frozenset({"--paranoid-mode", "--plan-b"})
# What qvm-backup-restore logs (qubesadmin/backup/restore.py, release4.2 and
# release4.3): restore_do's data error, _restore_vms_metadata's VM that could
# not be created, _handle_volume_data's volume that could not be written.
FAILURE_MARKS = (b"Error extracting data", b"Error restoring VM", b"Failed to restore volume")
# _restore_vms_metadata: "-> Restoring %s..." with the VM's name IN THE BACKUP.
RESTORING = re.compile(rb"-> Restoring ([A-Za-z0-9_.-]+)\.\.\.")
# get_restore_summary: the row of a VM restored under another name.
RENAMED = re.compile(rb"^\s*([A-Za-z0-9_.-]+) \|.*<-- Will be renamed to '([A-Za-z0-9_.-]+)'")
# _handle_dom0: "Restoring home of user '%s' to '%s' directory...".
DOM0_HOME = re.compile(
    rb"Restoring home of user '([a-z_][a-z0-9_.-]*)' to '(home-restore-[0-9-]+)' directory")


@dataclass(frozen=True)
class RestoredVM:
    """A VM the restore created: its name in the backup and its name now."""

    backup_name: str
    name: str


@dataclass(frozen=True)
class Dom0Home:
    """Where Qubes put dom0's home from the backup: a new directory in the
    home of the dom0 user."""

    user: str
    directory: str

    def path(self) -> str:
        """Return the directory's full path, found as Qubes finds the home
        (_handle_dom0: that user's home; the running user's own `~`)."""
        home = "~" if self.user == getpass.getuser() else f"~{self.user}"
        return os.path.join(os.path.expanduser(home), self.directory)


@dataclass(frozen=True)
class RestoreReport:
    """What qvm-backup-restore said it did, read from its output."""

    announced: list[str]  # VMs (backup names) it restores, dom0 included
    renamed: dict[str, str]  # backup name -> name on this dom0
    dom0_home: Dom0Home | None
    failures: list[str]  # its error lines, cleaned

    def target(self, backup_name: str) -> str:
        """Given a VM's name in the backup, return the name it is restored as."""
        return self.renamed.get(backup_name, backup_name)


@dataclass(frozen=True)
class Restored:
    """A restore that succeeded: the VMs it created and where dom0's home went."""

    vms: list[RestoredVM]
    dom0_home: Dom0Home | None


def read_report(output: bytes) -> RestoreReport:
    """Given qvm-backup-restore's output, return what it says it restored."""
    announced: list[str] = []
    renamed: dict[str, str] = {}
    dom0_home = None
    failures: list[str] = []
    for line in output.splitlines():
        for mark in FAILURE_MARKS:
            if mark in line:  # from the mark on: not the logger's name before it
                failures.append(clean_text(line[line.index(mark):]))
        if (restoring := RESTORING.search(line)) is not None:
            announced.append(restoring.group(1).decode())
        if (row := RENAMED.search(line)) is not None:
            renamed[row.group(1).decode()] = row.group(2).decode()
        if (home := DOM0_HOME.search(line)) is not None:
            dom0_home = Dom0Home(home.group(1).decode(), home.group(2).decode())
    return RestoreReport(announced, renamed, dom0_home, failures)


def judge_restore(code: int, output: bytes, created: set[str], wanted: Sequence[str],
                  options: Sequence[str]) -> Restored:
    """Given qvm-backup-restore's exit status and output, the VMs that exist
    now and did not before, the VMs asked for and the options, return what
    was restored; raise VerificationError with the reason if anything the
    restore set out to do did not happen."""
    if code != 0:
        detail = last_error(output)
        raise VerificationError(f"qvm-backup-restore exit {code}" + (f": {detail}" if detail
                                                                      else ""))
    report = read_report(output)
    if report.failures:
        raise VerificationError(report.failures[-1])
    vms = [RestoredVM(name, report.target(name)) for name in report.announced if name != DOM0]
    missing = [vm.name for vm in vms if vm.name not in created]
    if missing:
        raise VerificationError(f"Qubes announced but did not create: {' '.join(missing)}")
    if DOM0 in report.announced and report.dom0_home is None:
        raise VerificationError("dom0's home was announced but not restored")
    skipped = "--skip-conflicting" in options
    not_restored = [vm for vm in wanted if vm not in report.announced]
    if not_restored and not skipped:
        raise VerificationError(f"not restored: {' '.join(not_restored)}")
    if not vms and report.dom0_home is None and not skipped:
        raise VerificationError("nothing was restored")
    return Restored(vms, report.dom0_home)


def run_qubes_restore(app: QubesAdapter, arguments: list[str], stdin: bytes | None,
                      wanted: Sequence[str], options: Sequence[str]) -> Restored:
    """Given qvm-backup-restore's arguments and what was asked, run it and
    return what it restored; raise VerificationError if it failed, and
    Interrupted (after naming any VM it already made) on a signal."""
    # Another process made or removed VMs since this one listed them? Only a
    # fresh list tells (qubesadmin/app.py VMCollection.refresh_cache).
    app.refresh_vms()
    before = app.vm_names()
    try:
        code, output = app.backup_restore(arguments, capture=False, input_data=stdin)
    except Interrupted:
        # The adapter ended qvm-backup-restore and its children; metadata
        # comes first in Qubes' restore, so VMs it made may lack their data.
        app.refresh_vms()
        left = sorted(app.vm_names() - before)
        if left:
            logger.error("the interrupted restore left VMs that may be incomplete: %s",
                         " ".join(left))
        raise
    log_output(output)
    # qvm-backup-restore created the VMs in ITS process: refresh before
    # deciding from them (qubesadmin/app.py VMCollection.refresh_cache).
    app.refresh_vms()
    return judge_restore(code, output, app.vm_names() - before, wanted, options)


def restore_backup(app: QubesAdapter, carrier: str, source: PassphraseSource, name: str,
                   options: Sequence[str], vms: Sequence[str],
                   committed: Committed | None = None,
                   destination: str | None = None) -> Restored:
    """Given the carrier, passphrase source, backup NAME, pass-through OPTIONS,
    VMs, dom0's record of the backup and the destination to read it from
    (None: the carrier's first), run qvm-backup-restore and return what it
    restored (restore_choices checked the OPTIONS); raise VerificationError
    if the restore failed."""
    paranoid = bool(PARANOID_OPTIONS & set(options))
    require_vm(app, carrier, "carrier VM")
    argument, stdin = passphrase_input(app, carrier, source)
    logger.info("restoring %s through %s%s%s", name, carrier,
                f" from {destination}" if destination else "",
                f" (VMs {' '.join(vms)})" if vms else "")
    all_options = [*options, *restore_options(committed.compression if committed else None)]
    if paranoid:
        # The disposable VM's log (and with it "Error extracting data") comes
        # back to dom0 only with --auto-close; without it a person must close
        # the restore's window (qubesadmin/backup/dispvm.py run(),
        # tools/qvm_backup_restore.py main()).
        all_options.append("--auto-close")
    arguments = restore_arguments(carrier, argument, name, False, all_options, vms,
                                  destination)
    try:
        restored = run_qubes_restore(app, arguments, stdin, vms, options)
    except VerificationError as error:
        raise VerificationError(f"restore of {name} FAILED: {error}") from None
    logger.info("restore of %s: done: %s", name, describe(restored))
    return restored


def describe(restored: Restored) -> str:
    """Given a successful restore, return what it restored in one line."""
    parts = [vm.name if vm.name == vm.backup_name else f"{vm.name} (was {vm.backup_name})"
             for vm in restored.vms]
    if restored.dom0_home is not None:
        parts.append(f"dom0's home in {restored.dom0_home.path()}")
    return ", ".join(parts) or "nothing (every VM in it exists here and was skipped)"


def show(name: str, restored: Restored, as_json: bool) -> None:
    """Given a backup NAME and its successful restore, print what came back."""
    home = restored.dom0_home
    if as_json:
        say_json({"backup": name,
                  "vms": [{"backup_name": vm.backup_name, "name": vm.name}
                          for vm in restored.vms],
                  "dom0_home": home.path() if home is not None else None})
        return
    say(f"{name}: restored")
    for vm in restored.vms:
        renamed = "" if vm.name == vm.backup_name else f" (was {vm.backup_name} in the backup)"
        say(f"  VM {vm.name}{renamed}")
    if home is not None:
        say(f"  dom0's home: {home.path()}")
    if not restored.vms and home is None:
        say("  nothing: every VM in it exists here and was skipped (--skip-conflicting)")


def restore_choices(args: argparse.Namespace, source: PassphraseSource) -> list[str]:
    """Given `restore` arguments and the passphrase source, return
    qvm-backup-restore's options for them; raise UsageError for VM names that
    are none or choices that contradict each other or the source."""
    if args.paranoid_mode and source.vm is not None:
        # Paranoid mode copies the passphrase FILE into a disposable VM
        # (qubesadmin/backup/dispvm.py transfer_pass_file): `-p -` cannot reach it.
        raise UsageError("--paranoid-mode needs the passphrase in a file (-p FILE), not from a"
                         " passphrase VM")
    # They become qvm-backup-restore arguments: a word like '--x' must not
    # turn into one of its options.
    for vm in [*args.vms, *args.exclude]:
        if not is_vm_name(vm):
            raise UsageError(f"not a VM name: {vm!r}")
    if DOM0 in args.vms and (args.skip_dom0_home or args.paranoid_mode):
        # Qubes' paranoid mode never restores dom0's home (it implies
        # --skip-dom0-home: tools/qvm_backup_restore.py).
        raise UsageError("dom0 (its home) cannot be restored with --skip-dom0-home or"
                         " --paranoid-mode")
    # Qubes restores dom0's home whatever VMs are named or excluded
    # (restore.py restore_info_verify skips 'dom0'): only --skip-dom0-home
    # leaves it out. Naming VMs without dom0, or excluding dom0, means that.
    skip_home = (args.skip_dom0_home or DOM0 in args.exclude
                 or bool(args.vms and DOM0 not in args.vms))
    options = [flag for flag, wanted in (
        ("--rename-conflicting", args.rename_conflicting),
        ("--skip-conflicting", args.skip_conflicting),
        ("--skip-dom0-home", skip_home),
        ("--paranoid-mode", args.paranoid_mode)) if wanted]
    for vm in args.exclude:
        if vm != DOM0:
            options += ["-x", vm]
    return options


def reachable_holder(app: QubesAdapter, target: Target, name: str) -> str | None:
    """Given where to restore from and a backup NAME, return the first
    destination that answers and holds it: --destination, else the job's
    destinations, else the carrier's, in order (None: the carrier's first,
    asked before its list is). Say why each one before it was passed over;
    raise the last one's error (TemporaryFailure or NoSuchBackup) if none does."""

    def holds(destination: str | None) -> str | None:
        CarrierClient(app, target.carrier, target.answer_timeout, destination).require(name)
        return destination

    if target.destination is not None:
        return holds(target.destination)
    order = target.destinations
    if order is None:
        try:
            return holds(None)
        except (TemporaryFailure, NoSuchBackup) as error:
            try:
                listed = CarrierClient(app, target.carrier, target.answer_timeout).destinations()
            except QbackupError:
                raise error from None
            if len(listed) < 2:
                raise
            logger.warning("destination %s: %s; trying %s", listed[0], error, listed[1])
            order = listed[1:]
    for index, destination in enumerate(order):
        try:
            return holds(destination)
        except (TemporaryFailure, NoSuchBackup) as error:
            if index + 1 == len(order):
                raise
            logger.warning("destination %s: %s; trying %s", destination, error,
                           order[index + 1])
    raise AssertionError("unreachable: a job names at least one destination")


def run(args: argparse.Namespace, context: Context) -> int:
    """`qbackup restore`: given its arguments, restore from the named backup,
    print what was restored (or JSON); return 0 or raise."""
    with failure_as_json(context, args.name):
        target = carrier_and_passphrase(args, context.config)
        carrier = target.carrier
        name = check_name(args.name)
        source = need_passphrase(target.passphrase)
        options = restore_choices(args, source)
        app = context.get_app()
        with running_carrier(app, carrier, keep=False):
            destination = reachable_holder(app, target, name)
            restored = restore_backup(app, carrier, source, name, options, args.vms,
                                      committed_record(context.history, name), destination)
    show(name, restored, context.json)
    return 0
