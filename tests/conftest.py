"""Shared fixtures: a real sshd with real accounts whose login shell is qbackup-shell."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.harness.server import Account, BackupServer, remove_stale_accounts


@pytest.fixture(scope="session")
def backup_server() -> Iterator[BackupServer]:
    """One running sshd + installed shell for the whole test session."""
    if os.geteuid() != 0:
        pytest.fail("the tests create real accounts and run sshd: run them as root (make test)")
    remove_stale_accounts()
    with BackupServer.create() as server:
        server.start()
        yield server


@pytest.fixture
def account(backup_server: BackupServer) -> Account:
    """A fresh account (empty storage) on the session's server."""
    backup_server.syslog.clear()
    return backup_server.add_account()
