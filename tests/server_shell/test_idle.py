"""An idle put ends by itself: memory and the account's upload lock are not
held for ever by a client that stops sending."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

import qbackup_protocol as protocol
from tests.harness.server import Account, BackupServer
from tests.server_shell.client import frame_stream, put, snapshot, temporaries
from tests.server_shell.test_streams import shell_pids, start_put, wait_for

DATA = os.urandom(100_000)
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
    wait_for(lambda: process.poll() is not None, "the idle timeout", timeout=30)
    assert 1.5 < time.monotonic() - started < 20
    assert process.returncode == 65
    assert process.stderr is not None
    assert process.stderr.read() == b"qbackup-shell: no data for 2 s; the upload was abandoned\n"
    process.stdin.close()
    assert snapshot(account.storage) == before
    assert temporaries(account.storage) == []
    assert put(shell_config, account, "next", b"n").returncode == 0


def test_an_idle_put_holds_no_frame_buffers(
    shell_config: BackupServer, account: Account
) -> None:
    process = start_put(shell_config, account, "idle")
    wait_for(lambda: len(shell_pids(account)) == 1, "the shell")
    time.sleep(1)  # let it reach the first read
    status = Path(f"/proc/{shell_pids(account)[0]}/status").read_text()
    resident = next(line for line in status.splitlines() if line.startswith("VmRSS:"))
    resident_kib = int(resident.split()[1])
    process.kill()
    process.wait()
    # Measured: ~19 MiB now (the interpreter and its modules); four
    # preallocated 4 MiB frame buffers made it ~35 MiB.
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
        process.stdin.write(protocol.encode_data_header(len(piece)) + piece)
        process.stdin.flush()
        time.sleep(1.1)
    process.stdin.write(protocol.encode_end_frame(len(body), hashlib.sha256(body).digest()))
    process.stdin.close()
    assert process.wait(timeout=30) == 0
    assert (account.storage / ".slow.pending").read_bytes() == body
