"""qbackup-extract's exceptions and exit codes: every failure it can show the
user is an ExtractError carrying the ExtractExit its main() returns."""

from __future__ import annotations

from qbackup_protocol.wire import ExitStatus


class ExtractExit(ExitStatus):
    """How ``qbackup-extract`` ends (sysexits.h numbers, as the rest of qbackup)."""

    OK = 0, "success: everything asked for was authenticated (and written)"
    USAGE = 64, "bad command line, passphrase file or VM name"
    DATA = 65, "the backup is damaged, altered, truncated or the passphrase is wrong"
    NO_INPUT = 66, "the source cannot be read (no such file, ssh or get failed)"
    UNSUPPORTED = 69, "a backup format, filter or parameter this tool does not read"
    CANT_CREATE = 73, "DEST cannot take the files (exists, no space, not writable)"


class ExtractError(Exception):
    """An error shown to the user as one line; STATUS is the exit code."""

    status: ExtractExit = ExtractExit.DATA

    def __init__(self, message: str, status: ExtractExit | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status


def usage_error(message: str) -> ExtractError:
    """Given a message, return the ExtractError of a bad command line or argument."""
    return ExtractError(message, ExtractExit.USAGE)


def unsupported(message: str) -> ExtractError:
    """Given a message, return the ExtractError of something this tool does not read."""
    return ExtractError(message, ExtractExit.UNSUPPORTED)
