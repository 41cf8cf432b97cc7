"""The carrier <-> server-shell wire protocol: what the shell speaks.

Pure data and pure functions, standard library only, no I/O: verbs, name
rules, frames, reply records and their encoding, and the shell's exit codes.
The login shell imports this module and no other of the package: with the
shell's own modules it is all that sshd can reach. The client side (command
lines, strict parsing of replies) is qbackup_protocol/client.py, which the
shell never loads. docs/PROTOCOL.md describes the protocol in prose (version
3: one command per SSH session; put stages, commit publishes; framed binary
streams with an end frame carrying length and SHA-256; JSON reply lines;
acks, resume and ranged get for interrupted transfers); tests check the two
agree.
"""

from __future__ import annotations

import enum
import json
import re
import struct
from dataclasses import asdict, dataclass
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
# Nor with '-', in ANY segment (threat: a name read as an option): the first
# becomes an argument of the carrier and dom0 (`qbackup-carrier get --help`
# fetched a backup named so), and every segment is a file name that a glob in
# its directory puts on an admin's command line (`rm *-2026*`).
MAX_NAME_LENGTH = 200
MAX_SEGMENT_LENGTH = 100
MAX_NAME_DEPTH = 8
SEGMENT_PATTERN = re.compile(rf"[A-Za-z0-9_][A-Za-z0-9._-]{{0,{MAX_SEGMENT_LENGTH - 1}}}")

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
class ExitStatus(enum.IntEnum):
    """The one style of exit codes in qbackup: each member is its number and
    the one line that says what it means (``help`` tables and docs derive
    from ``meaning``). Subclasses declare ``NAME = number, "meaning"``."""

    meaning: str

    def __new__(cls, value: int, meaning: str = "") -> ExitStatus:
        member = int.__new__(cls, value)
        member._value_ = value
        member.meaning = meaning
        return member


class ShellExit(ExitStatus):
    """How ``qbackup-shell`` ends a session (sysexits.h numbers). The carrier
    reads these from the SSH exit status; nothing else may spell the numbers."""

    OK = 0, "success"
    USAGE = 64, "refused or malformed command, or a bad name"
    DATA = 65, "invalid stream or length/digest mismatch, or stored bytes differ from their record"
    NO_SUCH_BACKUP = 66, "no such backup (commit: nothing staged; resume: nothing to resume)"
    UNAVAILABLE = 69, "no space (reserve, quota, inodes) or another upload is running"
    SOFTWARE = 70, "internal error in the shell"
    EXISTS = 73, "a backup (committed or staged) already has that name"
    IO = 74, "I/O error on the server, or the session was cut (client gone or silent)"
    NO_PERMISSION = 77, "not allowed (interactive login, admin action, running as root)"
    CONFIG = 78, "the server's configuration is broken"


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
    if name.count("/") >= MAX_NAME_DEPTH:
        raise InvalidName(f"name deeper than {MAX_NAME_DEPTH} segments")
    for segment in name.split("/"):
        # fullmatch, not match: a trailing newline must not slip through '$'.
        if not SEGMENT_PATTERN.fullmatch(segment):
            raise InvalidName(f"name segments must be 1 to {MAX_SEGMENT_LENGTH} characters of "
                              "[A-Za-z0-9._-], not starting with '.' or '-'")
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


@dataclass(frozen=True)
class FrameHeader:
    """A frame's header: its type (FRAME_DATA or FRAME_END) and payload length."""

    kind: bytes
    length: int


def decode_frame_header(header: bytes) -> FrameHeader:
    """Given exactly FRAME_HEADER_SIZE bytes, return the FrameHeader they hold;
    raise ProtocolError for an unknown type or an out-of-range length."""
    if len(header) != FRAME_HEADER_SIZE:
        raise ProtocolError("short frame header")
    frame = FrameHeader(*FRAME_HEADER.unpack(header))
    if frame.kind not in (FRAME_DATA, FRAME_END):
        raise ProtocolError("unknown frame type")
    if frame.kind == FRAME_DATA and not 0 < frame.length <= MAX_DATA_FRAME:
        raise ProtocolError("data frame length out of range")
    if frame.kind == FRAME_END and frame.length != END_PAYLOAD.size:
        raise ProtocolError("end frame of wrong length")
    return frame


@dataclass(frozen=True)
class StreamEnd:
    """What an end frame declares: the stream's total length and its SHA-256 digest."""

    length: int
    digest: bytes


def decode_end_payload(payload: bytes) -> StreamEnd:
    """Given an end frame's payload, return the StreamEnd it declares."""
    if len(payload) != END_PAYLOAD.size:
        raise ProtocolError("end frame of wrong length")
    return StreamEnd(*END_PAYLOAD.unpack(payload))


# ---------------------------------------------------------------------------
# text replies
# ---------------------------------------------------------------------------
def encode_reply(fields: dict[str, Any]) -> bytes:
    """Given a reply object, return it as one JSON line (with the newline)."""
    line = json.dumps(fields, sort_keys=True, separators=(",", ":")).encode("ascii") + b"\n"
    if len(line) > MAX_REPLY_LINE:
        raise ProtocolError("reply line too long")
    return line


def require_int(value: Any, what: str) -> int:
    """Given a reply field's VALUE and WHAT it is, return it; raise
    ProtocolError unless it is an integer in [0, 2**63)."""
    # bool is a subclass of int: refuse it explicitly.
    if not isinstance(value, int) or isinstance(value, bool) or value < 0 or value >= 2**63:
        raise ProtocolError(f"{what} is not a non-negative integer")
    return value


def require_digest(value: Any) -> str:
    """Given a SHA-256 field's VALUE, return it; raise ProtocolError unless it
    is 64 lowercase hex digits."""
    if not isinstance(value, str) or not SHA256_HEX_PATTERN.fullmatch(value):
        raise ProtocolError("sha256 is not 64 lowercase hex digits")
    return value


class ReplyRecord:
    """A reply record; as a reply line (encode_reply) it is its fields, unless
    it says otherwise."""

    def to_reply(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]  # every subclass is a dataclass


@dataclass(frozen=True)
class BackupRecord(ReplyRecord):
    """A backup as the server describes it (put and commit receipts, list entry, check)."""

    name: str
    size: int
    sha256: str | None
    mtime: int | None = None


@dataclass(frozen=True)
class ListEnd(ReplyRecord):
    """The summary line that ends a listing: how many records came, and whether
    the server cut the listing at MAX_LIST_ENTRIES."""

    count: int
    truncated: bool

    def to_reply(self) -> dict[str, Any]:
        return {"end": True, "count": self.count, "truncated": self.truncated}


@dataclass(frozen=True)
class ServerInfo(ReplyRecord):
    """What ``info`` reports: protocol version and space, all sizes in bytes.
    ``quota``/``used`` are None when the account has no quota."""

    protocol: int
    free: int
    reserve: int
    available: int
    quota: int | None
    used: int | None


@dataclass(frozen=True)
class CheckResult(ReplyRecord):
    """What ``check NAME`` reports: the stored record and whether the re-hash matched."""

    record: BackupRecord
    ok: bool

    def to_reply(self) -> dict[str, Any]:
        return {**self.record.to_reply(), "ok": self.ok}


# ---------------------------------------------------------------------------
# protocol 3: resumable uploads (see docs/PROTOCOL.md)
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class ResumeOffset(ReplyRecord):
    """The first line ``put`` (offset 0) and ``resume`` answer: the stream
    continues with the data byte at OFFSET."""

    offset: int


@dataclass(frozen=True)
class Ack(ReplyRecord):
    """A progress line of ``put``/``resume``: the server holds the first OFFSET
    data bytes durably (fdatasync'd), so the client may forget them."""

    offset: int

    def to_reply(self) -> dict[str, Any]:
        return {"ack": self.offset}
