"""The exception root of dom0's qbackup and the ONE map from errors to exit codes.

Every error a user may see is a QbackupError: its message is one actionable
line. No class also inherits a builtin exception (an `except OSError` never
catches a LockHeld by accident). Only `cli.main()` turns them into exit codes.
"""

from __future__ import annotations

from qbackup_protocol.carrier_service import CarrierExit
from qbackup_protocol.wire import ExitStatus


class QbackupExit(ExitStatus):
    """How `qbackup` ends: the ONE table (`qbackup --help` and dom0/README.md
    show it; the docs tests compare the README with it). Only `cli.main()`
    turns an error into one of these."""

    OK = 0, "success"
    BACKUP_FAILED = 1, "backup failed (Qubes backup engine or carrier transfer)"
    USAGE = 2, "usage or configuration error"
    QUBES = 3, "Qubes error (unknown VM, missing carrier, refused call)"
    VERIFY = 4, "verification failed or tampering detected"
    LOCKED = 5, "another backup through this carrier is running"
    NO_SPACE = 6, "not enough space on the server"
    STALE = 7, "a job has no recent enough successful backup"
    CARRIER = 8, "the carrier or server refused or answered garbage"
    NO_SUCH_BACKUP = 9, "no such backup on the server"
    CARRIER_CONFIG = 10, "the carrier's configuration is missing or invalid"
    HOST_KEY = 11, "the server's host key is not pinned in the carrier (or differs)"
    LOGIN_REFUSED = 12, "the server refused the carrier's login key"
    CORRUPTED = 13, "the stored backup is corrupted (differs from its digest record)"
    PARTIAL = 14, "the backup is stored on some destinations, not all"
    TEMPFAIL = 75, "temporary failure (server unreachable): try again later"
    SIGINT = 130, "interrupted (SIGINT): the run stopped cleanly"
    SIGTERM = 143, "terminated (SIGTERM): the run stopped cleanly"


def exit_meaning(code: int) -> str:
    """Given an exit code, return what it means ("failed" for one outside the
    table: a signal other than SIGINT and SIGTERM)."""
    try:
        return QbackupExit(code).meaning
    except ValueError:
        return "failed"


class QbackupError(Exception):
    """An error that can be shown to the user as one line."""

    exit_code = QbackupExit.BACKUP_FAILED


class UsageError(QbackupError):
    """Bad command line arguments."""

    exit_code = QbackupExit.USAGE


class ConfigError(QbackupError):
    """The configuration file (or a value given for it) is wrong."""

    exit_code = QbackupExit.USAGE

    def __init__(self, problems: list[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems))


class PassphraseError(QbackupError):
    """The passphrase file is missing, empty or readable by others."""

    exit_code = QbackupExit.USAGE


class QubesError(QbackupError):
    """Qubes refused a call or a VM is missing."""

    exit_code = QbackupExit.QUBES


class VMNotFound(QubesError):
    """A VM named by the user or the configuration does not exist."""


class BackupEngineError(QbackupError):
    """Qubes' backup engine (admin.backup.Execute) failed."""

    exit_code = QbackupExit.BACKUP_FAILED


class CarrierFailed(QbackupError):
    """The carrier failed or answered something that breaks the rules (the
    carrier's own root class is carrier_vm.errors.CarrierError)."""

    exit_code = QbackupExit.CARRIER


class CarrierRefused(CarrierFailed):
    """The carrier refused the request itself (status 64): e.g. a carrier too
    old to know a verb."""


class ReplyTooLarge(CarrierFailed):
    """The carrier sent more than any honest reply could hold."""


class TemporaryFailure(CarrierFailed):
    """The server could not be reached: a later run may succeed."""

    exit_code = QbackupExit.TEMPFAIL


class NoSpaceError(QbackupError):
    """The server has not enough space for the backup."""

    exit_code = QbackupExit.NO_SPACE


class VerificationError(QbackupError):
    """A stored backup failed verification, a check, or the tamper comparison."""

    exit_code = QbackupExit.VERIFY


class PartialBackup(QbackupError):
    """A backup committed on some of its destinations and failed on the others."""

    exit_code = QbackupExit.PARTIAL


class LockHeld(QbackupError):
    """Another qbackup holds the carrier's lock."""

    exit_code = QbackupExit.LOCKED


class StaleBackup(QbackupError):
    """status: a job's last success is too old (or missing)."""

    exit_code = QbackupExit.STALE


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
        return QbackupExit.SIGINT
    return QbackupExit.BACKUP_FAILED


class NoSuchBackup(QbackupError):
    """The server has no backup of that name (verify, restore, check alike)."""

    exit_code = QbackupExit.NO_SUCH_BACKUP


class CarrierConfigError(CarrierFailed):
    """The carrier's own configuration is missing or invalid."""

    exit_code = QbackupExit.CARRIER_CONFIG


class HostKeyNotTrusted(CarrierFailed):
    """The carrier has no pinned host key for the server, or it differs."""

    exit_code = QbackupExit.HOST_KEY


class LoginRefused(CarrierFailed):
    """The server refused the carrier's login key."""

    exit_code = QbackupExit.LOGIN_REFUSED


class Corrupted(QbackupError):
    """The server re-hashed a stored backup and it differs from its record."""

    exit_code = QbackupExit.CORRUPTED


# The carrier's exit statuses (CarrierExit, its documented contract) -> the
# error dom0 raises and the reason it gives. An unknown status is a CarrierFailed.
CARRIER_STATUS_ERRORS: dict[CarrierExit, tuple[type[QbackupError], str]] = {
    CarrierExit.USAGE: (CarrierRefused, "the carrier refused the request"),
    CarrierExit.DATA: (VerificationError, "the data from the server failed its integrity check"),
    CarrierExit.NO_SUCH_BACKUP: (NoSuchBackup, "no such backup on the server"),
    CarrierExit.CORRUPTED: (Corrupted, "the stored backup is CORRUPTED: it differs from"
                            " its digest record on the server"),
    CarrierExit.REFUSED: (CarrierFailed, "the server refused the request"),
    CarrierExit.SOFTWARE: (CarrierFailed, "the carrier failed (internal error)"),
    CarrierExit.EXISTS: (CarrierFailed, "a backup of that name already exists on the server"),
    CarrierExit.TEMPORARY: (TemporaryFailure, "the server is unreachable (temporary)"),
    CarrierExit.LOGIN_REFUSED: (LoginRefused, "the server refused the carrier's login key:"
                                " install the carrier's public key for the backup account"),
    CarrierExit.HOST_KEY: (HostKeyNotTrusted, "the server's host key is not pinned in the carrier"
                           " (or differs): add it to the carrier's known_hosts file"),
    CarrierExit.CONFIG: (CarrierConfigError, "the carrier's configuration is missing or"
                         " invalid: see qbackup-carrier --help in the carrier"),
}
