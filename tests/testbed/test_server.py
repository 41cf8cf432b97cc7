"""The test bed itself: what the other tests rely on it for."""

from __future__ import annotations

import fcntl
import os
import pwd
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from testbed import openssh
from testbed.carrier import carrier_config
from testbed.server import (
    ACCOUNTS_LOCK,
    OWNER_TAG,
    Account,
    BackupServer,
    SyslogSink,
    accounts_lock,
    new_account_name,
    remove_account,
    remove_stale_accounts,
)
from testbed.tmpfs import mounted_tmpfs

ENDPOINT = openssh.Endpoint(port=2222, identity=Path("/k/id"), known_hosts=Path("/k/known"))


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


# --- OpenSSH command lines and carrier configs -----------------------------------


def test_every_client_pins_the_host_key_and_never_prompts() -> None:
    for argv in (
        openssh.ssh_argv(ENDPOINT, "u"),
        openssh.scp_argv(ENDPOINT, "u", Path("/src"), "dst"),
        openssh.sftp_argv(ENDPOINT, "u"),
    ):
        options = " ".join(argv)
        assert "-o UserKnownHostsFile=/k/known -o StrictHostKeyChecking=yes" in options
        assert "-o BatchMode=yes -o IdentitiesOnly=yes" in options
        assert "-i /k/id" in options and "-F /dev/null" in options
    assert openssh.ssh_argv(ENDPOINT, "u", "-tt")[-2:] == ["-tt", "u@127.0.0.1"]
    assert openssh.ssh_argv(ENDPOINT, "u")[1:3] == ["-p", "2222"]
    assert openssh.scp_argv(ENDPOINT, "u", Path("/src"), "dst", "-O")[1:3] == ["-P", "2222"]
    assert openssh.scp_argv(ENDPOINT, "u", Path("/src"), "dst", "-O")[-3:] == [
        "-O", "/src", "u@127.0.0.1:dst"]
    assert openssh.sftp_argv(ENDPOINT, "u", "-b", "f")[-3:] == ["-b", "f", "u@127.0.0.1"]


def test_carrier_config_pins_the_key_and_takes_overrides_even_for_user() -> None:
    text = carrier_config(ENDPOINT, "u", user="other", known_hosts=None, rate_limit=5)
    assert text.splitlines() == [
        "host: 127.0.0.1",
        "port: 2222",
        "user: other",
        "identity_file: /k/id",
        "known_hosts: null",
        "connect_timeout: 10",
        "ssh_config: null",
        "rate_limit: 5",
    ]


# --- markers ---------------------------------------------------------------------


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
        kept, removed = orphan_owner(alive.pid), orphan_owner(dead.pid)
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


# --- tmpfs -----------------------------------------------------------------------


def test_mounted_tmpfs_is_small_owned_and_gone_afterwards(
    backup_server: BackupServer, account: Account
) -> None:
    path = backup_server.base / "tmpfs-under-test"
    with mounted_tmpfs(path, "1m", inodes=50, owner=(account.uid, account.gid)) as mount:
        assert os.path.ismount(mount)
        info = os.statvfs(mount)
        assert info.f_blocks * info.f_frsize == 1024 * 1024 and info.f_files == 50
        assert (mount.stat().st_uid, mount.stat().st_mode & 0o777) == (account.uid, 0o700)
    assert not path.exists()
