"""The carrier's exceptions and the exit-code map (decided only in cli.main).

Exit codes (dom0 maps them; keep the numbers):

==== ======================================================================
0    success
64   usage error, invalid backup name/prefix, refused qrexec argument
65   data error: digest/size mismatch, truncated stream, malformed reply
66   no such backup on the server; for commit: nothing staged under that name
     (never put, already committed, or expired)
69   the server refused (name exists or is staged already, no space, not
     allowed, server error)
75   temporary failure: server unreachable, connect/login timeout,
     connection lost, keepalive timeout -- retrying later may succeed
77   the server's host key is not trusted (unknown or changed)
78   carrier configuration error
==== ======================================================================

The server shell's own exit statuses are translated by SHELL_STATUS_ERRORS.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_USAGE = 64
EXIT_DATA = 65
EXIT_NO_SUCH_BACKUP = 66
EXIT_REFUSED = 69
EXIT_TEMPORARY = 75
EXIT_HOST_KEY = 77
EXIT_CONFIG = 78


class CarrierError(Exception):
    """An error that can be shown to the user as one line; carries its exit code."""

    exit_code = EXIT_REFUSED


class UsageError(CarrierError):
    """Bad command line, invalid name or prefix, refused qrexec argument."""

    exit_code = EXIT_USAGE


class DataError(CarrierError):
    """The stream or a reply is corrupt, truncated or malformed."""

    exit_code = EXIT_DATA


class NoSuchBackup(CarrierError, KeyError):
    """The server has no backup under that name."""

    exit_code = EXIT_NO_SUCH_BACKUP

    def __str__(self) -> str:
        # KeyError's __str__ would add quotes around the message.
        return str(self.args[0]) if self.args else "no such backup"


class ServerRefused(CarrierError):
    """The server shell refused the command or failed to carry it out."""

    exit_code = EXIT_REFUSED


class TemporaryFailure(CarrierError):
    """The server could not be reached or the connection was lost."""

    exit_code = EXIT_TEMPORARY


class HostKeyNotTrusted(CarrierError):
    """The server's host key is not in the pinned known_hosts file."""

    exit_code = EXIT_HOST_KEY


class ConfigError(CarrierError):
    """The carrier's configuration is missing or invalid."""

    exit_code = EXIT_CONFIG


# The server shell's exit statuses (see server_shell) and what they mean here.
SHELL_STATUS_ERRORS: dict[int, tuple[type[CarrierError], str]] = {
    64: (ServerRefused, "the server refused the command"),
    65: (DataError, "the server rejected the stream (bad framing, size or digest)"),
    66: (NoSuchBackup, "no such backup on the server"),
    69: (
        ServerRefused,
        "the server refused: no space (reserve, quota, inodes) or another upload is running",
    ),
    73: (ServerRefused, "a backup of that name already exists (or is staged) on the server"),
    74: (ServerRefused, "the server had an I/O error"),
    77: (ServerRefused, "the server does not allow this"),
    78: (ServerRefused, "the server's configuration is broken"),
    70: (ServerRefused, "the server shell failed internally"),
}


def error_for_shell_status(status: int | None, detail: str = "") -> CarrierError:
    """Given the shell's exit status (None when it died without one) and a
    sanitized detail text, return the CarrierError to raise."""
    suffix = f" ({detail})" if detail else ""
    if status is None:
        # No status means the session was cut (shell killed, sshd died): retry.
        return TemporaryFailure(f"the server session ended without an exit status{suffix}")
    kind, text = SHELL_STATUS_ERRORS.get(
        status, (ServerRefused, f"the server failed with exit status {status}")
    )
    return kind(f"{text}{suffix}")
