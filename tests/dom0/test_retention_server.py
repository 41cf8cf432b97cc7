"""Retention that does not look like an attack: the server's admin prunes
with the job's policy (the same rule, qbackup_protocol.names.prunable), and dom0's
`status --remote` and the next backup stay clean and say what went by policy;
a deletion beyond the policy is still caught.

Simulated Qubes, REAL carrier, real sshd and shell; the admin's prune is done
here as the server's admin tool does it (the rule's files and their digest
records), so the test does not depend on that tool."""

from __future__ import annotations

from pathlib import Path

import pytest

from dom0.errors import QbackupExit
from qbackup_protocol.names import RetentionPolicy, prunable
from tests.dom0.conftest import CARRIER, Dom0


def admin_prune(storage: Path, names: list[str], policy: RetentionPolicy) -> list[str]:
    """Remove what POLICY lets a prune remove, as the server's admin would:
    each backup and its digest record. Return the removed names."""
    removed = prunable(names, policy)
    for name in removed:
        delete(storage, name)
    return removed


def delete(storage: Path, name: str) -> None:
    path = storage / name
    path.unlink()
    (path.parent / f".{path.name}.sha256").unlink()


@pytest.fixture
def daily(dom0: Dom0) -> Path:
    dom0.sim.vms["work"].size = 32 * 1024
    path = dom0.passfile.parent / "qbackup.yaml"
    path.write_text(f"jobs:\n  daily:\n    carrier: {CARRIER}\n    prefix: laptop/daily\n"
                    f"    passphrase_file: {dom0.passfile}\n    vms: [work]\n"
                    "    keep: {daily: 1}\n")
    return path


def test_a_prune_by_the_policy_is_clean_and_reported_as_such(
        dom0: Dom0, daily: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for _ in range(3):
        assert dom0.run("backup", "--job", "daily", "--config", str(daily)) == 0
    names = dom0.stored()
    assert len(names) == 3
    removed = admin_prune(dom0.account.storage, names, RetentionPolicy(daily=1))
    assert removed == names[:2]  # all three from today: only the newest stays
    capsys.readouterr()
    assert dom0.run("status", "--remote", "--config", str(daily)) == 0
    out = capsys.readouterr().out
    assert "daily: 2 backup(s) removed by the retention policy (daily 1)" in out
    assert "TAMPERING" not in out
    assert dom0.run("backup", "--job", "daily", "--config", str(daily)) == 0
    assert dom0.logged("2 earlier backup(s) removed by the retention policy, as it allows")
    assert not dom0.logged("TAMPERING")


def test_a_deletion_beyond_the_policy_is_still_caught(dom0: Dom0, daily: Path) -> None:
    for _ in range(2):
        assert dom0.run("backup", "--job", "daily", "--config", str(daily)) == 0
    older, newest = dom0.stored()
    delete(dom0.account.storage, newest)  # the one the policy keeps
    assert dom0.run("status", "--remote", "--config", str(daily)) == QbackupExit.VERIFY
    assert dom0.logged(f"TAMPERING? {newest}: vanished from the server, but the retention"
                       " policy (daily 1) keeps it")
    assert not dom0.logged(f"TAMPERING? {older}")  # older: the policy lets it go
    assert dom0.run("backup", "--job", "daily", "--config", str(daily)) == QbackupExit.VERIFY


def test_without_a_policy_every_disappearance_is_tampering(dom0: Dom0, daily: Path) -> None:
    daily.write_text(daily.read_text().replace("    keep: {daily: 1}\n", ""))
    for _ in range(2):
        assert dom0.run("backup", "--job", "daily", "--config", str(daily)) == 0
    older, _ = dom0.stored()
    delete(dom0.account.storage, older)
    assert dom0.run("status", "--remote", "--config", str(daily)) == QbackupExit.VERIFY
    assert dom0.logged(f"TAMPERING? {older}: vanished from the server (the job has no"
                       " retention policy that allows a prune)")
