"""The test bed's server (testbed/server.py): the syslog sink's exact
lookups, and the accounts (names, the lock, stale ones, removal)."""

from __future__ import annotations

import fcntl
import os
import pwd
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from testbed.server import (
    ACCOUNTS_LOCK,
    OWNER_TAG,
    BackupServer,
    SyslogSink,
    accounts_lock,
    new_account_name,
    remove_account,
    remove_stale_accounts,
)


def send(path: Path, text: str) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
        sender.sendto(text.encode(), str(path))


# --- the syslog sink: exact lookups without polling -----------------------------


@pytest.mark.parametrize("round_", range(20))
def test_flush_returns_every_message_sent_before_it(tmp_path: Path, round_: int) -> None:
    # The reader thread may not have read them yet: flush must wait for it,
    # so that a lookup right after it is exact (found or not).
    sink = SyslogSink(tmp_path / "log.sock")
    try:
        sent = [f"message {round_}-{n}" for n in range(50)]
        for text in sent:
            send(sink.path, text)
        assert sink.flush() == sent
        assert sink.messages() == sent  # the marker itself is never a message
    finally:
        sink.close()


@pytest.mark.parametrize("round_", range(20))
def test_clear_forgets_a_message_sent_just_before(tmp_path: Path, round_: int) -> None:
    sink = SyslogSink(tmp_path / "log.sock")
    try:
        send(sink.path, f"before {round_}")
        sink.clear()
        send(sink.path, f"after {round_}")
        assert sink.flush() == [f"after {round_}"]
    finally:
        sink.close()


def test_wait_for_returns_as_soon_as_the_message_is_there(tmp_path: Path) -> None:
    sink = SyslogSink(tmp_path / "log.sock")
    try:
        send(sink.path, "late line")
        assert sink.wait_for("late", timeout=60) == ["late line"]
        assert sink.wait_for("never sent", timeout=0) == []
    finally:
        sink.close()


# --- accounts: names, the lock, stale ones --------------------------------------


def test_account_names_carry_the_pid_and_never_repeat() -> None:
    names = [new_account_name() for _ in range(3)]
    assert len(set(names)) == 3
    assert all(name.startswith(f"qbt-{os.getpid()}-") for name in names)


def test_this_process_may_change_accounts_inside_its_own_exclusive_hold(
    backup_server: BackupServer,  # (as root, like every user of the lock)
) -> None:
    with accounts_lock(exclusive=True), accounts_lock(exclusive=False):
        pass  # this process may still change accounts inside its own hold
    with open(ACCOUNTS_LOCK) as lock:
        fcntl.flock(lock, fcntl.LOCK_SH | fcntl.LOCK_NB)  # free again


@pytest.fixture
def orphan_owner() -> Iterator[Callable[[int], str]]:
    """Make an account as if the process PID had made it; removed afterwards."""
    made: list[str] = []

    def make(pid: int) -> str:
        name = f"qbt-{pid}-orphan"
        subprocess.run(["useradd", "--no-create-home", "--user-group", "--comment",
                        f"{OWNER_TAG}{pid}", name], check=True)
        made.append(name)
        return name

    yield make
    for name in made:
        remove_account(name)


def test_stale_accounts_are_those_of_dead_processes_only(
    backup_server: BackupServer, orphan_owner: Callable[[int], str]
) -> None:
    # Another test process (an xdist worker, another checkout) still running
    # keeps its accounts; a killed one's are removed.
    alive = subprocess.Popen(["sleep", "60"])
    dead = subprocess.Popen(["true"])
    dead.wait()
    try:
        kept = orphan_owner(alive.pid)
        removed = orphan_owner(dead.pid)
        remove_stale_accounts()
        assert pwd.getpwnam(kept).pw_name == kept
        with pytest.raises(KeyError):
            pwd.getpwnam(removed)
    finally:
        alive.kill()
        alive.wait()


def test_remove_accounts_deletes_those_made_since(backup_server: BackupServer) -> None:
    # What the `account` fixture does after each test.
    before = len(backup_server.accounts)
    first = backup_server.add_account()
    second = backup_server.add_account()
    (first.home / "backup").write_bytes(b"a test's backup")
    backup_server.remove_accounts(keep=before)
    for account in (first, second):
        with pytest.raises(KeyError):
            pwd.getpwnam(account.name)
        # Its files go too: a drill's GiBs must not outlive the test.
        assert not account.home.exists()
    assert len(backup_server.accounts) == before
