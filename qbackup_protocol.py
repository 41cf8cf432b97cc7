"""The carrier <-> server-shell wire protocol: the ONE definition both sides import.

Pure data and pure functions, standard library only, no I/O: verbs, name
rules, frames, reply records and the exit codes that cross a machine
boundary. docs/PROTOCOL.md describes the protocol in prose (version 3: one
command per SSH session; put stages, commit publishes; framed binary
streams with an end frame carrying length and SHA-256; JSON reply lines;
acks, resume and ranged get for interrupted transfers); tests check the two
agree.
"""

from __future__ import annotations

import enum
import json
import re
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

PROTOCOL_VERSION = 3  # 2: put stages, commit publishes; 3: acks, resume, get OFFSET

# --- commands ---------------------------------------------------------------
VERB_PUT = "put"
VERB_COMMIT = "commit"
VERB_GET = "get"
VERB_LIST = "list"
VERB_CHECK = "check"
VERB_INFO = "info"
# Protocol 3 (resumable uploads): continue an interrupted put of the same NAME.
VERB_RESUME = "resume"
# Verbs that take exactly one NAME (get: and an optional OFFSET), that take an
# optional PREFIX, that take nothing.
VERBS_WITH_NAME = frozenset({VERB_PUT, VERB_RESUME, VERB_COMMIT, VERB_GET, VERB_CHECK})
VERBS_WITH_OPTIONAL_PREFIX = frozenset({VERB_LIST})
VERBS_WITHOUT_ARGUMENT = frozenset({VERB_INFO})
ALL_VERBS = VERBS_WITH_NAME | VERBS_WITH_OPTIONAL_PREFIX | VERBS_WITHOUT_ARGUMENT
MAX_COMMAND_LENGTH = 512

# --- names ------------------------------------------------------------------
# A name is a relative path of '/'-separated segments. Each segment uses only
# [A-Za-z0-9._-] and never starts with '.', which rules out '.', '..' and
# hidden files: every dot-file in the storage belongs to the shell itself
# (temporaries, digest records, staged uploads), so no client name can ever collide with one.
SEGMENT_PATTERN = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
MAX_NAME_LENGTH = 200
MAX_SEGMENT_LENGTH = 100
MAX_NAME_DEPTH = 8

# --- binary framing ---------------------------------------------------------
FRAME_DATA = b"D"
FRAME_END = b"E"
FRAME_HEADER = struct.Struct(">cI")  # type byte, payload length
END_PAYLOAD = struct.Struct(">Q32s")  # total length, SHA-256 digest
FRAME_HEADER_SIZE = FRAME_HEADER.size
MAX_DATA_FRAME = 4 * 1024 * 1024
# What a well-behaved sender puts in one D frame.
DEFAULT_DATA_FRAME = 1024 * 1024

# --- text replies -----------------------------------------------------------
MAX_REPLY_LINE = 4096
MAX_LIST_ENTRIES = 100_000
SHA256_HEX_PATTERN = re.compile(r"[0-9a-f]{64}")


# --- exit codes --------------------------------------------------------------
class ShellExit(enum.IntEnum):
    """How ``qbackup-shell`` ends a session (sysexits.h numbers). The carrier
    reads these from the SSH exit status; nothing else may spell the numbers."""

    OK = 0
    USAGE = 64  # refused or malformed command, bad name
    DATA = 65  # invalid stream, length/digest mismatch; check: stored bytes differ
    NO_SUCH_BACKUP = 66  # no such backup; commit: nothing staged; resume: nothing to resume
    UNAVAILABLE = 69  # no space (reserve, quota, inodes) or another upload running
    SOFTWARE = 70  # internal error
    EXISTS = 73  # the name exists (committed or staged)
    IO = 74  # I/O error on the server, or the session was cut (client gone or silent)
    NO_PERMISSION = 77  # not allowed (interactive login, admin verbs, running as root)
    CONFIG = 78  # the server's configuration is broken


SHELL_EXIT_MEANINGS: dict[ShellExit, str] = {
    ShellExit.OK: "success",
    ShellExit.USAGE: "refused or malformed command, or a bad name",
    ShellExit.DATA: "invalid stream or length/digest mismatch, or stored bytes differ "
    "from their record",
    ShellExit.NO_SUCH_BACKUP: "no such backup (commit: nothing staged; resume: nothing to resume)",
    ShellExit.UNAVAILABLE: "no space (reserve, quota, inodes) or another upload is running",
    ShellExit.SOFTWARE: "internal error in the shell",
    ShellExit.EXISTS: "a backup (committed or staged) already has that name",
    ShellExit.IO: "I/O error on the server, or the session was cut (client gone or silent)",
    ShellExit.NO_PERMISSION: "not allowed (interactive login, admin action, running as root)",
    ShellExit.CONFIG: "the server's configuration is broken",
}


class CarrierExit(enum.IntEnum):
    """How ``qbackup-carrier`` (and the ``qubes.BackupCarrier`` service) ends.
    dom0 reads these; nothing else may spell the numbers."""

    OK = 0
    USAGE = 64  # bad arguments or request
    DATA = 65  # a stream was truncated or garbled, or a digest/length mismatched in transit
    NO_SUCH_BACKUP = 66  # no such backup (commit: nothing staged)
    CORRUPTED = 68  # check: the server re-hashed the stored backup and it differs from its record
    REFUSED = 69  # the server refused: no space, quota, another upload running
    SOFTWARE = 70  # internal error in the carrier
    EXISTS = 73  # a backup of that name already exists
    TEMPORARY = 75  # server unreachable or connection lost: try again later
    LOGIN_REFUSED = 76  # the server refused our key (authentication failed)
    HOST_KEY = 77  # the server's host key is not pinned or does not match
    CONFIG = 78  # the carrier's configuration is missing or invalid


CARRIER_EXIT_MEANINGS: dict[CarrierExit, str] = {
    CarrierExit.OK: "success",
    CarrierExit.USAGE: "bad arguments or request",
    CarrierExit.DATA: "stream truncated or garbled, or a length/digest mismatch in transit",
    CarrierExit.NO_SUCH_BACKUP: "no such backup (commit: nothing staged under that name)",
    CarrierExit.CORRUPTED: "the stored backup differs from its digest record on the server",
    CarrierExit.REFUSED: "the server refused (no space, quota, another upload running)",
    CarrierExit.SOFTWARE: "internal error in the carrier",
    CarrierExit.EXISTS: "a backup of that name already exists",
    CarrierExit.TEMPORARY: "server unreachable or connection lost: try again later",
    CarrierExit.LOGIN_REFUSED: "the server refused the carrier's key",
    CarrierExit.HOST_KEY: "the server's host key is not pinned or does not match",
    CarrierExit.CONFIG: "the carrier's configuration is missing or invalid",
}


# --- carrier -> dom0 ----------------------------------------------------------
MAX_OUTAGES_REPORTED = 100


@dataclass(frozen=True)
class TransferStats:
    """How an upload went, as the carrier tells dom0 (``qubes.BackupCarrier+transfer``
    with NAME on stdin prints it as one JSON line): how often the connection
    was lost and resumed, how long each outage lasted (seconds, at most
    MAX_OUTAGES_REPORTED of them, the first ones), and how many data bytes
    were sent again after reconnecting."""

    name: str
    lost: int
    outages: tuple[float, ...]
    resent: int

    def to_reply(self) -> dict[str, Any]:
        return {
            "transfer": {
                "name": self.name,
                "lost": self.lost,
                "outages": [round(seconds, 3) for seconds in self.outages],
                "resent": self.resent,
            }
        }


def parse_transfer_stats(line: bytes) -> TransferStats:
    """Given the line ``transfer`` prints, return the TransferStats; raise
    ProtocolError unless every field is present and well-formed."""
    value = _load_reply_line(line)
    if set(value) != {"transfer"} or not isinstance(value["transfer"], dict):
        raise ProtocolError("transfer reply has unexpected fields")
    fields = value["transfer"]
    if set(fields) != {"name", "lost", "outages", "resent"}:
        raise ProtocolError("transfer reply has unexpected fields")
    outages = fields["outages"]
    if not isinstance(outages, list) or len(outages) > MAX_OUTAGES_REPORTED:
        raise ProtocolError("transfer outages are not a short list")
    for seconds in outages:
        if not isinstance(seconds, int | float) or isinstance(seconds, bool) \
                or not 0 <= seconds < 10**9:
            raise ProtocolError("transfer outage is not a number of seconds")
    return TransferStats(
        name=_require_name(fields["name"]),
        lost=_require_int(fields["lost"], "lost"),
        outages=tuple(float(seconds) for seconds in outages),
        resent=_require_int(fields["resent"], "resent"),
    )


class ProtocolError(ValueError):
    """Raised when bytes or text on the wire break the protocol."""


class InvalidName(ValueError):
    """Raised when a backup name or prefix breaks the naming rules."""


# ---------------------------------------------------------------------------
# names
# ---------------------------------------------------------------------------
def check_name(name: str) -> str:
    """Given a backup NAME, return it unchanged; raise InvalidName if it is not
    a relative path of valid segments within the length and depth bounds."""
    if not isinstance(name, str) or not name:
        raise InvalidName("empty name")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidName(f"name longer than {MAX_NAME_LENGTH} characters")
    segments = name.split("/")
    if len(segments) > MAX_NAME_DEPTH:
        raise InvalidName(f"name deeper than {MAX_NAME_DEPTH} segments")
    for segment in segments:
        # fullmatch, not match: a trailing newline must not slip through '$'.
        if len(segment) > MAX_SEGMENT_LENGTH or not SEGMENT_PATTERN.fullmatch(segment):
            raise InvalidName("name segments must be [A-Za-z0-9._-], not start with '.'")
    return name


def check_prefix(prefix: str) -> str:
    """Given a listing PREFIX, return it unchanged; raise InvalidName unless it
    is empty or the start of some valid name (one trailing '/' allowed)."""
    if prefix == "":
        return prefix
    body = prefix[:-1] if prefix.endswith("/") else prefix
    check_name(body)
    return prefix


# ---------------------------------------------------------------------------
# commands
# ---------------------------------------------------------------------------
def build_command(verb: str, argument: str | None = None, *, offset: int | None = None) -> str:
    """Given a verb and its argument (and, for ``get``, an optional start OFFSET),
    return the command line a client sends; raise ProtocolError/InvalidName if
    they do not make a valid command."""
    if offset is not None and (verb != VERB_GET or offset < 0 or offset >= 2**63):
        raise ProtocolError("only get takes an offset, a non-negative integer")
    if verb in VERBS_WITH_NAME:
        if argument is None:
            raise ProtocolError(f"{verb} needs a name")
        if offset:
            return f"{verb} {check_name(argument)} {offset}"
        return f"{verb} {check_name(argument)}"
    if verb in VERBS_WITH_OPTIONAL_PREFIX:
        if argument:
            return f"{verb} {check_prefix(argument)}"
        return verb
    if verb in VERBS_WITHOUT_ARGUMENT:
        if argument:
            raise ProtocolError(f"{verb} takes no argument")
        return verb
    raise ProtocolError("unknown command")


# ---------------------------------------------------------------------------
# binary framing
# ---------------------------------------------------------------------------
def encode_data_header(length: int) -> bytes:
    """Given a data frame's payload length, return its 5-byte header."""
    if not 0 < length <= MAX_DATA_FRAME:
        raise ProtocolError("data frame length out of range")
    return FRAME_HEADER.pack(FRAME_DATA, length)


def encode_end_frame(total_length: int, digest: bytes) -> bytes:
    """Given the stream's total length and SHA-256 digest, return the whole
    end frame (header and payload)."""
    if len(digest) != 32 or total_length < 0:
        raise ProtocolError("bad end frame values")
    return FRAME_HEADER.pack(FRAME_END, END_PAYLOAD.size) + END_PAYLOAD.pack(total_length, digest)


def decode_frame_header(header: bytes) -> tuple[bytes, int]:
    """Given exactly FRAME_HEADER_SIZE bytes, return (frame type, payload length);
    raise ProtocolError for an unknown type or an out-of-range length."""
    if len(header) != FRAME_HEADER_SIZE:
        raise ProtocolError("short frame header")
    kind, length = FRAME_HEADER.unpack(header)
    if kind == FRAME_DATA:
        if not 0 < length <= MAX_DATA_FRAME:
            raise ProtocolError("data frame length out of range")
    elif kind == FRAME_END:
        if length != END_PAYLOAD.size:
            raise ProtocolError("end frame of wrong length")
    else:
        raise ProtocolError("unknown frame type")
    return kind, length


def decode_end_payload(payload: bytes) -> tuple[int, bytes]:
    """Given an end frame's payload, return (total length, SHA-256 digest)."""
    if len(payload) != END_PAYLOAD.size:
        raise ProtocolError("end frame of wrong length")
    total_length, digest = END_PAYLOAD.unpack(payload)
    return total_length, digest


# ---------------------------------------------------------------------------
# text replies
# ---------------------------------------------------------------------------
def encode_reply(fields: dict[str, Any]) -> bytes:
    """Given a reply object, return it as one JSON line (with the newline)."""
    line = json.dumps(fields, sort_keys=True, separators=(",", ":")).encode("ascii") + b"\n"
    if len(line) > MAX_REPLY_LINE:
        raise ProtocolError("reply line too long")
    return line


def _load_reply_line(line: bytes) -> dict[str, Any]:
    """Given one raw reply line (newline optional), return the JSON object it
    holds; raise ProtocolError if it is too long, not ASCII JSON, or not an object."""
    if len(line) > MAX_REPLY_LINE:
        raise ProtocolError("reply line too long")
    try:
        # The shell only ever sends ASCII (json.dumps default escaping).
        value = json.loads(line.decode("ascii"))
    except (UnicodeDecodeError, ValueError) as error:
        raise ProtocolError("reply is not a JSON line") from error
    if not isinstance(value, dict):
        raise ProtocolError("reply is not a JSON object")
    return value


def _require_int(value: Any, what: str) -> int:
    # bool is a subclass of int: refuse it explicitly.
    if not isinstance(value, int) or isinstance(value, bool) or value < 0 or value >= 2**63:
        raise ProtocolError(f"{what} is not a non-negative integer")
    return value


def _require_digest(value: Any) -> str:
    if not isinstance(value, str) or not SHA256_HEX_PATTERN.fullmatch(value):
        raise ProtocolError("sha256 is not 64 lowercase hex digits")
    return value


def _require_name(value: Any) -> str:
    try:
        return check_name(value)
    except InvalidName as error:
        raise ProtocolError("reply carries an invalid name") from error


@dataclass(frozen=True)
class BackupRecord:
    """A backup as the server describes it (put and commit receipts, list entry, check)."""

    name: str
    size: int
    sha256: str | None
    mtime: int | None = None

    def to_reply(self) -> dict[str, Any]:
        return {"name": self.name, "size": self.size, "sha256": self.sha256, "mtime": self.mtime}


def parse_record(line: bytes) -> BackupRecord:
    """Given one reply line describing a backup, return a BackupRecord; raise
    ProtocolError unless every field is present and well-formed."""
    value = _load_reply_line(line)
    if set(value) != {"name", "size", "sha256", "mtime"}:
        raise ProtocolError("backup record has unexpected fields")
    digest = value["sha256"]
    mtime = value["mtime"]
    return BackupRecord(
        name=_require_name(value["name"]),
        size=_require_int(value["size"], "size"),
        sha256=None if digest is None else _require_digest(digest),
        mtime=None if mtime is None else _require_int(mtime, "mtime"),
    )


@dataclass(frozen=True)
class ListEnd:
    """The summary line that ends a listing: how many records came, and whether
    the server cut the listing at MAX_LIST_ENTRIES."""

    count: int
    truncated: bool

    def to_reply(self) -> dict[str, Any]:
        return {"end": True, "count": self.count, "truncated": self.truncated}


def parse_list_line(line: bytes) -> BackupRecord | ListEnd:
    """Given one line of a listing, return a BackupRecord or, for the final
    summary line, a ListEnd; raise ProtocolError otherwise."""
    value = _load_reply_line(line)
    if "end" in value:
        if set(value) != {"end", "count", "truncated"} or value["end"] is not True:
            raise ProtocolError("malformed listing summary")
        if not isinstance(value["truncated"], bool):
            raise ProtocolError("malformed listing summary")
        return ListEnd(count=_require_int(value["count"], "count"), truncated=value["truncated"])
    return parse_record(line)


@dataclass(frozen=True)
class ServerInfo:
    """What ``info`` reports: protocol version and space, all sizes in bytes.
    ``quota``/``used`` are None when the account has no quota."""

    protocol: int
    free: int
    reserve: int
    available: int
    quota: int | None
    used: int | None

    def to_reply(self) -> dict[str, Any]:
        return {
            "protocol": self.protocol,
            "free": self.free,
            "reserve": self.reserve,
            "available": self.available,
            "quota": self.quota,
            "used": self.used,
        }


def parse_info(line: bytes) -> ServerInfo:
    """Given the single line ``info`` answers, return a ServerInfo; raise
    ProtocolError unless every field is present and well-formed."""
    value = _load_reply_line(line)
    if set(value) != {"protocol", "free", "reserve", "available", "quota", "used"}:
        raise ProtocolError("info reply has unexpected fields")
    quota = value["quota"]
    used = value["used"]
    return ServerInfo(
        protocol=_require_int(value["protocol"], "protocol"),
        free=_require_int(value["free"], "free"),
        reserve=_require_int(value["reserve"], "reserve"),
        available=_require_int(value["available"], "available"),
        quota=None if quota is None else _require_int(quota, "quota"),
        used=None if used is None else _require_int(used, "used"),
    )


@dataclass(frozen=True)
class CheckResult:
    """What ``check NAME`` reports: the stored record and whether the re-hash matched."""

    record: BackupRecord
    ok: bool

    def to_reply(self) -> dict[str, Any]:
        return {**self.record.to_reply(), "ok": self.ok}


def parse_check(line: bytes) -> CheckResult:
    """Given the single line ``check`` answers, return a CheckResult; raise
    ProtocolError unless it is well-formed."""
    value = _load_reply_line(line)
    ok = value.pop("ok", None)
    if not isinstance(ok, bool):
        raise ProtocolError("check reply lacks a boolean 'ok'")
    record = parse_record(json.dumps(value).encode("ascii"))
    return CheckResult(record=record, ok=ok)


# ---------------------------------------------------------------------------
# protocol 3: resumable uploads (see docs/PROTOCOL.md)
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class ResumeOffset:
    """The first line ``put`` (offset 0) and ``resume`` answer: the stream
    continues with the data byte at OFFSET."""

    offset: int

    def to_reply(self) -> dict[str, Any]:
        return {"offset": self.offset}


@dataclass(frozen=True)
class Ack:
    """A progress line of ``put``/``resume``: the server holds the first OFFSET
    data bytes durably (fdatasync'd), so the client may forget them."""

    offset: int

    def to_reply(self) -> dict[str, Any]:
        return {"ack": self.offset}


def parse_offset(line: bytes) -> ResumeOffset:
    """Given the first line of a put/resume reply, return a ResumeOffset; raise
    ProtocolError unless it is exactly ``{"offset": N}``."""
    value = _load_reply_line(line)
    if set(value) != {"offset"}:
        raise ProtocolError("offset reply has unexpected fields")
    return ResumeOffset(offset=_require_int(value["offset"], "offset"))


def parse_upload_line(line: bytes) -> Ack | BackupRecord:
    """Given a line a put/resume prints after its offset line, return an Ack or,
    for the final receipt, a BackupRecord; raise ProtocolError otherwise."""
    value = _load_reply_line(line)
    if "ack" in value:
        if set(value) != {"ack"}:
            raise ProtocolError("ack line has unexpected fields")
        return Ack(offset=_require_int(value["ack"], "ack"))
    return parse_record(line)


# ---------------------------------------------------------------------------
# retention: which backups a policy keeps (dom0's tamper check and the
# server admin's prune apply this SAME rule, so a prune never looks like an attack)
# ---------------------------------------------------------------------------
# Backup names dom0 makes: PREFIX-YYYYmmddTHHMMSSZ (UTC).
BACKUP_TIMESTAMP_FORMAT = "%Y%m%dT%H%M%SZ"
TIMESTAMPED_NAME = re.compile(r"(.+)-([0-9]{8}T[0-9]{6}Z)")
MAX_KEEP = 100_000
# Each rule: the period a backup's UTC time falls in.
RETENTION_PERIODS: dict[str, Callable[[datetime], tuple[int, ...]]] = {
    "daily": lambda moment: (moment.year, moment.month, moment.day),
    "weekly": lambda moment: tuple(moment.isocalendar())[:2],
    "monthly": lambda moment: (moment.year, moment.month),
    "yearly": lambda moment: (moment.year,),
}


class InvalidPolicy(ValueError):
    """Raised when a retention policy keeps nothing or has a bad count."""


@dataclass(frozen=True)
class RetentionPolicy:
    """How many periods of backups to keep, per prefix: e.g. daily=7 keeps the
    newest backup of each of the 7 newest days that have one."""

    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0

    def __post_init__(self) -> None:
        counts = [getattr(self, rule) for rule in RETENTION_PERIODS]
        for count in counts:
            if not isinstance(count, int) or isinstance(count, bool) \
                    or not 0 <= count <= MAX_KEEP:
                raise InvalidPolicy(f"keep counts are integers from 0 to {MAX_KEEP}")
        if not any(counts):
            raise InvalidPolicy("a retention policy must keep at least one period")

    def describe(self) -> str:
        """Return the policy as e.g. 'daily 7, weekly 4, monthly 12'."""
        return ", ".join(f"{rule} {getattr(self, rule)}" for rule in RETENTION_PERIODS
                         if getattr(self, rule))


def split_backup_name(name: str) -> tuple[str, datetime] | None:
    """Given a backup NAME, return (prefix, UTC time) if it is
    PREFIX-YYYYmmddTHHMMSSZ with a real date, else None."""
    found = TIMESTAMPED_NAME.fullmatch(name)
    if found is None:
        return None
    try:
        moment = datetime.strptime(found.group(2), BACKUP_TIMESTAMP_FORMAT)
    except ValueError:
        return None
    # timezone.utc, not datetime.UTC: the carrier runs on Python 3.10.
    return found.group(1), moment.replace(tzinfo=timezone.utc)  # noqa: UP017


def retained(names: Iterable[str], policy: RetentionPolicy) -> set[str]:
    """Given backup NAMES (of any prefixes) and a POLICY, return the names the
    policy keeps. Per prefix, separately: for each rule with a count N, the
    newest backup of each of the N newest periods (days, ISO weeks, months,
    years, in UTC, from the name's timestamp) that hold a backup; a backup
    kept by one rule also counts for the others. Names that are not
    PREFIX-TIMESTAMP are always kept. Pure: the same names give the same
    answer on every machine, whenever it runs."""
    by_prefix: dict[str, list[tuple[datetime, str]]] = {}
    kept: set[str] = set()
    for name in set(names):
        parts = split_backup_name(name)
        if parts is None:
            kept.add(name)
        else:
            by_prefix.setdefault(parts[0], []).append((parts[1], name))
    for backups in by_prefix.values():
        backups.sort(reverse=True)  # newest first
        for rule, period_of in RETENTION_PERIODS.items():
            count = getattr(policy, rule)
            seen: set[tuple[int, ...]] = set()
            for moment, name in backups:
                if len(seen) == count:
                    break
                period = period_of(moment)
                if period not in seen:
                    seen.add(period)
                    kept.add(name)
    return kept


def prunable(names: Iterable[str], policy: RetentionPolicy) -> list[str]:
    """Given backup NAMES and a POLICY, return the names it lets a prune
    remove, sorted."""
    names = set(names)
    return sorted(names - retained(names, policy))
