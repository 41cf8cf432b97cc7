"""`qbackup backup --dry-run`: the job resolved (VMs and their sizes,
compression, destination name), the carrier and server reached (`info`), the
passphrase read; nothing sent, nothing recorded, no notification, hook or
ping; exit 0, or the code the backup would have failed with.

Simulated Qubes, REAL carrier, real sshd and shell."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dom0.cli import main
from dom0.errors import QbackupExit
from tests.dom0.conftest import CARRIER, MIB, Dom0


def write_job(dom0: Dom0, passphrase: str, extra: str = "") -> Path:
    path = dom0.passfile.parent / "qbackup.yaml"
    path.write_text(f"jobs:\n  daily:\n    carrier: {CARRIER}\n    prefix: laptop/daily\n"
                    f"    {passphrase}\n    vms: [work, personal]\n    compression: zstd\n"
                    "    hooks:\n      on_start: [/bin/false]\n"
                    "      ping_url: https://hc-ping.com/0a1b2c\n" + extra)
    return path


def nothing_happened(dom0: Dom0) -> bool:
    """Return whether the dry run left no trace: no backup, no history, no
    Qubes backup run, no profile, no ping, the carrier halted again."""
    return (dom0.stored() == [] and not dom0.history.exists()
            and not [call for call in dom0.sim.calls if call[0] == "admin.backup.Execute"]
            and list(dom0.sim.profile_dir.iterdir()) == []
            and not dom0.sim.vms[CARRIER].running)


def test_a_dry_run_shows_what_the_backup_would_do_and_sends_nothing(
        dom0: Dom0, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_job(dom0, f"passphrase_file: {dom0.passfile}")
    assert dom0.run("backup", "--job", "daily", "--config", str(config), "--dry-run") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "dry run of daily: nothing sent, no history record"
    assert lines[1] == "  VMs: work 2.0 MiB, personal 1.0 MiB (total 3.0 MiB before compression)"
    assert lines[2] == "  compression: zstd"
    assert lines[3].startswith(f"  destination: {CARRIER}, as laptop/daily-")
    assert lines[4].startswith(f"  server: answers through {CARRIER}, ")
    assert lines[5] == f"  passphrase: file {dom0.passfile}, read"
    assert nothing_happened(dom0)
    assert [call[0] for call in dom0.sim.calls if call[0].startswith("admin.backup")] == \
        ["admin.backup.Info"]


def test_a_dry_run_asks_the_passphrase_vm_and_answers_in_json(
        dom0: Dom0, capsys: pytest.CaptureFixture[str]) -> None:
    dom0.sim.passphrase_vms["vault"] = "secret"
    config = write_job(dom0, "passphrase_vm: vault")
    assert dom0.run("backup", "--job", "daily", "--config", str(config), "--dry-run",
                    "--json") == 0
    result = json.loads(capsys.readouterr().out)
    assert result["dry_run"] is True and result["passphrase_vm"] == "vault"
    # Qubes shows sizes to a tenth of a unit: each estimate rounds up.
    assert [vm["name"] for vm in result["vms"]] == ["work", "personal"]
    for vm, size in zip(result["vms"], (2 * MIB, 1 * MIB), strict=True):
        assert size <= vm["size"] <= size * 1.05
    assert result["estimate"] >= 3 * MIB and result["available"] > result["estimate"]
    assert result["name"].startswith("laptop/daily-") and result["compression"] == "zstd"
    assert any("qubes.BackupPassphrase" in " ".join(call) for call in dom0.sim.calls)
    assert nothing_happened(dom0)


@pytest.mark.parametrize(("breakage", "code", "said"), [
    ("unsafe passphrase file", QbackupExit.USAGE, "is accessible by group/others"),
    ("missing VM", QbackupExit.QUBES, "the VM to back up personal does not exist"),
    ("server too small", QbackupExit.NO_SPACE, "but the backup may need"),
])
def test_a_dry_run_fails_as_the_backup_would_and_still_records_nothing(
        dom0: Dom0, breakage: str, code: QbackupExit, said: str) -> None:
    config = write_job(dom0, f"passphrase_file: {dom0.passfile}")
    if breakage == "unsafe passphrase file":
        dom0.passfile.chmod(0o644)
    elif breakage == "missing VM":
        dom0.sim.remove_vm("personal")
    else:
        dom0.sim.vms["work"].size = 1 << 50  # a PiB: no test server has that
    assert dom0.run("backup", "--job", "daily", "--config", str(config), "--dry-run") == code
    assert dom0.logged(said)
    assert not dom0.logged("outcome: FAILED")  # no failure reported as a backup's
    assert nothing_happened(dom0)


def test_a_dry_run_of_every_job_points_to_config_check(dom0: Dom0) -> None:
    assert dom0.run("backup", "--all", "--dry-run") == QbackupExit.USAGE
    assert dom0.logged("--dry-run checks one job: give --job NAME (qbackup config check checks"
                       " them all)")


def test_a_dry_run_of_a_broken_job_names_its_problems_before_asking_qubes(
        tmp_path: Path) -> None:
    config = tmp_path / "qbackup.yaml"
    config.write_text("jobs:\n  daily:\n    carrier: sys-backup\n    prefix: a\n"
                      "    prefix: b\n    passphrase_vm: vault\n")
    # No simulator given: outside dom0, asking Qubes would end in exit 3.
    assert main(["-o", "backup", "--dry-run", "--config", str(config), "--job", "daily"]) \
        == QbackupExit.USAGE
