"""put/get/list/check/info through real OpenSSH into the real installed shell."""

from __future__ import annotations

import hashlib
import os

import pytest

from qbackup_protocol import client, wire
from testbed.client import get, put, snapshot, temporaries
from testbed.server import Account, BackupServer

FRAME = wire.DEFAULT_DATA_FRAME


@pytest.mark.parametrize(
    ("size", "chunk"),
    [
        (0, FRAME),
        (1, FRAME),
        (FRAME, FRAME),
        (2 * FRAME, FRAME),
        (3 * 1024 * 1024 + 7, 65536),
        (wire.MAX_DATA_FRAME * 2, wire.MAX_DATA_FRAME),
    ],
    ids=["empty", "one-byte", "one-frame", "two-frames", "small-frames", "max-frames"],
)
def test_put_then_get_is_byte_exact(
    backup_server: BackupServer, account: Account, size: int, chunk: int
) -> None:
    data = os.urandom(size)
    result = put(backup_server, account, "lap/2024/b1", data, chunk=chunk)
    assert result.returncode == 0, result.stderr
    record = client.parse_record(result.stdout)
    digest = hashlib.sha256(data).hexdigest()
    assert (record.name, record.size, record.sha256) == ("lap/2024/b1", size, digest)
    assert (account.storage / "lap/2024/b1").read_bytes() == data
    assert get(backup_server, account, "lap/2024/b1") == (data, size, bytes.fromhex(digest))
    assert temporaries(account.storage) == []


def test_put_accepts_one_byte_frames(backup_server: BackupServer, account: Account) -> None:
    # Up to 1024 frames may be of any size (after them the average must be
    # 4 KiB or more: test_streams.py, tiny frames).
    data = os.urandom(1000)
    assert put(backup_server, account, "tiny", data, chunk=1).returncode == 0
    assert get(backup_server, account, "tiny")[0] == data


def test_put_creates_private_directories_and_files(
    backup_server: BackupServer, account: Account
) -> None:
    assert put(backup_server, account, "a/b/c", b"x").returncode == 0
    for path in (account.storage / "a", account.storage / "a/b"):
        assert path.stat().st_mode & 0o777 == 0o700
    assert (account.storage / "a/b/c").stat().st_mode & 0o777 == 0o600
    assert (account.storage / "a/b/c").stat().st_uid == account.uid


def test_list_shows_records_sorted_then_end(backup_server: BackupServer, account: Account) -> None:
    payloads = {"z": b"1", "a/x": b"22", "a-b": b"333", "a/y/z": b""}
    for name, data in payloads.items():
        assert put(backup_server, account, name, data).returncode == 0
    result = backup_server.run(account, "list")
    assert result.returncode == 0, result.stderr
    lines = [client.parse_list_line(line) for line in result.stdout.splitlines()]
    assert lines[-1] == wire.ListEnd(count=4, truncated=False)
    records = lines[:-1]
    assert [r.name for r in records] == ["a/x", "a/y/z", "a-b", "z"]  # segment order
    for record in records:
        assert isinstance(record, wire.BackupRecord)
        assert record.size == len(payloads[record.name])
        assert record.sha256 == hashlib.sha256(payloads[record.name]).hexdigest()
        assert record.mtime is not None


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        ("a/", ["a/x", "a/y/z"]),
        ("a", ["a/x", "a/y/z", "a-b"]),
        ("a/y", ["a/y/z"]),
        ("q", []),
        ("q/r/", []),
    ],
)
def test_list_filters_by_prefix(
    backup_server: BackupServer, account: Account, prefix: str, expected: list[str]
) -> None:
    for name in ("a/x", "a/y/z", "a-b", "z"):
        assert put(backup_server, account, name, b"d").returncode == 0
    result = backup_server.run(account, f"list {prefix}")
    assert result.returncode == 0, result.stderr
    lines = [client.parse_list_line(line) for line in result.stdout.splitlines()]
    assert [line.name for line in lines[:-1]] == expected  # type: ignore[union-attr]
    assert lines[-1] == wire.ListEnd(count=len(expected), truncated=False)


def test_list_of_empty_storage_is_just_the_end(
    backup_server: BackupServer, account: Account
) -> None:
    result = backup_server.run(account, "list")
    assert (result.returncode, result.stdout) == (0, b'{"count":0,"end":true,"truncated":false}\n')


def test_check_reports_ok_for_an_intact_backup(
    backup_server: BackupServer, account: Account
) -> None:
    data = os.urandom(100_000)
    assert put(backup_server, account, "c", data).returncode == 0
    result = backup_server.run(account, "check c")
    assert result.returncode == 0, result.stderr
    check = client.parse_check(result.stdout)
    assert check.ok and check.record.sha256 == hashlib.sha256(data).hexdigest()


def test_check_fails_for_a_corrupted_backup(backup_server: BackupServer, account: Account) -> None:
    assert put(backup_server, account, "c", b"original data").returncode == 0
    (account.storage / "c").write_bytes(b"bit-rotted data")  # same size, different bytes
    before = snapshot(account.storage)
    result = backup_server.run(account, "check c")
    assert result.returncode == 65
    assert client.parse_check(result.stdout).ok is False
    assert snapshot(account.storage) == before


def test_get_refuses_a_backup_whose_size_changed(
    backup_server: BackupServer, account: Account
) -> None:
    assert put(backup_server, account, "g", b"0123456789").returncode == 0
    (account.storage / "g").write_bytes(b"01234")
    result = backup_server.run(account, "get g")
    assert result.returncode == 65
    assert wire.FRAME_END not in result.stdout[:1]  # no E frame vouching for wrong data


@pytest.mark.parametrize("verb", ["get", "check"])
def test_missing_backup_is_66(backup_server: BackupServer, account: Account, verb: str) -> None:
    result = backup_server.run(account, f"{verb} nothing/here")
    assert result.returncode == 66
    assert result.stderr.count(b"\n") == 1 and result.stderr.startswith(b"qbackup-shell: ")


def test_info_reports_space(backup_server: BackupServer, account: Account) -> None:
    result = backup_server.run(account, "info")
    assert result.returncode == 0, result.stderr
    info = client.parse_info(result.stdout)
    assert info.protocol == wire.PROTOCOL_VERSION
    assert info.reserve == 1024**3 and info.quota is None and info.used is None
    assert info.available == max(0, info.free - info.reserve)
