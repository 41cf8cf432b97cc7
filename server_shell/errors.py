"""The shell's exceptions and the exit-code map (sysexits, as the carrier expects).

Every error the shell can show a client is a ShellError whose message is ONE
line written by the shell itself: it never contains anything the client sent.
`main()` is the only place that turns them into exit codes.
"""

from __future__ import annotations

# sysexits.h values; the carrier maps them back to its own messages.
EXIT_OK = 0
EXIT_USAGE = 64  # refused or malformed command, bad name
EXIT_DATAERR = 65  # truncated/invalid stream, digest mismatch
EXIT_NOINPUT = 66  # no such backup; for commit: nothing staged under that name
EXIT_SOFTWARE = 70  # internal error
EXIT_UNAVAILABLE = 69  # refused for space (reserve, quota, inodes) or another upload running
EXIT_CANTCREAT = 73  # name already exists
EXIT_IOERR = 74  # I/O error
EXIT_NOPERM = 77  # not allowed here (interactive login, prune over SSH, root)
EXIT_CONFIG = 78  # bad server config


class ShellError(Exception):
    """An error that can be shown to the client as one line."""

    exit_code = EXIT_SOFTWARE
    outcome = "error"


class CommandRefused(ShellError):
    """The command line is not one of the protocol's commands, or a name is invalid."""

    exit_code = EXIT_USAGE
    outcome = "refused"


class BadStream(ShellError):
    """The framed stream is truncated, malformed, or its digest does not match."""

    exit_code = EXIT_DATAERR
    outcome = "bad-stream"


class NoSuchBackup(ShellError, FileNotFoundError):
    """The named backup does not exist (or is not a regular file)."""

    exit_code = EXIT_NOINPUT
    outcome = "missing"


class NothingStaged(NoSuchBackup):
    """commit NAME found no staged upload of NAME (never put, committed already, expired)."""

    outcome = "nothing-staged"


class NoSpace(ShellError):
    """The reserve or the quota would be crossed."""

    exit_code = EXIT_UNAVAILABLE
    outcome = "no-space"


class UploadBusy(ShellError):
    """Another put to this account is running (one upload per account at a time)."""

    exit_code = EXIT_UNAVAILABLE
    outcome = "busy"


class AlreadyExists(ShellError, FileExistsError):
    """The name is taken: backups are never replaced."""

    exit_code = EXIT_CANTCREAT
    outcome = "exists"


class StorageError(ShellError, OSError):
    """Reading or writing the storage failed."""

    exit_code = EXIT_IOERR
    outcome = "io-error"


class NotAllowed(ShellError, PermissionError):
    """Not allowed in this context: interactive login, prune over SSH, running as root."""

    exit_code = EXIT_NOPERM
    outcome = "not-allowed"


class ConfigError(ShellError):
    """The server's configuration file is invalid."""

    exit_code = EXIT_CONFIG
    outcome = "bad-config"


class Interrupted(BadStream):
    """A signal (SIGTERM, SIGHUP, SIGPIPE) ended the command."""

    outcome = "interrupted"


class IdleTimeout(BadStream):
    """The client sent nothing for idle_timeout seconds during a put."""

    outcome = "idle-timeout"
