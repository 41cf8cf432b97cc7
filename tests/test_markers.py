"""The marks tests/conftest.py gives at collection: `system` from the fixtures
a test uses, and a `machine_wide` test runs alone (it holds the accounts lock
exclusively)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from testbed.server import ACCOUNTS_LOCK, BackupServer


def test_a_pure_test_is_not_marked_system(request: pytest.FixtureRequest) -> None:
    assert request.node.get_closest_marker("system") is None


def test_a_test_using_the_server_is_marked_system(
    backup_server: BackupServer, request: pytest.FixtureRequest
) -> None:
    assert request.node.get_closest_marker("system") is not None


@pytest.mark.machine_wide
def test_a_machine_wide_test_holds_off_every_account_change(
    request: pytest.FixtureRequest,
) -> None:
    assert request.node.get_closest_marker("system") is not None
    probe = (
        "import fcntl, sys; lock = open(sys.argv[1]);"
        " fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)"
    )
    other = subprocess.run([sys.executable, "-c", probe, str(ACCOUNTS_LOCK)],
                           capture_output=True, check=False)
    assert other.returncode != 0 and b"BlockingIOError" in other.stderr
