"""The disk guard: a full disk, the reserve and the quota. Failures are clean:
exit 69, older backups intact, no temporary left, the new name absent."""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import qbackup_protocol as protocol
from tests.harness.server import Account, BackupServer
from tests.server_shell.client import put, snapshot, temporaries

MIB = 1024 * 1024


@pytest.fixture
def small_disk(shell_config: BackupServer) -> Iterator[Account]:
    """An account whose home (= storage) is a 64 MiB tmpfs."""
    home = Path(tempfile.mkdtemp(prefix="tmpfs-home-", dir=shell_config.base))
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64m,mode=0700", "tmpfs", str(home)], check=True
    )
    try:
        yield shell_config.add_account(home=home)
    finally:
        subprocess.run(["umount", "-l", str(home)], check=False)


def test_full_disk_fails_cleanly_and_keeps_older_backups(
    shell_config: BackupServer, small_disk: Account
) -> None:
    shell_config.write_shell_config(f"[account {small_disk.name}]\nreserve = 0\n")
    older = os.urandom(16 * MIB)
    assert put(shell_config, small_disk, "older", older).returncode == 0
    before = snapshot(small_disk.storage)
    result = put(shell_config, small_disk, "too-big", os.urandom(60 * MIB))
    assert result.returncode == 69, result.stderr
    assert result.stderr.startswith(b"qbackup-shell: ") and result.stderr.count(b"\n") == 1
    assert snapshot(small_disk.storage) == before
    assert (small_disk.storage / "older").read_bytes() == older
    assert temporaries(small_disk.storage) == []
    check = shell_config.run(small_disk, "check older")
    assert check.returncode == 0 and protocol.parse_check(check.stdout).ok


def test_put_aborts_before_free_space_crosses_the_reserve(
    shell_config: BackupServer, small_disk: Account
) -> None:
    reserve = 40 * MIB
    shell_config.write_shell_config(f"[account {small_disk.name}]\nreserve = 40M\n")
    assert put(shell_config, small_disk, "fits", os.urandom(8 * MIB)).returncode == 0
    before = snapshot(small_disk.storage)
    result = put(shell_config, small_disk, "crosses", os.urandom(24 * MIB))
    assert result.returncode == 69, result.stderr
    assert b"reserve" in result.stderr
    assert snapshot(small_disk.storage) == before
    assert (
        os.statvfs(small_disk.storage).f_bavail * os.statvfs(small_disk.storage).f_frsize >= reserve
    )
    info = protocol.parse_info(shell_config.run(small_disk, "info").stdout)
    assert info.reserve == reserve and info.available == max(0, info.free - reserve)


def test_put_is_refused_up_front_below_the_reserve(
    shell_config: BackupServer, account: Account
) -> None:
    shell_config.write_shell_config(f"[account {account.name}]\nreserve = 1000000T\n")
    before = snapshot(account.storage)
    result = put(shell_config, account, "anything", b"small")
    assert result.returncode == 69, result.stderr
    assert snapshot(account.storage) == before
    info = protocol.parse_info(shell_config.run(account, "info").stdout)
    assert info.available == 0


def test_quota_refuses_what_would_exceed_it(shell_config: BackupServer, account: Account) -> None:
    shell_config.write_shell_config(f"[account {account.name}]\nquota = 1M\n")
    assert put(shell_config, account, "first", os.urandom(600 * 1024)).returncode == 0
    before = snapshot(account.storage)
    result = put(shell_config, account, "second", os.urandom(600 * 1024))
    assert result.returncode == 69, result.stderr
    assert b"quota" in result.stderr
    assert snapshot(account.storage) == before
    info = protocol.parse_info(shell_config.run(account, "info").stdout)
    assert info.quota == MIB and info.used is not None and info.used >= 600 * 1024
    assert info.available <= MIB - 600 * 1024


def test_other_accounts_keep_the_default_reserve(
    shell_config: BackupServer, account: Account
) -> None:
    shell_config.write_shell_config("[account somebody-else]\nreserve = 1000000T\n")
    assert put(shell_config, account, "fine", b"x").returncode == 0


def test_bad_config_is_78_and_writes_nothing(shell_config: BackupServer, account: Account) -> None:
    shell_config.write_shell_config("[storage]\nreserve = plenty\n")
    before = snapshot(account.storage)
    result = put(shell_config, account, "x", b"x")
    assert result.returncode == 78
    assert result.stderr.startswith(b"qbackup-shell: ") and result.stderr.count(b"\n") == 1
    assert snapshot(account.storage) == before


def test_configured_root_is_used_and_must_belong_to_the_account(
    shell_config: BackupServer, account: Account
) -> None:
    elsewhere = Path(tempfile.mkdtemp(prefix="root-", dir=shell_config.base))
    shell_config.write_shell_config(f"[storage]\nroot = {elsewhere}/{{account}}\n")
    (elsewhere / account.name).mkdir(mode=0o700)
    # Owned by root, not by the account: refused as a configuration error.
    assert put(shell_config, account, "x", b"x").returncode == 78
    assert snapshot(elsewhere) == {account.name: ("dir", "")}
    os.chown(elsewhere / account.name, account.uid, account.gid)
    os.chmod(elsewhere, 0o755)
    assert put(shell_config, account, "x", b"x").returncode == 0
    assert (elsewhere / account.name / "x").read_bytes() == b"x"
