"""Fixtures of the server-shell tests (the real sshd ones come from tests/conftest.py)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from qbackup_protocol import wire
from testbed.client import snapshot
from testbed.server import Account, BackupServer
from testbed.waiting import wait_until

# One data frame of 1000 bytes: what feed_until_partial sends.
ONE_FRAME_BODY = bytes(range(250)) * 4
ONE_FRAME = wire.encode_data_header(len(ONE_FRAME_BODY)) + ONE_FRAME_BODY


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


def start_put(server: BackupServer, account: Account, name: str) -> subprocess.Popen[bytes]:
    """Start `put NAME` over ssh, stdin left open for the test to feed."""
    return subprocess.Popen(
        [*server.ssh_command(account), f"put {name}"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def feed_until_partial(process: subprocess.Popen[bytes], account: Account) -> None:
    """Send one frame and wait until the put has written it to its partial."""
    assert process.stdin is not None
    process.stdin.write(ONE_FRAME)
    process.stdin.flush()

    def written() -> bool:
        return any(
            name.endswith(".partial") and (account.storage / name).stat().st_size == 1000
            for name in snapshot(account.storage)
        )

    wait_until(written, "the put's partial")
