"""The qrexec service ``qubes.BackupCarrier+ARG``: what dom0 calls for list,
check, info, get, commit, abort, transfer and destinations.

qrexec hands the argument in ``$1`` and QREXEC_SERVICE_ARGUMENT and the
caller in QREXEC_REMOTE_DOMAIN. Arguments may not contain '/', so names and
prefixes travel as ONE bounded line on stdin instead, followed (list, check,
get, info) by an optional second line naming the destination. Only dom0 may call it:
the qrexec policy shipped for dom0 says so, and the service checks the caller
again itself, so a policy edited by mistake does not hand another VM the
backups (get), their publication (commit) or the running upload (abort).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass

from carrier_vm.errors import UsageError
from qbackup_protocol.carrier_service import check_destination
from qbackup_protocol.text import clean_text
from qbackup_protocol.wire import InvalidName, ProtocolError, check_name, check_prefix

logger = logging.getLogger(__name__)

# The static table of what dom0 may ask for: put is deliberately absent
# (backups arrive through qubes.Backup), anything else is refused. commit is
# here because only dom0 knows that Qubes' backup succeeded.
SERVICE_VERBS = frozenset({"list", "check", "info", "get", "commit", "abort", "transfer",
                           "destinations"})
VERBS_READING_STDIN = frozenset({"list", "check", "info", "get", "commit", "transfer"})
# Those that ask one destination: a second stdin line may name it.
VERBS_WITH_DESTINATION = frozenset({"list", "check", "info", "get"})
SERVICE_VERB_TEXT = "list, check, info, get, commit, abort, transfer or destinations"
ALLOWED_CALLER = "dom0"
MAX_STDIN_LINE = 512


@dataclass(frozen=True)
class Request:
    """One command for the server: a verb and its name/prefix (or None)."""

    verb: str
    argument: str | None
    then_commit: bool = False  # put only: commit right after (put --commit)
    destinations: tuple[str, ...] | None = None  # --to / --from (None: the default)
    partial_ok: bool = False  # put only: exit 0 when some destinations staged (--partial-ok)


def service_request(
    argv_argument: str | None, environ: Mapping[str, str], stdin_fd: int
) -> Request:
    """Given the service's $1 (or None), the environment and stdin, return the
    Request; raise UsageError for a refused argument or a bad name line,
    before anything is contacted."""
    env_argument = environ.get("QREXEC_SERVICE_ARGUMENT")
    caller = clean_text(environ.get("QREXEC_REMOTE_DOMAIN", "(unknown)"), 64)
    # Threat: another VM (or a misconfigured policy) reaching this service:
    # only dom0 knows when a backup succeeded or was cancelled.
    if environ.get("QREXEC_REMOTE_DOMAIN") != ALLOWED_CALLER:
        logger.warning("qubes.BackupCarrier refused for %s: only dom0 may call it", caller)
        raise UsageError("refused: qubes.BackupCarrier accepts calls from dom0 only")
    argument = argv_argument if argv_argument is not None else env_argument
    # Both channels must agree: a mismatch means we are not being run by qrexec
    # the way we expect, so refuse rather than guess.
    if argument is None or (env_argument is not None and env_argument != argument):
        logger.warning(
            "qubes.BackupCarrier refused for %s: missing or conflicting argument", caller
        )
        raise UsageError(
            f"refused: qubes.BackupCarrier needs one argument: {SERVICE_VERB_TEXT}"
        )
    if argument not in SERVICE_VERBS:
        # Generic refusal that never echoes the caller's input.
        logger.warning("qubes.BackupCarrier refused for %s: unknown argument", caller)
        raise UsageError(f"refused: qubes.BackupCarrier accepts only {SERVICE_VERB_TEXT}")
    logger.info("qubes.BackupCarrier+%s called by %s", argument, caller)
    if argument not in VERBS_READING_STDIN:
        return Request(argument, None)
    lines = read_lines(stdin_fd, 2 if argument in VERBS_WITH_DESTINATION else 1)
    destinations = None
    try:
        # Threat: a destination naming a path: it becomes a directory name
        # in this VM (receipts, stats), so only DESTINATION_PATTERN passes.
        if len(lines) == 2:
            destinations = (check_destination(lines[1]),)
    except ProtocolError as error:
        raise UsageError(f"refused: invalid destination on stdin: {error}") from None
    line = lines[0] if lines else ""
    try:
        if argument == "list":
            return Request(argument, check_prefix(line) or None, destinations=destinations)
        if argument == "info":
            # Its first line (dom0 sends one) carries nothing.
            if line:
                raise UsageError("refused: info takes no name on stdin")
            return Request(argument, None, destinations=destinations)
        return Request(argument, check_name(line), destinations=destinations)
    except InvalidName as error:
        raise UsageError(f"refused: invalid backup name on stdin: {error}") from None


def read_lines(fd: int, most: int) -> list[str]:
    """Given stdin's fd, return the lines on it (at most MOST) without their
    newlines; raise UsageError if there are more, one is longer than
    MAX_STDIN_LINE, or one is not ASCII."""
    data = bytearray()
    limit = most * (MAX_STDIN_LINE + 1)
    while data.count(b"\n") < most and len(data) <= limit:
        chunk = os.read(fd, limit + 1 - len(data))
        if not chunk:
            break
        data += chunk
    lines = bytes(data).split(b"\n")
    if lines[-1] == b"" and len(lines) > 1:
        lines.pop()  # the last line's newline
    if lines == [b""]:
        lines = []
    if len(lines) > most or any(len(line) > MAX_STDIN_LINE for line in lines):
        what = "one line" if most == 1 else f"at most {most} lines"
        raise UsageError(f"refused: stdin must hold {what} of at most {MAX_STDIN_LINE} bytes")
    try:
        return [line.decode("ascii") for line in lines]
    except UnicodeDecodeError:
        raise UsageError("refused: the name on stdin is not ASCII") from None
