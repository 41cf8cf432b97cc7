"""What a client of the server shell needs beyond the wire: the command
lines it sends, and strict parsers of the shell's replies.

The carrier reads the shell's replies and dom0 the carrier's relay of them;
both treat every line as hostile: each parser returns a record of the wire
module or raises ProtocolError (or InvalidName). The login shell never
imports this module: it writes replies, it does not parse them, so none of
this is reachable through sshd.
"""

from __future__ import annotations

import json
from typing import Any

from qbackup_protocol.wire import (
    ALL_VERBS,
    MAX_REPLY_LINE,
    VERB_GET,
    VERBS_WITH_NAME,
    VERBS_WITHOUT_ARGUMENT,
    Ack,
    BackupRecord,
    CheckResult,
    InvalidName,
    ListEnd,
    ProtocolError,
    ResumeOffset,
    ServerInfo,
    check_name,
    check_prefix,
    require_digest,
    require_int,
)


def build_command(verb: str, argument: str | None = None, *, offset: int | None = None) -> str:
    """Given a verb and its argument (and, for ``get``, an optional start OFFSET),
    return the command line a client sends; raise ProtocolError/InvalidName if
    they do not make a valid command."""
    if offset is not None and (verb != VERB_GET or offset < 0 or offset >= 2**63):
        raise ProtocolError("only get takes an offset, a non-negative integer")
    if verb not in ALL_VERBS:
        raise ProtocolError("unknown command")
    if verb in VERBS_WITHOUT_ARGUMENT and argument:
        raise ProtocolError(f"{verb} takes no argument")
    command = verb
    if verb in VERBS_WITH_NAME:
        if argument is None:
            raise ProtocolError(f"{verb} needs a name")
        command = f"{verb} {check_name(argument)}"
    elif argument:  # a listing's prefix
        command = f"{verb} {check_prefix(argument)}"
    return f"{command} {offset}" if offset else command


def load_reply_line(line: bytes) -> dict[str, Any]:
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


def optional_int(value: Any, what: str) -> int | None:
    """Given a reply field's VALUE that may be null, return it; raise
    ProtocolError unless it is null or an integer in [0, 2**63)."""
    return None if value is None else require_int(value, what)


def reply_fields(line: bytes, names: set[str], what: str) -> dict[str, Any]:
    """Given one reply line, the fields it must hold and WHAT it is, return its
    object; raise ProtocolError unless it holds exactly those fields."""
    value = load_reply_line(line)
    if set(value) != names:
        raise ProtocolError(f"{what} has unexpected fields")
    return value


def require_name(value: Any) -> str:
    """Given a reply field's VALUE, return it; raise ProtocolError unless it
    is a valid backup name."""
    try:
        return check_name(value)
    except InvalidName as error:
        raise ProtocolError("reply carries an invalid name") from error


def parse_record(line: bytes) -> BackupRecord:
    """Given one reply line describing a backup, return a BackupRecord; raise
    ProtocolError unless every field is present and well-formed."""
    value = reply_fields(line, {"name", "size", "sha256", "mtime"}, "backup record")
    return BackupRecord(
        name=require_name(value["name"]),
        size=require_int(value["size"], "size"),
        sha256=None if value["sha256"] is None else require_digest(value["sha256"]),
        mtime=optional_int(value["mtime"], "mtime"),
    )


def parse_list_line(line: bytes) -> BackupRecord | ListEnd:
    """Given one line of a listing, return a BackupRecord or, for the final
    summary line, a ListEnd; raise ProtocolError otherwise."""
    value = load_reply_line(line)
    if "end" in value:
        well_formed = set(value) == {"end", "count", "truncated"} and value["end"] is True
        if not well_formed or not isinstance(value["truncated"], bool):
            raise ProtocolError("malformed listing summary")
        return ListEnd(count=require_int(value["count"], "count"), truncated=value["truncated"])
    return parse_record(line)


def parse_info(line: bytes) -> ServerInfo:
    """Given the single line ``info`` answers, return a ServerInfo; raise
    ProtocolError unless every field is present and well-formed."""
    names = {"protocol", "free", "reserve", "available", "quota", "used"}
    value = reply_fields(line, names, "info reply")
    return ServerInfo(
        protocol=require_int(value["protocol"], "protocol"),
        free=require_int(value["free"], "free"),
        reserve=require_int(value["reserve"], "reserve"),
        available=require_int(value["available"], "available"),
        quota=optional_int(value["quota"], "quota"),
        used=optional_int(value["used"], "used"),
    )


def parse_check(line: bytes) -> CheckResult:
    """Given the single line ``check`` answers, return a CheckResult; raise
    ProtocolError unless it is well-formed."""
    value = load_reply_line(line)
    ok = value.pop("ok", None)
    if not isinstance(ok, bool):
        raise ProtocolError("check reply lacks a boolean 'ok'")
    record = parse_record(json.dumps(value).encode("ascii"))
    return CheckResult(record=record, ok=ok)


def parse_offset(line: bytes) -> ResumeOffset:
    """Given the first line of a put/resume reply, return a ResumeOffset; raise
    ProtocolError unless it is exactly ``{"offset": N}``."""
    value = reply_fields(line, {"offset"}, "offset reply")
    return ResumeOffset(offset=require_int(value["offset"], "offset"))


def check_receipt(record: BackupRecord, name: str) -> BackupRecord:
    """Given the record a commit (or a put) ended with, return it if it is a
    receipt for NAME; raise ProtocolError if it names another backup or has
    no digest."""
    # A receipt for another backup proves nothing about NAME.
    if record.name != name:
        raise ProtocolError("receipt names a different backup")
    if record.sha256 is None:
        raise ProtocolError("receipt has no SHA-256")
    return record


def parse_receipt(output: bytes, name: str) -> BackupRecord:
    """Given the whole stdout of `commit NAME` (the server's, or the carrier's
    passing it on), return its BackupRecord; raise ProtocolError unless it is
    exactly one record line that is a receipt for NAME."""
    if not output.endswith(b"\n") or output.count(b"\n") != 1:
        raise ProtocolError("receipt is not exactly one line")
    return check_receipt(parse_record(output), name)


def parse_upload_line(line: bytes) -> Ack | BackupRecord:
    """Given a line a put/resume prints after its offset line, return an Ack or,
    for the final receipt, a BackupRecord; raise ProtocolError otherwise."""
    if "ack" in load_reply_line(line):
        value = reply_fields(line, {"ack"}, "ack line")
        return Ack(offset=require_int(value["ack"], "ack"))
    return parse_record(line)
