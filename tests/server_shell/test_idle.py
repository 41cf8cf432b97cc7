"""An idle put ends by itself: memory and the account's upload lock are not
held for ever by a client that stops sending."""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from pathlib import Path

import pytest

from qbackup_protocol import wire
from testbed.client import chown_tree, frame_stream, put, snapshot
from testbed.processes import shell_pids
from testbed.server import Account, BackupServer
from testbed.waiting import wait_until
from tests.server_shell.conftest import start_put

DATA = os.urandom(100_000)
IDLE_LINE = b"qbackup-shell: no progress for the idle timeout; the session was abandoned\n"
MIB = 1024 * 1024
STALLS = {
    "before-the-first-byte": b"",
    "mid-frame": frame_stream(DATA)[:5000],
    "after-the-end-frame-without-eof": frame_stream(DATA),
}


# Threat: a client (or a dead network without a reset) opens a put and then
# sends nothing, or sends its end frame and never closes: the shell used to
# wait for ever, holding ~35 MiB and (now) the account's upload lock.
# Residual risk: each stalled put still lives for idle_timeout (default 10
# min) -- sshd's MaxStartups/MaxSessions bound how many.
@pytest.mark.parametrize("sent", STALLS.values(), ids=STALLS.keys())
def test_a_stalled_put_times_out_cleanly_and_frees_the_upload_lock(
    shell_config: BackupServer, account: Account, sent: bytes
) -> None:
    shell_config.write_shell_config(f"[account {account.name}]\nidle_timeout = 2s\n")
    before = snapshot(account.storage)
    process = start_put(shell_config, account, "stalled")
    assert process.stdin is not None
    process.stdin.write(sent)
    process.stdin.flush()
    started = time.monotonic()
    wait_until(lambda: process.poll() is not None, "the idle timeout", timeout=30)
    assert 1.5 < time.monotonic() - started < 20
    assert process.returncode == 74
    assert process.stderr is not None
    assert process.stderr.read() == IDLE_LINE
    process.stdin.close()
    # A stalled client may come back (a suspended laptop): what arrived is
    # kept as a hidden partial for a resume; nothing else changed.
    new = set(snapshot(account.storage)) - set(before)
    assert new == {".stalled.partial", ".stalled.partial-state"}
    assert put(shell_config, account, "next", b"n").returncode == 0


def test_an_idle_put_holds_no_frame_buffers(
    shell_config: BackupServer, account: Account
) -> None:
    process = start_put(shell_config, account, "idle")
    wait_until(lambda: len(shell_pids(account)) == 1, "the shell")
    time.sleep(1)  # let it reach the first read
    status = Path(f"/proc/{shell_pids(account)[0]}/status").read_text()
    resident = next(line for line in status.splitlines() if line.startswith("VmRSS:"))
    resident_kib = int(resident.split()[1])
    process.kill()
    process.wait()
    # Measured: ~19 MiB now (the interpreter, its modules, one 1 MiB read
    # buffer); four preallocated 4 MiB frame buffers once made it ~35 MiB.
    assert resident_kib < 27 * 1024, resident_kib


def test_a_slow_but_steady_put_is_not_timed_out(
    shell_config: BackupServer, account: Account
) -> None:
    shell_config.write_shell_config(f"[account {account.name}]\nidle_timeout = 2s\n")
    process = start_put(shell_config, account, "slow")
    assert process.stdin is not None
    body = b""
    for index in range(4):  # 4.5 s in all, never 2 s without a byte
        piece = bytes([index]) * 1000
        body += piece
        process.stdin.write(wire.encode_data_header(len(piece)) + piece)
        process.stdin.flush()
        time.sleep(1.1)
    process.stdin.write(wire.encode_end_frame(len(body), hashlib.sha256(body).digest()))
    process.stdin.close()
    assert process.wait(timeout=30) == 0
    assert (account.storage / ".slow.pending").read_bytes() == body


def start(server: BackupServer, account: Account, command: str) -> subprocess.Popen[bytes]:
    """Start COMMAND over ssh with a stdout nobody ever reads."""
    return subprocess.Popen([*server.ssh_command(account), command], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def session_locks(account: Account) -> int:
    """How many sessions of ACCOUNT hold a slot (POSIX locks on its sessions lock)."""
    info = os.stat(account.storage / ".qbackup-sessions.lock")
    device = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
    return sum(
        1 for line in Path("/proc/locks").read_text().splitlines()
        if line.split()[1:2] == ["POSIX"] and device in line.split()
    )


def many_backups(account: Account, count: int) -> None:
    """COUNT committed backups with long names, written straight to disk
    (a listing larger than every pipe and SSH window between shell and client)."""
    directory = account.storage / "many"
    directory.mkdir()
    digest = hashlib.sha256(b"").hexdigest()
    for index in range(count):
        name = f"{index:06d}-" + "x" * 90
        (directory / name).write_bytes(b"")
        (directory / f".{name}.sha256").write_text(f'{{"size": 0, "sha256": "{digest}"}}\n')
    chown_tree(directory, account)


# Threat: sessions that never read. 30 `get`s whose client never
# read held 30 shell processes for ever. Each is now ended after idle_timeout
# without progress. Residual risk: up to max_sessions of them live that long.
@pytest.mark.parametrize("verb", ["get", "list"])
def test_a_session_whose_client_never_reads_times_out(
    shell_config: BackupServer, account: Account, verb: str
) -> None:
    if verb == "get":
        assert put(shell_config, account, "big", os.urandom(24 * MIB)).returncode == 0
    else:
        many_backups(account, 30_000)
    shell_config.write_shell_config(f"[account {account.name}]\nidle_timeout = 2s\n")
    command = "get big" if verb == "get" else "list"
    process = start(shell_config, account, command)
    try:
        # Never read: the shell's write blocks once every buffer on the way is
        # full; the idle timeout ends the shell (its exit status and stderr
        # wait behind the unread data, in sshd, which the client never reads).
        line = f"account={account.name} command={command} outcome=interrupted"
        wait_until(lambda: shell_config.syslog.wait_for(line, timeout=0), "the idle timeout", 60)
        wait_until(lambda: not shells(account), "the shell to exit")
    finally:
        process.kill()
        process.wait()


def shells(account: Account) -> list[int]:
    """The running qbackup-shell processes of ACCOUNT, whatever their command."""
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.stat(f"/proc/{entry}").st_uid == account.uid and b"qbackup-shell" in Path(
                f"/proc/{entry}/cmdline"
            ).read_bytes():
                found.append(int(entry))
        except OSError:
            continue
    return found


# Threat: no cap on sessions per account (566 MiB for 30 shells).
def test_sessions_beyond_the_cap_are_refused_with_69(
    shell_config: BackupServer, account: Account
) -> None:
    assert put(shell_config, account, "big", os.urandom(24 * MIB)).returncode == 0
    shell_config.write_shell_config(
        f"[account {account.name}]\nmax_sessions = 2\nidle_timeout = 30s\n"
    )
    holders = [start(shell_config, account, "get big") for _ in range(2)]
    try:
        wait_until(lambda: session_locks(account) == 2, "two sessions holding slots", timeout=30)
        for command in ("info", "list", "check big", "put x"):
            result = shell_config.run(account, command)
            assert (result.returncode, result.stdout) == (69, b""), result.stderr
            assert result.stderr == (
                b"qbackup-shell: too many sessions of this account at once (at most 2)\n"
            )
    finally:
        for holder in holders:
            holder.kill()
            holder.wait()
    wait_until(lambda: session_locks(account) == 0, "the slots to be free", timeout=30)
    assert shell_config.run(account, "info").returncode == 0
