"""`qbackup restore` judged as a real dom0 judges it: by what Qubes' fresh VM
list shows after qvm-backup-restore (which creates the VMs in its own
process), by its output, and by where dom0's home went."""

from __future__ import annotations

import json

import pytest

from dom0.errors import QbackupExit, VerificationError
from dom0.restore import judge_restore
from testbed.qubes_sim import stream
from tests.dom0.conftest import CARRIER, MIB, Dom0

HOME_SIZE = 64 * 1024


def backup(dom0: Dom0, *vms: str) -> str:
    """Back up VMS; return the backup's name."""
    before = set(dom0.stored())
    assert dom0.run("-f", "laptop", "-t", CARRIER, "-p", str(dom0.passfile), *vms) == 0
    [name] = set(dom0.stored()) - before
    return name


def restore(dom0: Dom0, *argv: str) -> int:
    return dom0.run("restore", "-t", CARRIER, "-p", str(dom0.passfile), *argv)


def test_a_restore_reports_each_vm_under_the_name_qubes_gave_it(
        dom0: Dom0, capsys: pytest.CaptureFixture[str]) -> None:
    # qvm-backup-restore creates the VMs in its own process: a list cached
    # before it ran would show none of them, and every restore would "fail".
    name = backup(dom0, "work", "personal")
    for release, renamed in (("4.2", "work1"), ("4.3", "work-1")):
        dom0.sim.restore_release = release
        dom0.sim.remove_vm("personal")
        capsys.readouterr()
        assert restore(dom0, "--rename-conflicting", name, "work", "personal") == 0
        assert capsys.readouterr().out.splitlines() == [
            f"{name}: restored", f"  VM {renamed} (was work in the backup)", "  VM personal"]
        image = dom0.sim.restore_dir / f"{renamed}.img"
        assert image.read_bytes() == stream.vm_data("work", 2 * MIB)
        assert dom0.logged(f"restore of {name}: done: {renamed} (was work), personal")
    dom0.sim.remove_vm("personal")
    assert restore(dom0, "--json", "--skip-conflicting", name) == 0
    assert json.loads(capsys.readouterr().out) == {
        "backup": name, "vms": [{"backup_name": "personal", "name": "personal"}],
        "dom0_home": None}


def test_a_backup_of_dom0s_home_alone_restores_and_says_where(
        dom0: Dom0, capsys: pytest.CaptureFixture[str]) -> None:
    # Qubes restores dom0's home into ~/home-restore-DATE and creates no VM.
    dom0.sim.add_vm("dom0", size=HOME_SIZE, running=True)
    name = backup(dom0, "dom0")
    capsys.readouterr()
    assert restore(dom0, name) == 0
    [directory] = dom0.sim.dom0_home.glob("home-restore-*")
    assert capsys.readouterr().out.splitlines() == [f"{name}: restored",
                                                    f"  dom0's home: {directory}"]
    assert (directory / "home.data").read_bytes() == stream.vm_data("dom0", HOME_SIZE)


def test_the_default_set_takes_dom0s_home_which_can_be_skipped_or_chosen_alone(
        dom0: Dom0, capsys: pytest.CaptureFixture[str]) -> None:
    dom0.sim.add_vm("dom0", size=HOME_SIZE, running=True)
    name = backup(dom0)  # Qubes' default set: dom0 (its home), work, personal
    homes = dom0.sim.dom0_home

    def restored_homes() -> int:
        return len(list(homes.glob("home-restore-*")))

    dom0.sim.remove_vm("work")
    capsys.readouterr()
    assert restore(dom0, "--skip-conflicting", "--skip-dom0-home", name) == 0
    assert capsys.readouterr().out.splitlines() == [f"{name}: restored", "  VM work"]
    assert restored_homes() == 0
    # Qubes restores dom0's home also when VMs are named, and ignores -x dom0:
    # qbackup passes --skip-dom0-home for both.
    for choice in (["work"], ["--exclude", "dom0"]):
        dom0.sim.remove_vm("work")
        assert restore(dom0, "--skip-conflicting", name, *choice) == 0
        assert capsys.readouterr().out.splitlines() == [f"{name}: restored", "  VM work"]
        assert restored_homes() == 0
    code, output = dom0.sim.backup_restore(
        ["--skip-conflicting", "-x", "dom0", "-d", CARRIER, "-p", str(dom0.passfile),
         f"qbackup-carrier get {name}", "work"], capture=False)
    assert code == 0 and b"Restoring home of user" in output  # what Qubes itself does
    assert restored_homes() == 1
    assert restore(dom0, name, "dom0") == 0
    assert "dom0's home:" in capsys.readouterr().out
    assert restored_homes() == 2
    # dom0 named AND skipped: refused before anything runs.
    calls = len(dom0.sim.calls)
    assert restore(dom0, "--skip-dom0-home", name, "dom0") == QbackupExit.USAGE
    assert dom0.sim.calls[calls:] == []


def test_a_paranoid_restore_of_altered_data_fails(dom0: Dom0) -> None:
    # Damaged before the carrier hashed it (so the server's record matches):
    # only Qubes' HMAC notices, inside the disposable VM, whose restore logs
    # "Error extracting data" and exits 0. Its log reaches dom0 only with
    # --auto-close; without it the outer tool exits 0, silent.
    dom0.sim.interventions.corrupt_stream_byte = 200_000
    name = backup(dom0, "work")
    assert dom0.run("restore", "-t", CARRIER, "-p", str(dom0.passfile), "--paranoid-mode",
                    "--skip-conflicting", name) == QbackupExit.VERIFY
    assert dom0.logged(f"restore of {name} FAILED: Error extracting data")
    call = [call for call in dom0.sim.calls if call[0] == "qvm-backup-restore"][-1]
    assert "--auto-close" in call
    # The negative control: what Qubes gives without the option.
    code, output = dom0.sim.backup_restore(
        ["--paranoid-mode", "--skip-conflicting", "-d", CARRIER, "-p", str(dom0.passfile),
         f"qbackup-carrier get {name}"], capture=False)
    assert code == 0 and b"Error extracting data" not in output


# What qvm-backup-restore logs (qubesadmin/backup/restore.py, release4.2 and
# release4.3; logger names as the tool prints them).
SUMMARY = (b"     work |   AppVM | debian-12 | (default) |   blue | <-- Will be renamed to"
           b" 'work1'\n")
RESTORING_WORK = b"qubesadmin.backup: -> Restoring work...\n"
DONE = b"qubesadmin.backup: -> Done.\n"


@pytest.mark.parametrize(("output", "created", "reason"), [
    (SUMMARY + RESTORING_WORK + DONE, set(), "announced but did not create: work1"),
    (RESTORING_WORK + b"qubesadmin.backup: Error restoring VM work, skipping: no pool\n" + DONE,
     set(), "Error restoring VM work, skipping: no pool"),
    (RESTORING_WORK + b"qubesadmin.backup: Failed to restore volume private (size 5) of VM"
     b" work: EIO\n" + DONE, {"work"}, "Failed to restore volume private"),
    (b"qubesadmin.backup: -> Restoring dom0...\n" + DONE, set(), "dom0's home was announced"),
    (DONE, set(), "nothing was restored"),
])
def test_what_qubes_said_it_did_must_have_happened(output: bytes, created: set[str],
                                                   reason: str) -> None:
    with pytest.raises(VerificationError, match=reason):
        judge_restore(0, output, created, [], [])


def test_a_vm_asked_for_but_not_restored_fails_unless_skipped() -> None:
    output = RESTORING_WORK + DONE
    with pytest.raises(VerificationError, match="not restored: personal"):
        judge_restore(0, output, {"work"}, ["work", "personal"], [])
    restored = judge_restore(0, output, {"work"}, ["work", "personal"], ["--skip-conflicting"])
    assert [vm.name for vm in restored.vms] == ["work"]
