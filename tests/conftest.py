"""Shared fixtures: a real sshd with real accounts whose login shell is
qbackup-shell (one per test process: each pytest-xdist worker has its own),
small tmpfs disks, and the `system` marker.

Every test that needs root, sshd or real accounts is marked `system` here, at
collection, from the fixtures it uses (SYSTEM_FIXTURES, directly or through
other fixtures): a new test gets the mark without remembering it, and
`pytest -m "not system"` runs the pure tests (parsers, protocol, name rules,
config validation) as any user, in seconds.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from testbed.server import Account, BackupServer, accounts_lock, remove_stale_accounts
from testbed.tmpfs import mounted_tmpfs

# Fixtures that start sshd, create accounts or mount filesystems. `carrier`
# asks for the server at run time (see tests/carrier_vm/conftest.py), so it is
# named here; a test marked `offline` gets a carrier that needs none of it.
SYSTEM_FIXTURES = frozenset(
    {"backup_server", "account", "carrier", "shell_config", "outside", "tmpfs", "passwd_quiet"}
)
_tmpfs_numbers = itertools.count(1)


def needs_system(item: pytest.Item) -> bool:
    """Return whether ITEM needs root, sshd or real accounts."""
    names = set(getattr(item, "fixturenames", ()))
    if item.get_closest_marker("offline") is not None:
        names.discard("carrier")
    return bool(names & SYSTEM_FIXTURES)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if needs_system(item):
            item.add_marker(pytest.mark.system)


@pytest.fixture(scope="session")
def backup_server() -> Iterator[BackupServer]:
    """One running sshd + installed shell for the whole test session (per
    xdist worker: each worker process has its own server, port and accounts)."""
    if os.geteuid() != 0:
        pytest.fail("the tests create real accounts and run sshd: run them as root (make test)")
    remove_stale_accounts()
    with BackupServer.create() as server:
        server.start()
        yield server


@pytest.fixture
def account(backup_server: BackupServer) -> Iterator[Account]:
    """A fresh account (empty storage) on the session's server. After the test
    it is deleted, with every other account the test made and their processes."""
    backup_server.syslog.clear()
    made_before = len(backup_server.accounts)
    yield backup_server.add_account()
    backup_server.remove_accounts(keep=made_before)


@pytest.fixture
def tmpfs(backup_server: BackupServer) -> Iterator[Callable[..., Path]]:
    """A function `tmpfs(size, inodes=None, owner=None) -> Path` that mounts a
    fresh tmpfs (mode 0700; OWNER an Account) under the server's directory,
    where every account can traverse to it; all are unmounted after the test."""
    with contextlib.ExitStack() as mounts:

        def mount(size: str, inodes: int | None = None, owner: Account | None = None) -> Path:
            path = backup_server.base / f"tmpfs-{next(_tmpfs_numbers)}"
            ids = None if owner is None else (owner.uid, owner.gid)
            return mounts.enter_context(mounted_tmpfs(path, size, inodes, ids))

        yield mount


@pytest.fixture
def passwd_quiet(backup_server: BackupServer) -> Iterator[None]:
    """While the test runs, no other test process of this run adds or removes
    accounts: for tests that compare /etc/passwd or /etc/shells before and after."""
    with accounts_lock(exclusive=True):
        yield
