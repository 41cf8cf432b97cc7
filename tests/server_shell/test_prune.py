"""The local admin's prune: really removes (data + record), never over SSH,
drops root privileges to the storage owner, never follows symlinks."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.harness.server import Account, BackupServer
from tests.server_shell.client import put, snapshot

DAY = 86400


def run_prune(
    server: BackupServer, *arguments: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    """Run the installed shell's prune locally, as root (like root's cron)."""
    return subprocess.run(
        [str(server.shell_path), "prune", *arguments],
        capture_output=True,
        timeout=30,
        check=False,
        env=env if env is not None else {"PATH": "/usr/bin:/bin"},
    )


@pytest.fixture
def aged(backup_server: BackupServer, account: Account) -> Account:
    """Five backups one day apart (b0 oldest), plus one under another prefix."""
    now = time.time()
    for index in range(5):
        assert put(backup_server, account, f"lap/b{index}", f"{index}".encode()).returncode == 0
        stamp = now - (4 - index) * DAY
        os.utime(account.storage / f"lap/b{index}", (stamp, stamp))
    assert put(backup_server, account, "other/x", b"x").returncode == 0
    return account


def test_prune_keeps_the_newest_and_removes_data_and_records(
    backup_server: BackupServer, aged: Account
) -> None:
    result = run_prune(
        backup_server, "--account", aged.name, "--keep-last", "2", "--prefix", "lap/"
    )
    assert result.returncode == 0, result.stderr
    assert b"removed lap/b0" in result.stdout and b"keep lap/b4" in result.stdout
    remaining = snapshot(aged.storage)
    for index in (0, 1, 2):
        assert f"lap/b{index}" not in remaining and f"lap/.b{index}.sha256" not in remaining
    for name in ("lap/b3", "lap/b4", "lap/.b4.sha256", "other/x"):
        assert name in remaining


def test_prune_dry_run_changes_nothing(backup_server: BackupServer, aged: Account) -> None:
    before = snapshot(aged.storage)
    result = run_prune(backup_server, "--account", aged.name, "--keep-daily", "1", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert b"would remove lap/b0" in result.stdout
    assert snapshot(aged.storage) == before


def test_prune_with_ssh_environment_is_refused(backup_server: BackupServer, aged: Account) -> None:
    before = snapshot(aged.storage)
    env = {"PATH": "/usr/bin:/bin", "SSH_CONNECTION": "10.0.0.1 4444 10.0.0.2 22"}
    result = run_prune(backup_server, "--account", aged.name, "--keep-last", "1", env=env)
    assert result.returncode == 77
    assert snapshot(aged.storage) == before


def test_prune_as_root_needs_an_account_or_root(backup_server: BackupServer, aged: Account) -> None:
    before = snapshot(aged.storage)
    assert run_prune(backup_server, "--keep-last", "1").returncode == 77
    assert snapshot(aged.storage) == before


def test_prune_without_keep_rules_is_refused(backup_server: BackupServer, aged: Account) -> None:
    before = snapshot(aged.storage)
    assert run_prune(backup_server, "--account", aged.name).returncode == 64
    assert snapshot(aged.storage) == before


def test_prune_runs_with_the_owners_rights_and_ignores_symlinks(
    backup_server: BackupServer, aged: Account, outside: Path
) -> None:
    # A symlink to a root-owned directory full of "backups": prune must
    # neither follow it nor, as root, be able to delete there.
    victim = outside / "victim"
    victim.mkdir()
    (victim / "old").write_bytes(b"root's file")
    old = time.time() - 100 * DAY
    os.utime(victim / "old", (old, old))
    (aged.storage / "lap/link").symlink_to(victim)
    before_outside = snapshot(outside)
    result = run_prune(backup_server, "--root", str(aged.storage), "--keep-last", "1")
    assert result.returncode == 0, result.stderr
    assert snapshot(outside) == before_outside
    assert (aged.storage / "lap/link").is_symlink()


def test_prune_drops_root_privileges_to_the_storage_owner(
    backup_server: BackupServer, aged: Account
) -> None:
    # A root-owned 0700 directory inside the storage: only root could enter
    # it, so if prune kept root's rights it would prune the old file in there.
    private = aged.storage / "lap/rootonly"
    private.mkdir(mode=0o700)
    (private / "ancient").write_bytes(b"root")
    old = time.time() - 100 * DAY
    os.utime(private / "ancient", (old, old))
    result = run_prune(backup_server, "--account", aged.name, "--keep-last", "1")
    assert result.returncode == 0, result.stderr
    assert (private / "ancient").exists()
    assert b"rootonly" not in result.stdout


def test_prune_removes_stale_temporaries_but_not_fresh_ones(
    backup_server: BackupServer, aged: Account
) -> None:
    stale, fresh = aged.storage / "lap/.tmp-00000000deadbeef", aged.storage / "other/.tmp-1111"
    for path in (stale, fresh):
        path.write_bytes(b"partial upload")
        os.chown(path, aged.uid, aged.gid)
    old = time.time() - 3600
    os.utime(stale, (old, old))
    result = run_prune(backup_server, "--account", aged.name, "--keep-last", "10")
    assert result.returncode == 0, result.stderr
    assert not stale.exists() and fresh.exists()
    dry = run_prune(backup_server, "--account", aged.name, "--keep-last", "10", "--dry-run")
    assert dry.returncode == 0 and fresh.exists()
