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
SYSTEM_FIXTURES = frozenset({"backup_server", "account", "carrier", "shell_config", "outside",
                             "tmpfs"})
# Tests that change or compare machine-wide files (/etc/passwd, /etc/shells)
# themselves: those of these modules and those using these fixtures; any other
# says so with the `machine_wide` marker.
MACHINE_WIDE_MODULES = frozenset({
    "tests/server_shell/test_setup_account.py",
    "tests/server_shell/test_setup_account_key_line.py",
})
MACHINE_WIDE_FIXTURES = frozenset({"storage_name"})  # tests/test_install_targets.py
TESTS = Path(__file__).resolve().parent
_tmpfs_numbers = itertools.count(1)


def is_machine_wide(item: pytest.Item) -> bool:
    """Return whether ITEM changes or compares /etc/passwd or /etc/shells."""
    module = Path(str(item.path)).resolve().relative_to(TESTS.parent).as_posix()
    return (
        module in MACHINE_WIDE_MODULES
        or bool(set(getattr(item, "fixturenames", ())) & MACHINE_WIDE_FIXTURES)
        or item.get_closest_marker("machine_wide") is not None
    )


def needs_system(item: pytest.Item) -> bool:
    """Return whether ITEM needs root, sshd or real accounts."""
    names = set(getattr(item, "fixturenames", ()))
    if item.get_closest_marker("offline") is not None:
        names.discard("carrier")
    return bool(names & SYSTEM_FIXTURES) or is_machine_wide(item)


def pytest_itemcollected(item: pytest.Item) -> None:
    if is_machine_wide(item):
        item.add_marker(pytest.mark.machine_wide)
    if needs_system(item):
        item.add_marker(pytest.mark.system)


# A machine-wide test runs alone: it holds the accounts lock exclusively, so no
# other test process of this run adds or removes an account meanwhile (it may
# compare /etc/passwd before and after) or runs another machine-wide test (each
# saves and restores /etc/shells). For the modules, the hold spans the module,
# their module-scoped fixtures included.
@pytest.fixture(scope="module", autouse=True)
def _machine_wide_module_alone(request: pytest.FixtureRequest) -> Iterator[None]:
    module = Path(str(request.path)).resolve().relative_to(TESTS.parent).as_posix()
    if module not in MACHINE_WIDE_MODULES:
        yield
        return
    with accounts_lock(exclusive=True):
        yield


@pytest.fixture(autouse=True)
def _machine_wide_test_alone(request: pytest.FixtureRequest) -> Iterator[None]:
    if request.node.get_closest_marker("machine_wide") is None:
        yield
        return
    with accounts_lock(exclusive=True):  # a no-op inside the module's hold
        yield


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
