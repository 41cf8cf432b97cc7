"""Broken, interrupted and racing uploads: NAME never appears, the temporary
never survives (except a kill -9, whose leftover is hidden and cleaned later)."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

import qbackup_protocol as protocol
from tests.harness.server import Account, BackupServer
from tests.server_shell.client import frame_stream, put, snapshot, temporaries

DATA = os.urandom(3 * 1024 * 1024 + 11)
GOOD = frame_stream(DATA)
END = protocol.encode_end_frame(len(DATA), hashlib.sha256(DATA).digest())
ONE_FRAME = protocol.encode_data_header(1000) + DATA[:1000]


@pytest.mark.parametrize(
    "stream",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"D\x00", id="short-header"),
        pytest.param(protocol.encode_data_header(100) + b"x" * 50, id="short-payload"),
        pytest.param(GOOD[: -len(END)], id="no-end-frame"),
        pytest.param(GOOD[:-1], id="end-frame-cut"),
        pytest.param(b"X\x00\x00\x00\x01x" + END, id="unknown-frame-type"),
        pytest.param(b"D\x00\x00\x00\x00" + END, id="empty-data-frame"),
        pytest.param(
            b"D" + (protocol.MAX_DATA_FRAME + 1).to_bytes(4, "big") + b"x" * 64,
            id="oversized-frame",
        ),
        pytest.param(b"E\x00\x00\x00\x05hello", id="end-frame-wrong-length"),
        pytest.param(frame_stream(DATA, declared_size=len(DATA) + 1), id="wrong-declared-size"),
        pytest.param(frame_stream(DATA, declared_digest=b"\x00" * 32), id="wrong-declared-digest"),
        pytest.param(GOOD + b"\x00", id="trailing-byte"),
        pytest.param(GOOD + END, id="second-end-frame"),
        pytest.param(os.urandom(200_000), id="random-garbage"),
        pytest.param(DATA, id="unframed-data"),
    ],
)
def test_broken_stream_is_refused_and_leaves_nothing(
    backup_server: BackupServer, account: Account, stream: bytes
) -> None:
    before = snapshot(account.storage)
    result = backup_server.run(account, "put victim", stream)
    assert result.returncode == 65, result.stderr
    assert result.stderr.startswith(b"qbackup-shell: ") and result.stderr.count(b"\n") == 1
    assert result.stdout == b""
    assert snapshot(account.storage) == before


def start_put(server: BackupServer, account: Account, name: str) -> subprocess.Popen[bytes]:
    """Start `put NAME` over ssh, stdin left open for the test to feed."""
    return subprocess.Popen(
        [*server.ssh_command(account), f"put {name}"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def wait_for(condition, what: str, timeout: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def shell_pids(account: Account) -> list[int]:
    """The running qbackup-shell processes of ACCOUNT (found via /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}").st_uid != account.uid:
                continue
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if b"qbackup-shell" in cmdline and b"put" in cmdline:
            found.append(int(entry))
    return found


def feed_until_temporary(
    process: subprocess.Popen[bytes], account: Account, count: int = 1
) -> None:
    assert process.stdin is not None
    process.stdin.write(ONE_FRAME)
    process.stdin.flush()
    wait_for(lambda: len(temporaries(account.storage)) >= count, "the put's temporary")


def test_client_killed_mid_stream_leaves_nothing(
    backup_server: BackupServer, account: Account
) -> None:
    before = snapshot(account.storage)
    process = start_put(backup_server, account, "victim")
    feed_until_temporary(process, account)
    process.kill()  # the ssh client dies: sshd closes the shell's stdin
    process.wait()
    wait_for(lambda: not shell_pids(account), "the shell to exit")
    assert snapshot(account.storage) == before


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_signal_to_the_shell_mid_stream_leaves_nothing(
    backup_server: BackupServer, account: Account, signum: int
) -> None:
    before = snapshot(account.storage)
    process = start_put(backup_server, account, "victim")
    feed_until_temporary(process, account)
    pids = shell_pids(account)
    assert len(pids) == 1
    os.kill(pids[0], signum)
    _, stderr = process.communicate(timeout=15)
    assert process.returncode == 65
    assert b"qbackup-shell: interrupted" in stderr
    assert snapshot(account.storage) == before


# Threat: racing puts. Two puts of one name must never both stage (append-only);
# and puts of one account side by side would each spend the whole quota and
# reserve (the guard measures them once, at the start). Residual risk: a
# second upload must wait until the first has ended (69 meanwhile).
def test_concurrent_puts_of_one_name_exactly_one_stages(
    backup_server: BackupServer, account: Account
) -> None:
    first = start_put(backup_server, account, "race")
    feed_until_temporary(first, account, 1)
    # The first holds the account's upload lock: the second is refused at
    # once, before it reads a byte (it would be 73 at the link otherwise).
    second = backup_server.run(account, "put race", GOOD)
    assert second.returncode in (69, 73), second.stderr
    assert b"another upload to this account is in progress" in second.stderr
    assert first.stdin is not None
    body = DATA[:1000]
    first.stdin.write(protocol.encode_end_frame(len(body), hashlib.sha256(body).digest()))
    first.stdin.close()
    assert first.wait(timeout=30) == 0
    assert (account.storage / ".race.pending").read_bytes() == body
    assert temporaries(account.storage) == []
    assert sorted(os.listdir(account.storage)) == [
        ".qbackup-upload.lock", ".race.pending", ".race.pending-sha256", ".ssh",
    ]
    assert backup_server.run(account, "commit race").returncode == 0
    assert (account.storage / "race").read_bytes() == body


def test_crash_leftover_is_hidden_then_removed_by_a_later_put(
    backup_server: BackupServer, account: Account
) -> None:
    process = start_put(backup_server, account, "dir/crashed")
    feed_until_temporary(process, account)
    pids = shell_pids(account)
    os.kill(pids[0], signal.SIGKILL)  # no chance to clean up: a real crash
    process.communicate(timeout=15)
    leftovers = temporaries(account.storage)
    assert len(leftovers) == 1
    listing = backup_server.run(account, "list")
    assert listing.stdout == b'{"count":0,"end":true,"truncated":false}\n'
    # Younger than the stale age: a later put must leave it (it might be live).
    assert put(backup_server, account, "dir/next", b"n").returncode == 0
    assert temporaries(account.storage) == leftovers
    old = time.time() - 3600
    os.utime(account.storage / leftovers[0], (old, old))
    assert put(backup_server, account, "dir/after", b"a").returncode == 0
    assert temporaries(account.storage) == []
    assert not (account.storage / "dir/crashed").exists()


def test_a_live_puts_temporary_is_never_removed(
    backup_server: BackupServer, account: Account
) -> None:
    slow = start_put(backup_server, account, "dir/slow")
    feed_until_temporary(slow, account)
    live = temporaries(account.storage)
    old = time.time() - 3600  # even if it looks old (a stalled client)
    os.utime(account.storage / live[0], (old, old))
    # No other put can run meanwhile (the upload lock); the admin's prune can.
    prune = subprocess.run(
        [str(backup_server.shell_path), "prune", "--account", account.name, "--keep-last", "1"],
        capture_output=True, timeout=60, check=False, env={"PATH": "/usr/bin:/bin"},
    )
    assert prune.returncode == 0, prune.stderr
    assert temporaries(account.storage) == live
    assert slow.stdin is not None
    body = DATA[:1000]
    slow.stdin.write(protocol.encode_end_frame(len(body), hashlib.sha256(body).digest()))
    slow.stdin.close()
    assert slow.wait(timeout=30) == 0
    assert backup_server.run(account, "commit dir/slow").returncode == 0
    assert (account.storage / "dir/slow").read_bytes() == body
