"""Strict parsing of the shell's replies (qbackup_protocol/client.py), as
the carrier and dom0 read them: each reply parses back to the record the
shell encoded, and anything else is a ProtocolError."""

from __future__ import annotations

import json

import pytest

from qbackup_protocol import client, wire

RECORD = {"name": "a/b", "size": 5, "sha256": "0" * 64, "mtime": 1}


def _line(value: object) -> bytes:
    return json.dumps(value).encode() + b"\n"


@pytest.mark.parametrize(
    ("verb", "argument", "expected"),
    [
        ("put", "a/b", "put a/b"),
        ("commit", "a/b", "commit a/b"),
        ("list", None, "list"),
        ("list", "a/", "list a/"),
        ("info", None, "info"),
    ],
)
def test_build_command_makes_single_space_commands(
    verb: str, argument: str | None, expected: str
) -> None:
    assert client.build_command(verb, argument) == expected


@pytest.mark.parametrize(
    ("verb", "argument"),
    [
        ("put", None),
        ("put", "../x"),
        ("commit", None),  # commit always names the one staged upload it publishes
        ("commit", ".a.pending"),  # staged uploads are dot-files: never nameable
        ("info", "x"),
        ("rm", "x"),
        ("prune", None),
        ("get", "a b"),
    ],
)
def test_build_command_refuses_invalid_commands(verb: str, argument: str | None) -> None:
    with pytest.raises(ValueError):
        client.build_command(verb, argument)


def test_parse_record_accepts_a_well_formed_record() -> None:
    record = client.parse_record(wire.encode_reply(RECORD))
    assert record == wire.BackupRecord(name="a/b", size=5, sha256="0" * 64, mtime=1)
    assert client.parse_record(wire.encode_reply(record.to_reply())) == record


@pytest.mark.parametrize(
    "line",
    [
        _line({**RECORD, "name": "../etc"}),
        _line({**RECORD, "name": "a\x1b[2J"}),
        _line({**RECORD, "size": -1}),
        _line({**RECORD, "size": True}),
        _line({**RECORD, "size": "5"}),
        _line({**RECORD, "sha256": "A" * 64}),
        _line({**RECORD, "sha256": "0" * 63}),
        _line({**RECORD, "extra": 1}),
        _line([RECORD]),
        b"\xff\xfe garbage\n",
        b"{" + b" " * wire.MAX_REPLY_LINE + b"}",
    ],
)
def test_parse_record_refuses_hostile_lines(line: bytes) -> None:
    with pytest.raises(wire.ProtocolError):
        client.parse_record(line)


def test_parse_list_line_tells_records_from_the_summary() -> None:
    assert isinstance(client.parse_list_line(wire.encode_reply(RECORD)), wire.BackupRecord)
    summary = wire.ListEnd(count=1, truncated=False).to_reply()
    end = client.parse_list_line(wire.encode_reply(summary))
    assert end == wire.ListEnd(count=1, truncated=False)
    with pytest.raises(wire.ProtocolError):
        client.parse_list_line(_line({"end": True, "count": 1, "truncated": "no"}))


def test_parse_info_and_check_round_trip() -> None:
    info = wire.ServerInfo(protocol=1, free=10, reserve=2, available=8, quota=None, used=None)
    assert client.parse_info(wire.encode_reply(info.to_reply())) == info
    check = wire.CheckResult(record=wire.BackupRecord("a", 1, "f" * 64, 2), ok=False)
    assert client.parse_check(wire.encode_reply(check.to_reply())) == check
    with pytest.raises(wire.ProtocolError):
        client.parse_check(wire.encode_reply(RECORD))  # no "ok"


# A receipt is the server's word that it stored a backup: the carrier (from
# the server) and dom0 (from the carrier) accept it only by this one rule.
RECEIPT = {"name": "laptop/daily", "size": 3, "sha256": "a" * 64, "mtime": 1}


def test_parse_receipt_accepts_one_line_for_the_name() -> None:
    record = client.parse_receipt(json.dumps(RECEIPT).encode() + b"\n", "laptop/daily")
    assert (record.name, record.size, record.sha256) == ("laptop/daily", 3, "a" * 64)


@pytest.mark.parametrize("output", [
    json.dumps({**RECEIPT, "name": "laptop/other"}).encode() + b"\n",  # another backup's
    json.dumps({k: v for k, v in RECEIPT.items() if k != "sha256"}).encode() + b"\n",
    json.dumps(RECEIPT).encode(),  # no newline: cut short
    (json.dumps(RECEIPT).encode() + b"\n") * 2,  # two receipts
    b"\n",
])
def test_parse_receipt_refuses_anything_else(output: bytes) -> None:
    with pytest.raises(wire.ProtocolError):
        client.parse_receipt(output, "laptop/daily")
