"""The exception root of dom0's qbackup and the ONE map from errors to exit codes.

Every error a user may see is a QbackupError: its message is one actionable
line. Subclasses also inherit the builtin they refine (VMNotFound is a KeyError)
so callers can catch either. Only `cli.main()` turns them into exit codes.
"""

from __future__ import annotations

from qbackup_protocol.carrier_service import CarrierExit

# --- exit codes: the ONE table (`qbackup --help` and dom0/README.md show it;
# tests/dom0/test_docs.py compares the README with it) -------------------------
EXIT_OK = 0
EXIT_BACKUP_FAILED = 1  # Qubes' engine or the carrier failed during a transfer
EXIT_USAGE = 2  # bad arguments or configuration (incl. prefix, passphrase file)
EXIT_QUBES = 3  # unknown VM, missing carrier, a Qubes call refused
EXIT_VERIFY = 4  # verification failed or tampering detected
EXIT_LOCKED = 5  # another backup through the same carrier is running
EXIT_NO_SPACE = 6  # the server has not enough space for the estimate
EXIT_STALE = 7  # status: a job has no (recent enough) successful backup
EXIT_CARRIER = 8  # the carrier answered something unusable or refused
EXIT_NO_SUCH_BACKUP = 9  # verify/restore/check: the server has no backup of that name
EXIT_CARRIER_CONFIG = 10  # the carrier's configuration is missing or invalid
EXIT_HOST_KEY = 11  # the server's host key is not pinned in the carrier, or differs
EXIT_LOGIN_REFUSED = 12  # the server refused the carrier's key
EXIT_CORRUPTED = 13  # check: the stored backup differs from its digest record
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
    EXIT_NO_SUCH_BACKUP: "no such backup on the server",
    EXIT_CARRIER_CONFIG: "the carrier's configuration is missing or invalid",
    EXIT_HOST_KEY: "the server's host key is not pinned in the carrier (or differs)",
    EXIT_LOGIN_REFUSED: "the server refused the carrier's login key",
    EXIT_CORRUPTED: "the stored backup is corrupted (differs from its digest record)",
    EXIT_TEMPFAIL: "temporary failure (server unreachable): try again later",
    EXIT_SIGINT: "interrupted (SIGINT): the run stopped cleanly",
    EXIT_SIGTERM: "terminated (SIGTERM): the run stopped cleanly",
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
    """A signal stopped the run, after a running backup was cancelled and a
    running restore ended."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"stopped by signal {signum}")

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


class NoSuchBackup(QbackupError):
    """The server has no backup of that name (verify, restore, check alike)."""

    exit_code = EXIT_NO_SUCH_BACKUP


class CarrierConfigError(CarrierError):
    """The carrier's own configuration is missing or invalid."""

    exit_code = EXIT_CARRIER_CONFIG


class HostKeyError(CarrierError):
    """The carrier has no pinned host key for the server, or it differs."""

    exit_code = EXIT_HOST_KEY


class LoginRefused(CarrierError):
    """The server refused the carrier's login key."""

    exit_code = EXIT_LOGIN_REFUSED


class CorruptedBackup(QbackupError):
    """The server re-hashed a stored backup and it differs from its record."""

    exit_code = EXIT_CORRUPTED


# The carrier's exit statuses (CarrierExit, its documented contract) -> the
# error dom0 raises and the reason it gives. An unknown status is a CarrierError.
CARRIER_STATUS_ERRORS: dict[CarrierExit, tuple[type[QbackupError], str]] = {
    CarrierExit.USAGE: (CarrierRefused, "the carrier refused the request"),
    CarrierExit.DATA: (VerificationError, "the data from the server failed its integrity check"),
    CarrierExit.NO_SUCH_BACKUP: (NoSuchBackup, "no such backup on the server"),
    CarrierExit.CORRUPTED: (CorruptedBackup, "the stored backup is CORRUPTED: it differs from"
                            " its digest record on the server"),
    CarrierExit.REFUSED: (CarrierError, "the server refused the request"),
    CarrierExit.SOFTWARE: (CarrierError, "the carrier failed (internal error)"),
    CarrierExit.EXISTS: (CarrierError, "a backup of that name already exists on the server"),
    CarrierExit.TEMPORARY: (TemporaryError, "the server is unreachable (temporary)"),
    CarrierExit.LOGIN_REFUSED: (LoginRefused, "the server refused the carrier's login key:"
                                " install the carrier's public key for the backup account"),
    CarrierExit.HOST_KEY: (HostKeyError, "the server's host key is not pinned in the carrier"
                           " (or differs): add it to the carrier's known_hosts file"),
    CarrierExit.CONFIG: (CarrierConfigError, "the carrier's configuration is missing or"
                         " invalid: see qbackup-carrier --help in the carrier"),
}
