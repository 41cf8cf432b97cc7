"""The backup passphrase file: refuse it unless only its owner can read it.

The passphrase protects every backup ever taken with it; a file others can
read defeats the encryption, so qbackup refuses it instead of warning.
The passphrase itself is never logged.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from dom0.errors import PassphraseError

MAX_PASSPHRASE_FILE = 4096


def read_passphrase(path: Path) -> str:
    """Given the passphrase file PATH, return its first line without trailing
    whitespace; raise PassphraseError if it is missing, not a regular file, readable by
    group/others, empty, or not UTF-8."""
    try:
        # O_NOFOLLOW: the checks below must be about the file we read, not a
        # symlink to something else swapped in between.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise PassphraseError(f"passphrase file {path} does not exist") from None
    except OSError as error:
        raise PassphraseError(f"cannot open passphrase file {path}: {error.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise PassphraseError(f"passphrase file {path} is not a regular file")
        # Any group/other permission means someone else may read (or replace)
        # the key to every backup.
        if info.st_mode & 0o077:
            raise PassphraseError(
                f"passphrase file {path} is accessible by group/others: run chmod 600 {path}"
            )
        data = os.read(fd, MAX_PASSPHRASE_FILE + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_PASSPHRASE_FILE:
        raise PassphraseError(f"passphrase file {path} is larger than {MAX_PASSPHRASE_FILE} bytes")
    try:
        # qvm-backup-restore strips the right side of the line it reads: strip
        # alike, or a trailing space would make every backup unverifiable.
        first = data.decode("utf-8").split("\n", 1)[0].rstrip()
    except UnicodeDecodeError:
        raise PassphraseError(f"passphrase file {path} is not UTF-8 text") from None
    if not first:
        raise PassphraseError(f"passphrase file {path} is empty: put the passphrase on line 1")
    return first
