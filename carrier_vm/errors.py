"""The carrier's exceptions, each carrying its exit code, and how the server
shell's exit statuses map to them.

The numbers themselves live in ``qbackup_protocol`` (``carrier_service.CarrierExit``
for what the carrier reports to dom0, ``wire.ShellExit`` for what the server
shell reports to the carrier); this module only says which exception means which. Exit
codes are decided in cli.main from the exception that ended the run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from qbackup_protocol.carrier_service import CarrierExit
from qbackup_protocol.wire import ProtocolError, ShellExit

T = TypeVar("T")


class CarrierError(Exception):
    """An error that can be shown to the user as one line; carries its exit code."""

    exit_code = CarrierExit.REFUSED


class UsageError(CarrierError):
    """Bad command line, invalid name or prefix, refused qrexec call."""

    exit_code = CarrierExit.USAGE


class DataError(CarrierError):
    """A stream or a reply is corrupt, truncated or malformed in transit."""

    exit_code = CarrierExit.DATA


class Corrupted(CarrierError):
    """The server re-hashed a stored backup and it differs from its record."""

    exit_code = CarrierExit.CORRUPTED


class NoSuchBackup(CarrierError):
    """The server has no backup under that name (commit: nothing staged)."""

    exit_code = CarrierExit.NO_SUCH_BACKUP


class ServerRefused(CarrierError):
    """The server shell refused the command or failed to carry it out."""

    exit_code = CarrierExit.REFUSED


class AlreadyExists(CarrierError):
    """A backup (committed or staged) of that name exists on the server."""

    exit_code = CarrierExit.EXISTS


class TemporaryFailure(CarrierError):
    """The server could not be reached, stopped making progress, or the
    connection was lost: retrying later may succeed."""

    exit_code = CarrierExit.TEMPORARY


class Dropped(CarrierError):
    """A destination held the shared buffer without progress while others
    waited: the run went on without it (not resumable within this run)."""

    exit_code = CarrierExit.TEMPORARY


class Interrupted(TemporaryFailure):
    """A signal stopped the run (a transfer is aborted: nothing is committed)."""


class OutputClosed(CarrierError):
    """Whoever reads the carrier's stdout went away (EPIPE): the transfer is
    aborted. Not a lost connection: resuming cannot help."""

    exit_code = CarrierExit.TEMPORARY


class LoginRefused(CarrierError):
    """The server refused the carrier's key."""

    exit_code = CarrierExit.LOGIN_REFUSED


class HostKeyNotTrusted(CarrierError):
    """The server's host key is not in the pinned known_hosts file."""

    exit_code = CarrierExit.HOST_KEY


class ConfigError(CarrierError):
    """The carrier's configuration is missing or invalid."""

    exit_code = CarrierExit.CONFIG


# What each exit status of the server shell means to the carrier.
SHELL_STATUS_ERRORS: dict[ShellExit, tuple[type[CarrierError], str]] = {
    ShellExit.USAGE: (ServerRefused, "the server refused the command"),
    ShellExit.DATA: (DataError, "the server rejected the stream (bad framing, size or digest)"),
    ShellExit.NO_SUCH_BACKUP: (NoSuchBackup, "no such backup on the server"),
    ShellExit.UNAVAILABLE: (
        ServerRefused,
        "the server refused: no space (reserve, quota, inodes) or another upload is running",
    ),
    ShellExit.SOFTWARE: (ServerRefused, "the server shell failed internally"),
    ShellExit.EXISTS: (AlreadyExists, "a backup of that name already exists (or is staged)"),
    ShellExit.IO: (ServerRefused, "the server had an I/O error"),
    ShellExit.NO_PERMISSION: (ServerRefused, "the server does not allow this"),
    ShellExit.CONFIG: (ServerRefused, "the server's configuration is broken"),
}


def error_for_shell_status(status: int | None, detail: str = "") -> CarrierError:
    """Given the shell's exit status (None when it died without one) and a
    sanitized detail text, return the CarrierError to raise."""
    suffix = f" ({detail})" if detail else ""
    if status is None:
        # No status means the session was cut (shell killed, sshd died): retry.
        return TemporaryFailure(f"the server session ended without an exit status{suffix}")
    try:
        kind, text = SHELL_STATUS_ERRORS[ShellExit(status)]
    except (ValueError, KeyError):
        # Unknown statuses (and 0 where failure was expected) are refusals.
        return ServerRefused(f"the server failed with exit status {status}{suffix}")
    return kind(f"{text}{suffix}")


def parse_hostile(parse: Callable[[bytes], T], line: bytes, what: str) -> T:
    """Given a protocol parser and a line from the server, return what it
    parsed; raise DataError for anything the parser raises on bad input
    (including RecursionError from deeply nested JSON: the server is hostile
    until proven otherwise, and its input must end in a documented code)."""
    try:
        return parse(line)
    except (ValueError, RecursionError) as error:
        detail = str(error) if isinstance(error, ProtocolError) else type(error).__name__
        raise DataError(f"the server's {what} is malformed: {detail}") from None
