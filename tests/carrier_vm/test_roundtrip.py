"""put -> commit -> list -> check -> get round trips against the real sshd and the real shell."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from qbackup_protocol.carrier_service import CarrierExit
from qbackup_protocol.wire import DEFAULT_DATA_FRAME, PROTOCOL_VERSION
from tests.carrier_vm.conftest import INTERPRETERS, Carrier, failed_exit, receipt_of


@pytest.mark.parametrize(
    "size",
    [0, 1, DEFAULT_DATA_FRAME, 2 * DEFAULT_DATA_FRAME, 3 * DEFAULT_DATA_FRAME + 17],
    ids=["empty", "one-byte", "one-frame", "two-frames", "three-frames-and-17"],
)
def test_put_list_check_get_round_trip_is_byte_exact(carrier: Carrier, size: int) -> None:
    data = os.urandom(size)
    digest = hashlib.sha256(data).hexdigest()

    put = carrier.run("put", "--commit", "laptop/2026-01-01T00-00", data=data)
    assert put.returncode == 0, put.stderr
    receipt = receipt_of(put.stdout)
    assert (receipt["name"], receipt["size"], receipt["sha256"]) == (
        "laptop/2026-01-01T00-00",
        size,
        digest,
    )

    listing = carrier.run("list", "laptop/")
    assert listing.returncode == 0, listing.stderr
    lines = [json.loads(line) for line in listing.stdout.splitlines()]
    assert lines[0]["name"] == "laptop/2026-01-01T00-00" and lines[0]["sha256"] == digest
    assert lines[-1] == {"end": True, "count": 1, "truncated": False}

    check = carrier.run("check", "laptop/2026-01-01T00-00")
    assert check.returncode == 0, check.stderr
    assert json.loads(check.stdout)["ok"] is True

    first = carrier.run("get", "laptop/2026-01-01T00-00")
    second = carrier.run("get", "laptop/2026-01-01T00-00")
    assert first.returncode == second.returncode == 0, first.stderr + second.stderr
    assert first.stdout == data
    assert second.stdout == data  # Qubes' restore reads a backup twice


@pytest.mark.parametrize("interpreter", sorted(INTERPRETERS))
def test_round_trip_works_with_debian_and_current_asyncssh(
    carrier: Carrier, interpreter: str
) -> None:
    carrier.argv0 = INTERPRETERS[interpreter]
    data = os.urandom(DEFAULT_DATA_FRAME + 12345)
    put = carrier.run("put", "--commit", "b1", data=data)
    assert put.returncode == 0, put.stderr
    assert put.stderr == b""  # no warnings leak to the stderr dom0 reads
    got = carrier.run("get", "b1")
    assert got.returncode == 0 and got.stdout == data, got.stderr
    info = carrier.run("info")
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["protocol"] == PROTOCOL_VERSION


def test_put_refuses_an_existing_name_and_keeps_the_first(carrier: Carrier) -> None:
    assert carrier.run("put", "--commit", "same", data=b"first").returncode == 0
    again = carrier.run("put", "same", data=b"second")
    assert again.returncode == CarrierExit.EXISTS
    assert failed_exit(again.stdout) == again.returncode
    assert carrier.run("get", "same").stdout == b"first"


def test_get_of_a_missing_backup_exits_66(carrier: Carrier) -> None:
    result = carrier.run("get", "not-there")
    assert result.returncode == 66
    assert result.stdout == b""


@pytest.mark.offline  # reaches no sshd: needs no account
@pytest.mark.parametrize(
    "args",
    [
        ("put", "../escape"),
        ("put", ".hidden"),
        ("put", "a b"),
        ("put", "--commit"),
        ("put", "--commit", "../x"),
        ("put", "--now", "x"),
        ("put", "x", "--commit"),
        ("commit",),
        ("commit", "a/../b"),
        ("commit", "a", "b"),
        ("get", "/abs"),
        ("check",),
        ("list", "a", "b"),
        ("info", "extra"),
        ("frobnicate",),
        (),
    ],
)
def test_bad_command_lines_exit_64_without_contacting_the_server(
    carrier: Carrier, args: tuple[str, ...]
) -> None:
    carrier.write_config(port=1)  # nothing listens there: contact would give 75
    result = carrier.run(*args, data=b"payload")
    assert result.returncode == 64
    assert result.stdout == b""


def test_rate_limit_paces_the_upload(carrier: Carrier) -> None:
    import time

    carrier.write_config(rate_limit=128 * 1024)
    data = os.urandom(384 * 1024)
    started = time.monotonic()
    put = carrier.run("put", "--commit", "slow", data=data)
    elapsed = time.monotonic() - started
    assert put.returncode == 0, put.stderr
    assert elapsed >= 2.0, elapsed  # 384 KiB at 128 KiB/s: about 3 s
    assert carrier.run("get", "slow").stdout == data


def test_check_of_a_corrupted_backup_passes_the_record_on_and_exits_corrupted(
    carrier: Carrier,
) -> None:
    # The drift bug: the shell prints the record with ok false AND exits
    # DATA; the carrier must relay that record and report CORRUPTED, not a
    # transit error.
    data = os.urandom(100_000)
    assert carrier.run("put", "--commit", "rotten", data=data).returncode == 0
    stored = carrier.account.storage / "rotten"
    with open(stored, "r+b") as handle:
        handle.seek(50_000)
        handle.write(bytes([data[50_000] ^ 0xFF]))

    result = carrier.run("check", "rotten")

    assert result.returncode == CarrierExit.CORRUPTED, result.stderr
    reply = json.loads(result.stdout)
    assert reply["ok"] is False
    assert reply["name"] == "rotten" and reply["size"] == len(data)
    assert reply["sha256"] == hashlib.sha256(data).hexdigest()  # the record, not the damage
    assert b"differs from its digest record" in result.stderr
