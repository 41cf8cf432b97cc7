"""Fixtures of the server-shell tests (the real sshd ones come from tests/conftest.py)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed.server import BackupServer


@pytest.fixture
def outside(backup_server: BackupServer) -> Iterator[Path]:
    """A world-writable directory OUTSIDE every storage, with a secret file in
    it: what a planted symlink would try to reach. It is reachable by the
    accounts, so only the shell's O_NOFOLLOW walk stands in the way."""
    base = Path(tempfile.mkdtemp(prefix="outside-", dir=backup_server.base))
    base.chmod(0o777)
    (base / "secret").write_bytes(b"not yours\n")
    (base / "secret").chmod(0o666)
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def shell_config(backup_server: BackupServer) -> Iterator[BackupServer]:
    """The session's server, with its shell config restored after the test."""
    yield backup_server
    backup_server.write_shell_config("")
