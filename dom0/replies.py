"""Strict parsers for the JSON lines the carrier relays from the server.

dom0 cannot import the carrier's protocol module (another machine, another
trust level), so it restates the reply rules here and refuses anything else:
exact key sets, ASCII only, bounded line length, bounded entry count, names
that obey the server's rules, digests of 64 lowercase hex digits.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from dom0.errors import CarrierError
from dom0.names import is_valid_name

MAX_LINE = 4096
MAX_ENTRIES = 100_000
# The largest listing dom0 reads: MAX_ENTRIES short lines; a longer answer is
# refused rather than buffered (the adapter stops reading at this bound).
MAX_LISTING_BYTES = 32 * 1024 * 1024
MAX_SHORT_REPLY = 64 * 1024
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
RECORD_KEYS = frozenset({"name", "size", "sha256", "mtime"})
INFO_KEYS = frozenset({"protocol", "free", "reserve", "available", "quota", "used"})
LIST_END_KEYS = frozenset({"end", "count", "truncated"})


class ReplyError(CarrierError):
    """A reply from the carrier breaks the rules (never echoes the reply)."""


@dataclass(frozen=True)
class Record:
    """A stored backup as the server describes it."""

    name: str
    size: int
    sha256: str | None
    mtime: int | None


@dataclass(frozen=True)
class ServerInfo:
    """Space on the server, in bytes; quota/used are None without a quota."""

    protocol: int
    free: int
    reserve: int
    available: int
    quota: int | None
    used: int | None


@dataclass(frozen=True)
class Listing:
    """All records of a listing and whether the server cut it short."""

    records: list[Record]
    truncated: bool


def load_line(line: bytes) -> dict[str, Any]:
    """Given one raw line, return its JSON object; raise ReplyError if it is
    too long, not ASCII, not JSON or not an object."""
    if len(line) > MAX_LINE:
        raise ReplyError("the carrier sent an over-long reply line")
    try:
        value = json.loads(line.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise ReplyError("the carrier sent a reply that is not a JSON line") from None
    if not isinstance(value, dict):
        raise ReplyError("the carrier sent a reply that is not a JSON object")
    return value


def _count(value: Any, what: str) -> int:
    # bool is an int in Python: refuse it, and anything negative or absurd.
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**63:
        raise ReplyError(f"the carrier sent a bad {what}")
    return value


def _optional_count(value: Any, what: str) -> int | None:
    return None if value is None else _count(value, what)


def record_from(value: dict[str, Any]) -> Record:
    """Given a decoded reply object, return a Record; raise ReplyError unless
    it has exactly the record keys, each well-formed."""
    if set(value) != RECORD_KEYS:
        raise ReplyError("the carrier sent a record with unexpected fields")
    if not is_valid_name(value["name"]):
        raise ReplyError("the carrier sent an invalid backup name")
    digest = value["sha256"]
    if digest is not None and not (isinstance(digest, str) and SHA256_HEX.fullmatch(digest)):
        raise ReplyError("the carrier sent a malformed digest")
    return Record(
        name=value["name"],
        size=_count(value["size"], "size"),
        sha256=digest,
        mtime=_optional_count(value["mtime"], "mtime"),
    )


def single_line(data: bytes) -> bytes:
    """Given a reply that must be one line, return it without its newline."""
    if len(data) > MAX_LINE + 1 or not data.endswith(b"\n") or data.count(b"\n") != 1:
        raise ReplyError("the carrier's reply is not exactly one line")
    return data[:-1]


def parse_receipt(data: bytes) -> Record:
    """Given the stdout of `qbackup-carrier put`, return the committed Record."""
    record = record_from(load_line(single_line(data)))
    if record.sha256 is None:
        raise ReplyError("the carrier's receipt lacks a digest")
    return record


def parse_info(data: bytes) -> ServerInfo:
    """Given the stdout of `info`, return ServerInfo; raise ReplyError otherwise."""
    value = load_line(single_line(data))
    if set(value) != INFO_KEYS:
        raise ReplyError("the carrier's info reply has unexpected fields")
    return ServerInfo(
        protocol=_count(value["protocol"], "protocol"),
        free=_count(value["free"], "free space"),
        reserve=_count(value["reserve"], "reserve"),
        available=_count(value["available"], "available space"),
        quota=_optional_count(value["quota"], "quota"),
        used=_optional_count(value["used"], "used space"),
    )


def parse_check(data: bytes) -> tuple[Record, bool]:
    """Given the stdout of `check NAME`, return (record, digest matched)."""
    value = load_line(single_line(data))
    ok = value.pop("ok", None)
    if not isinstance(ok, bool):
        raise ReplyError("the carrier's check reply lacks a boolean 'ok'")
    return record_from(value), ok


def parse_listing(data: bytes) -> Listing:
    """Given the stdout of `list`, return a Listing; raise ReplyError unless it
    is records then one summary line whose count matches, all within bounds."""
    if len(data) > MAX_LISTING_BYTES:
        raise ReplyError("the carrier's listing is larger than any real one")
    if not data.endswith(b"\n"):
        raise ReplyError("the carrier's listing is truncated")
    lines = data[:-1].split(b"\n")
    if len(lines) > MAX_ENTRIES + 1:
        raise ReplyError("the carrier's listing has too many entries")
    records = [record_from(load_line(line)) for line in lines[:-1]]
    summary = load_line(lines[-1])
    if set(summary) != LIST_END_KEYS or summary["end"] is not True:
        raise ReplyError("the carrier's listing lacks its summary line")
    if not isinstance(summary["truncated"], bool) or _count(summary["count"], "count") != len(
        records
    ):
        raise ReplyError("the carrier's listing summary does not match its entries")
    if len({record.name for record in records}) != len(records):
        raise ReplyError("the carrier's listing names a backup twice")
    return Listing(records=records, truncated=summary["truncated"])
