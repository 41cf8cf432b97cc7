"""Two-phase uploads: `put NAME` stages, `commit NAME` publishes.

The threat: Qubes' backup engine aborts mid-backup, the carrier sees a clean
EOF on its stdin, completes the framed stream, and a truncated backup would be
stored under NAME forever (append-only). With two phases, a put only stages;
dom0 commits after Qubes reported success. Residual risk: an upload that is
never committed stays hidden (counted in the quota) until the age cleanup.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from pathlib import Path

import pytest

from qbackup_protocol import client
from testbed.client import get, pending, put, receipt, snapshot, stage, temporaries
from testbed.server import Account, BackupServer

DAY = 86400
EMPTY_LISTING = b'{"count":0,"end":true,"truncated":false}\n'


def age(path: Path, seconds: float) -> None:
    """Set PATH's mtime SECONDS into the past."""
    stamp = time.time() - seconds
    os.utime(path, (stamp, stamp), follow_symlinks=False)


def test_a_staged_upload_is_invisible_to_list_get_and_check(
    backup_server: BackupServer, account: Account
) -> None:
    assert stage(backup_server, account, "lap/b1", b"secret bytes").returncode == 0
    assert sorted(pending(account.storage)) == ["lap/.b1.pending", "lap/.b1.pending-sha256"]
    assert not (account.storage / "lap/b1").exists()
    for prefix in ("", " lap/", " lap/b"):
        result = backup_server.run(account, f"list{prefix}")
        assert (result.returncode, result.stdout) == (0, EMPTY_LISTING)
    for verb in ("get", "check"):
        result = backup_server.run(account, f"{verb} lap/b1")
        assert (result.returncode, result.stdout) == (66, b"")


def test_put_reply_is_the_record_of_the_staged_upload(
    backup_server: BackupServer, account: Account
) -> None:
    data = os.urandom(300_000)
    result = stage(backup_server, account, "s", data)
    assert result.returncode == 0, result.stderr
    record = receipt(result.stdout)
    assert (record.name, record.size, record.sha256) == ("s", len(data), sha256(data))
    assert record.mtime == int((account.storage / ".s.pending").stat().st_mtime)


def test_commit_publishes_byte_exact_with_the_digest_from_the_put(
    backup_server: BackupServer, account: Account
) -> None:
    data = os.urandom(2 * 1024 * 1024 + 3)
    staged = receipt(stage(backup_server, account, "a/b", data).stdout)
    result = backup_server.run(account, "commit a/b")
    assert result.returncode == 0, result.stderr
    assert client.parse_record(result.stdout) == staged
    assert (account.storage / "a/b").read_bytes() == data
    digest = bytes.fromhex(staged.sha256 or "")
    assert get(backup_server, account, "a/b") == (data, len(data), digest)
    assert pending(account.storage) == [] and temporaries(account.storage) == []
    listing = backup_server.run(account, "list").stdout.splitlines()
    assert client.parse_list_line(listing[0]) == staged


def test_commit_carries_the_put_digest_over_without_rehashing(
    backup_server: BackupServer, account: Account
) -> None:
    # Commit must not re-hash hundreds of GiB: it publishes the digest the put
    # verified. So bytes that rot between put and commit are published with
    # the ORIGINAL digest, and check/get expose the rot instead of hiding it.
    data = b"original bytes"
    staged = receipt(stage(backup_server, account, "rot", data).stdout)
    (account.storage / ".rot.pending").write_bytes(b"rotten!! bytes")  # same size
    result = backup_server.run(account, "commit rot")
    assert result.returncode == 0, result.stderr
    assert client.parse_record(result.stdout).sha256 == staged.sha256 == sha256(data)
    check = backup_server.run(account, "check rot")
    assert check.returncode == 65 and client.parse_check(check.stdout).ok is False


@pytest.mark.parametrize("name", ["never/made", "nothing", "a/missing"])
def test_commit_without_a_put_is_66_and_changes_nothing(
    backup_server: BackupServer, account: Account, name: str
) -> None:
    assert put(backup_server, account, "a/other", b"x").returncode == 0
    before = snapshot(account.storage)
    result = backup_server.run(account, f"commit {name}")
    assert result.returncode == 66
    assert result.stdout == b"" and result.stderr.startswith(b"qbackup-shell: nothing staged")
    assert snapshot(account.storage) == before


def test_commit_twice_the_second_finds_nothing_staged(
    backup_server: BackupServer, account: Account
) -> None:
    assert put(backup_server, account, "twice", b"once").returncode == 0
    before = snapshot(account.storage)
    result = backup_server.run(account, "commit twice")
    assert (result.returncode, result.stdout) == (66, b"")
    assert snapshot(account.storage) == before


def test_put_of_a_committed_name_is_73(backup_server: BackupServer, account: Account) -> None:
    assert put(backup_server, account, "kept", b"precious").returncode == 0
    before = snapshot(account.storage)
    result = stage(backup_server, account, "kept", b"replacement")
    assert result.returncode == 73
    assert snapshot(account.storage) == before


def test_put_of_a_staged_name_is_73_and_keeps_the_staged_upload(
    backup_server: BackupServer, account: Account
) -> None:
    assert stage(backup_server, account, "twin", b"first").returncode == 0
    before = snapshot(account.storage)
    result = stage(backup_server, account, "twin", b"second")
    assert result.returncode == 73 and b"already staged" in result.stderr
    assert snapshot(account.storage) == before
    assert backup_server.run(account, "commit twin").returncode == 0
    assert (account.storage / "twin").read_bytes() == b"first"


def test_commit_never_replaces_an_existing_backup_or_its_record(
    backup_server: BackupServer, account: Account
) -> None:
    # Only a commit creates NAME, and a put refuses a taken NAME: to test the
    # last guard, NAME appears behind the shell's back between put and commit.
    assert stage(backup_server, account, "clash", b"staged").returncode == 0
    for path, body in ((account.storage / "clash", b"existing"),
                       (account.storage / ".clash.sha256", b'{"size": 8, "sha256": "x"}\n')):
        path.write_bytes(body)
        os.chown(path, account.uid, account.gid)
    before = snapshot(account.storage)
    result = backup_server.run(account, "commit clash")
    assert (result.returncode, result.stdout) == (73, b"")
    assert snapshot(account.storage) == before


def test_commit_refuses_a_staged_upload_without_its_record(
    backup_server: BackupServer, account: Account
) -> None:
    # A put that crashed between staging the data and writing its record.
    assert stage(backup_server, account, "half", b"data").returncode == 0
    (account.storage / ".half.pending-sha256").unlink()
    before = snapshot(account.storage)
    result = backup_server.run(account, "commit half")
    assert (result.returncode, result.stdout) == (65, b"")
    assert snapshot(account.storage) == before


def test_commit_never_follows_a_symlink_at_the_pending_name(
    backup_server: BackupServer, account: Account, outside: Path
) -> None:
    # Threat: a planted `.NAME.pending` symlink publishing a file from outside
    # the storage. Residual risk: none, the pending data is opened O_NOFOLLOW.
    secret = (outside / "secret").read_bytes()
    link = account.storage / ".leak.pending"
    link.symlink_to(outside / "secret")
    record = account.storage / ".leak.pending-sha256"
    record.write_text(f'{{"size": {len(secret)}, "sha256": "{sha256(secret)}"}}\n')
    for path in (link, record):
        os.lchown(path, account.uid, account.gid)
    before = snapshot(account.storage)
    result = backup_server.run(account, "commit leak")
    assert (result.returncode, result.stdout) == (66, b"")
    assert snapshot(account.storage) == before


def test_concurrent_commits_of_one_name_exactly_one_wins(
    backup_server: BackupServer, account: Account
) -> None:
    data = os.urandom(100_000)
    assert stage(backup_server, account, "race/c", data).returncode == 0
    commits = [
        subprocess.Popen(
            [*backup_server.ssh_command(account), "commit race/c"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(4)
    ]
    outputs = [process.communicate(timeout=30)[0] for process in commits]
    assert sorted(process.returncode for process in commits) == [0, 66, 66, 66]
    assert sum(1 for output in outputs if output) == 1
    assert (account.storage / "race/c").read_bytes() == data
    assert pending(account.storage) == []


def test_a_stale_staged_upload_is_removed_by_the_next_put_in_the_account(
    backup_server: BackupServer, account: Account
) -> None:
    for name in ("d/stale", "d/fresh", "elsewhere/stale"):
        assert stage(backup_server, account, name, b"abandoned").returncode == 0
    for name in ("d/.stale.pending", "elsewhere/.stale.pending"):
        age(account.storage / name, DAY + 60)
    age(account.storage / "d/.fresh.pending", DAY - 600)
    assert put(backup_server, account, "d/next", b"n").returncode == 0
    # Anywhere in the account (a directory that never sees another put too).
    assert sorted(pending(account.storage)) == ["d/.fresh.pending", "d/.fresh.pending-sha256"]
    assert backup_server.run(account, "commit d/stale").returncode == 66
    assert backup_server.run(account, "commit d/fresh").returncode == 0


def test_a_stale_staged_upload_no_longer_blocks_its_name(
    backup_server: BackupServer, account: Account
) -> None:
    assert stage(backup_server, account, "again", b"abandoned").returncode == 0
    age(account.storage / ".again.pending", DAY + 60)
    assert put(backup_server, account, "again", b"retried").returncode == 0
    assert (account.storage / "again").read_bytes() == b"retried"


def test_pending_max_age_is_configurable(
    shell_config: BackupServer, account: Account
) -> None:
    shell_config.write_shell_config("[storage]\npending_max_age = 2h\n")
    for name in ("old", "young"):
        assert stage(shell_config, account, name, b"x").returncode == 0
    age(account.storage / ".old.pending", 3 * 3600)
    age(account.storage / ".young.pending", 3600)
    assert put(shell_config, account, "trigger", b"t").returncode == 0
    assert sorted(pending(account.storage)) == [".young.pending", ".young.pending-sha256"]


def test_staged_uploads_count_toward_the_quota(
    shell_config: BackupServer, account: Account
) -> None:
    shell_config.write_shell_config(f"[account {account.name}]\nquota = 3M\nreserve = 0\n")
    assert stage(shell_config, account, "big", os.urandom(2 * 1024 * 1024)).returncode == 0
    info = client.parse_info(shell_config.run(account, "info").stdout)
    assert info.used is not None and info.used >= 2 * 1024 * 1024
    before = snapshot(account.storage)
    assert stage(shell_config, account, "more", os.urandom(2 * 1024 * 1024)).returncode == 69
    assert snapshot(account.storage) == before


def test_commit_is_logged(backup_server: BackupServer, account: Account) -> None:
    assert put(backup_server, account, "logged/c", b"12345").returncode == 0
    lines = backup_server.syslog.wait_for(f"account={account.name} command=commit logged/c")
    assert lines and "outcome=ok bytes=5" in lines[0]
    assert backup_server.run(account, "commit logged/c").returncode == 66
    assert backup_server.syslog.wait_for("command=commit logged/c outcome=missing")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
