"""The qrexec service ``qubes.BackupCarrier+ARG``: what dom0 calls for list,
check, info, get, commit, abort and transfer.

qrexec hands the argument in ``$1`` and QREXEC_SERVICE_ARGUMENT and the
caller in QREXEC_REMOTE_DOMAIN. Arguments may not contain '/', so names and
prefixes travel as ONE bounded line on stdin instead. Only dom0 may call it:
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
from qbackup_protocol.text import clean_text
from qbackup_protocol.wire import InvalidName, check_name, check_prefix

logger = logging.getLogger(__name__)

# The static table of what dom0 may ask for: put is deliberately absent
# (backups arrive through qubes.Backup), anything else is refused. commit is
# here because only dom0 knows that Qubes' backup succeeded.
SERVICE_VERBS = frozenset({"list", "check", "info", "get", "commit", "abort", "transfer"})
VERBS_READING_STDIN = frozenset({"list", "check", "get", "commit", "transfer"})
SERVICE_VERB_TEXT = "list, check, info, get, commit, abort or transfer"
ALLOWED_CALLER = "dom0"
MAX_STDIN_LINE = 512


@dataclass(frozen=True)
class Request:
    """One command for the server: a verb and its name/prefix (or None)."""

    verb: str
    argument: str | None
    then_commit: bool = False  # put only: commit right after (put --commit)


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
    line = read_line(stdin_fd)
    try:
        if argument == "list":
            return Request(argument, check_prefix(line) or None)
        return Request(argument, check_name(line))
    except InvalidName as error:
        raise UsageError(f"refused: invalid backup name on stdin: {error}") from None


def read_line(fd: int) -> str:
    """Given stdin's fd, return the one line on it without its newline; raise
    UsageError if it is longer than MAX_STDIN_LINE, not ASCII, or followed by more."""
    data = bytearray()
    while b"\n" not in data and len(data) <= MAX_STDIN_LINE:
        chunk = os.read(fd, MAX_STDIN_LINE + 1 - len(data))
        if not chunk:
            break
        data += chunk
    line, newline, rest = bytes(data).partition(b"\n")
    if len(line) > MAX_STDIN_LINE or rest:
        raise UsageError(f"refused: stdin must hold one line of at most {MAX_STDIN_LINE} bytes")
    try:
        return line.decode("ascii")
    except UnicodeDecodeError:
        raise UsageError("refused: the name on stdin is not ASCII") from None
