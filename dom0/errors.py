"""The exception root of dom0's qbackup and the ONE map from errors to exit codes.

Every error a user may see is a QbackupError: its message is one actionable
line. Subclasses also inherit the builtin they refine (VMNotFound is a KeyError)
so callers can catch either. Only `cli.main()` turns them into exit codes.
"""

from __future__ import annotations

import os

# --- exit codes (documented in docs and `qbackup --help`) -------------------
EXIT_OK = 0
EXIT_BACKUP_FAILED = 1  # Qubes' engine or the carrier failed during a transfer
EXIT_USAGE = 2  # bad arguments or configuration (incl. prefix, passphrase file)
EXIT_QUBES = 3  # unknown VM, missing carrier, a Qubes call refused
EXIT_VERIFY = 4  # verification/check failed or tampering detected
EXIT_LOCKED = 5  # another backup through the same carrier is running
EXIT_NO_SPACE = 6  # the server has not enough space for the estimate
EXIT_STALE = 7  # status: a job's last success is older than --max-age
EXIT_CARRIER = 8  # the carrier answered something unusable or refused
EXIT_TEMPFAIL = 75  # server unreachable / temporary: retry later (EX_TEMPFAIL)
EXIT_SIGINT = 130
EXIT_SIGTERM = 143

EXIT_CODES = {
    EXIT_OK: "success",
    EXIT_BACKUP_FAILED: "backup failed (Qubes backup engine or carrier transfer)",
    EXIT_USAGE: "usage or configuration error",
    EXIT_QUBES: "Qubes error (unknown VM, missing carrier, refused call)",
    EXIT_VERIFY: "verification failed or tampering detected",
    EXIT_LOCKED: "another backup through this carrier is running",
    EXIT_NO_SPACE: "not enough space on the server",
    EXIT_STALE: "a job has no recent enough successful backup",
    EXIT_CARRIER: "the carrier or server refused or answered garbage",
    EXIT_TEMPFAIL: "temporary failure (server unreachable): try again later",
    EXIT_SIGINT: "interrupted (SIGINT), backup cancelled",
    EXIT_SIGTERM: "terminated (SIGTERM), backup cancelled",
}


class QbackupError(Exception):
    """An error that can be shown to the user as one line."""

    exit_code = EXIT_BACKUP_FAILED


class UsageError(QbackupError, ValueError):
    """Bad command line arguments."""

    exit_code = EXIT_USAGE


class ConfigError(QbackupError, ValueError):
    """The configuration file (or a value given for it) is wrong."""

    exit_code = EXIT_USAGE

    def __init__(self, problems: list[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems))


class PassphraseError(QbackupError, PermissionError):
    """The passphrase file is missing, empty or readable by others."""

    exit_code = EXIT_USAGE


class QubesError(QbackupError):
    """Qubes refused a call or a VM is missing."""

    exit_code = EXIT_QUBES


class VMNotFound(QubesError, KeyError):
    """A VM named by the user or the configuration does not exist."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "no such VM"


class BackupEngineError(QbackupError):
    """Qubes' backup engine (admin.backup.Execute) failed."""

    exit_code = EXIT_BACKUP_FAILED


class CarrierError(QbackupError):
    """The carrier failed or answered something that breaks the rules."""

    exit_code = EXIT_CARRIER


class CarrierRefused(CarrierError):
    """The carrier refused the request itself (status 64): e.g. a carrier too
    old to know a verb."""


class ReplyTooLarge(CarrierError):
    """The carrier sent more than any honest reply could hold."""


class TemporaryError(CarrierError):
    """The server could not be reached: a later run may succeed."""

    exit_code = EXIT_TEMPFAIL


class NoSpaceError(QbackupError):
    """The server has not enough space for the backup."""

    exit_code = EXIT_NO_SPACE


class VerificationError(QbackupError):
    """A stored backup failed verification, a check, or the tamper comparison."""

    exit_code = EXIT_VERIFY


class LockHeld(QbackupError, BlockingIOError):
    """Another qbackup holds the carrier's lock."""

    exit_code = EXIT_LOCKED


class StaleBackup(QbackupError):
    """status: a job's last success is too old (or missing)."""

    exit_code = EXIT_STALE


class Interrupted(QbackupError):
    """A signal stopped the run after the backup was cancelled."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"stopped by signal {signum} (a running backup is cancelled first)")

    @property
    def exit_code(self) -> int:  # type: ignore[override]
        return 128 + self.signum


def exit_code_for(error: BaseException) -> int:
    """Given an exception that ended a command, return the process exit code."""
    if isinstance(error, QbackupError):
        return int(error.exit_code)
    if isinstance(error, KeyboardInterrupt):
        return EXIT_SIGINT
    return EXIT_BACKUP_FAILED


# Carrier exit statuses (its documented contract) -> our exception class.
CARRIER_STATUS_ERRORS: dict[int, type[QbackupError]] = {
    64: CarrierRefused,  # usage / bad name / refused argument
    65: VerificationError,  # data error: digest/size mismatch, truncated
    66: CarrierError,  # no such backup
    69: CarrierError,  # server refused (exists, no space)
    os.EX_TEMPFAIL: TemporaryError,  # 75: unreachable, timeout, connection lost
    77: CarrierError,  # host key not trusted
    78: CarrierError,  # carrier config error
}
CARRIER_STATUS_TEXT: dict[int, str] = {
    64: "the carrier refused the request",
    65: "the data from the server failed its integrity check",
    66: "no such backup on the server",
    69: "the server refused the request",
    75: "the server is unreachable (temporary)",
    77: "the server's host key is not trusted by the carrier",
    78: "the carrier's configuration is broken",
}
