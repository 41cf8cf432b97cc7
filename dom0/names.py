"""Backup names: PREFIX-YYYYmmddTHHMMSSZ, checked before they reach any shell.

A name travels inside `destination_path`, which the carrier VM's qubes.Backup
service runs through `eval` (QUBES-INTERFACES.md section 1), and inside the
location command of qvm-backup-restore. Only characters that mean nothing to a
shell are allowed, so the word can never turn into extra commands.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from dom0.errors import UsageError

# One prefix segment: starts alphanumeric (never '.', '-' or '_', so never a
# hidden file, an option or '..'); the rest adds only '.', '_', '-'.
PREFIX_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# What the server accepts for any name segment (qbackup_protocol's rules,
# restated here: dom0 runs on another machine and imports nothing of theirs).
NAME_SEGMENT = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}")
MAX_NAME_LENGTH = 200
MAX_NAME_DEPTH = 8
TIMESTAMP_FORMAT = "%Y%m%dT%H%M%SZ"
TIMESTAMP_LENGTH = len("-20261122T235959Z")


def check_prefix(prefix: str) -> str:
    """Given a user's PREFIX, return it; raise UsageError unless it is a
    '/'-separated list of PREFIX_SEGMENT short enough to take a timestamp."""
    if not isinstance(prefix, str) or not prefix:
        raise UsageError("the prefix is empty: give one with -f PREFIX (e.g. -f laptop)")
    segments = prefix.split("/")
    # fullmatch, never match: '$' would let a trailing newline through, and a
    # newline in destination_path would end the line qubes.Backup reads.
    if not all(PREFIX_SEGMENT.fullmatch(segment) for segment in segments):
        raise UsageError(
            "invalid prefix: use letters, digits, '.', '_', '-' (segments start with a letter"
            " or digit, '/' separates segments)"
        )
    if len(segments) >= MAX_NAME_DEPTH or len(prefix) + TIMESTAMP_LENGTH > MAX_NAME_LENGTH:
        limit = MAX_NAME_LENGTH - TIMESTAMP_LENGTH
        depth = MAX_NAME_DEPTH - 1
        raise UsageError(f"prefix too long: at most {limit} characters in {depth} segments")
    return prefix


def is_valid_name(name: object) -> bool:
    """Given anything, return whether it is a name the server could hold."""
    if not isinstance(name, str) or not name or len(name) > MAX_NAME_LENGTH:
        return False
    segments = name.split("/")
    return len(segments) <= MAX_NAME_DEPTH and all(
        NAME_SEGMENT.fullmatch(segment) for segment in segments
    )


def check_name(name: str) -> str:
    """Given a backup NAME from the user, return it; raise UsageError unless the
    server's naming rules (and so shell safety) hold."""
    if not is_valid_name(name):
        raise UsageError("invalid backup name: use the name `qbackup list` shows")
    return name


def make_name(prefix: str, now: datetime | None = None) -> str:
    """Given a valid PREFIX and a time (default: now), return PREFIX-<UTC stamp>."""
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    return check_name(f"{check_prefix(prefix)}-{moment.strftime(TIMESTAMP_FORMAT)}")
