"""Broken, interrupted and racing uploads: NAME never appears, the temporary
never survives (except a kill -9, whose leftover is hidden and cleaned later)."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from qbackup_protocol import wire
from testbed.client import frame_stream, put, run_admin, snapshot
from testbed.processes import shell_pids
from testbed.server import Account, BackupServer
from testbed.waiting import wait_until
from tests.server_shell.conftest import ONE_FRAME_BODY, feed_until_partial, start_put

DATA = os.urandom(3 * 1024 * 1024 + 11)
GOOD = frame_stream(DATA)
END = wire.encode_end_frame(len(DATA), hashlib.sha256(DATA).digest())


GARBAGE = random.Random(7).randbytes(200_000)
UNFRAMED = random.Random(8).randbytes(len(DATA))
assert GARBAGE[:1] not in (b"D", b"E") and UNFRAMED[:1] not in (b"D", b"E")
OFFSET_LINE = b'{"offset":0}\n'


# Threat: a stream that breaks the protocol must never be staged, and its
# bytes must not linger: the partial goes at once (nothing to resume).
@pytest.mark.parametrize(
    "stream",
    [
        pytest.param(b"X\x00\x00\x00\x01x" + END, id="unknown-frame-type"),
        pytest.param(b"D\x00\x00\x00\x00" + END, id="empty-data-frame"),
        pytest.param(
            b"D" + (wire.MAX_DATA_FRAME + 1).to_bytes(4, "big") + b"x" * 64,
            id="oversized-frame",
        ),
        pytest.param(b"E\x00\x00\x00\x05hello", id="end-frame-wrong-length"),
        pytest.param(frame_stream(DATA, declared_size=len(DATA) + 1), id="wrong-declared-size"),
        pytest.param(frame_stream(DATA, declared_digest=b"\x00" * 32), id="wrong-declared-digest"),
        pytest.param(GOOD + b"\x00", id="trailing-byte"),
        pytest.param(GOOD + END, id="second-end-frame"),
        pytest.param(GARBAGE, id="random-garbage"),
        pytest.param(UNFRAMED, id="unframed-data"),
    ],
)
def test_broken_stream_is_refused_and_leaves_nothing(
    backup_server: BackupServer, account: Account, stream: bytes
) -> None:
    before = snapshot(account.storage)
    result = backup_server.run(account, "put dir/victim", stream)
    assert result.returncode == 65, result.stderr
    assert result.stderr.startswith(b"qbackup-shell: ") and result.stderr.count(b"\n") == 1
    assert result.stdout == OFFSET_LINE
    assert snapshot(account.storage) == before  # the directory it made is gone too


# A stream that just ends early is a lost client: what arrived is
# kept, hidden, for a resume; nothing is listed or staged.
@pytest.mark.parametrize(
    "stream",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"D\x00", id="short-header"),
        pytest.param(wire.encode_data_header(100) + b"x" * 50, id="short-payload"),
        pytest.param(GOOD[: -len(END)], id="no-end-frame"),
        pytest.param(GOOD[:-1], id="end-frame-cut"),
    ],
)
def test_truncated_stream_is_refused_and_kept_only_as_a_hidden_partial(
    backup_server: BackupServer, account: Account, stream: bytes
) -> None:
    before = snapshot(account.storage)
    result = backup_server.run(account, "put victim", stream)
    # A lost client, like a signal or the idle timeout: one code, 74 (not a data error).
    assert result.returncode == 74, result.stderr
    assert result.stderr == b"qbackup-shell: stream ended without an end frame (truncated upload)\n"
    new = set(snapshot(account.storage)) - set(before)
    assert new == {".victim.partial", ".victim.partial-state"}
    listing = backup_server.run(account, "list")
    assert listing.stdout == b'{"count":0,"end":true,"truncated":false}\n'
    assert backup_server.run(account, "commit victim").returncode == 66


def partials(root: Path) -> list[str]:
    return sorted(name for name in snapshot(root) if ".partial" in name)


def test_client_killed_mid_stream_keeps_a_resumable_partial(
    backup_server: BackupServer, account: Account
) -> None:
    process = start_put(backup_server, account, "victim")
    feed_until_partial(process, account)
    process.kill()  # the ssh client dies: sshd closes the shell's stdin
    process.wait()
    wait_until(lambda: not shell_pids(account), "the shell to exit")
    assert partials(account.storage) == [".victim.partial", ".victim.partial-state"]
    assert backup_server.run(account, "list").stdout.startswith(b'{"count":0,')


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_signal_to_the_shell_mid_stream_ends_it_as_interrupted(
    backup_server: BackupServer, account: Account, signum: int
) -> None:
    process = start_put(backup_server, account, "victim")
    feed_until_partial(process, account)
    pids = shell_pids(account)
    assert len(pids) == 1
    os.kill(pids[0], signum)
    _, stderr = process.communicate(timeout=15)
    assert process.returncode == 74
    name = signal.Signals(signum).name
    assert stderr == f"qbackup-shell: interrupted by signal {name}\n".encode()
    assert partials(account.storage) == [".victim.partial", ".victim.partial-state"]


# Threat: racing puts. Two puts of one name must never both stage (append-only);
# and puts of one account side by side would each spend the whole quota and
# reserve (the guard measures them once, at the start). Residual risk: a
# second upload must wait until the first has ended (69 meanwhile).
def test_concurrent_puts_of_one_name_exactly_one_stages(
    backup_server: BackupServer, account: Account
) -> None:
    first = start_put(backup_server, account, "race")
    feed_until_partial(first, account)
    # The first holds the account's upload lock: the second is refused at
    # once, before it reads a byte (it would be 73 at the link otherwise).
    second = backup_server.run(account, "put race", GOOD)
    assert second.returncode == 69, second.stderr
    assert b"another upload to this account is in progress" in second.stderr
    assert first.stdin is not None
    body = ONE_FRAME_BODY
    first.stdin.write(wire.encode_end_frame(len(body), hashlib.sha256(body).digest()))
    first.stdin.close()
    assert first.wait(timeout=30) == 0
    assert (account.storage / ".race.pending").read_bytes() == body
    assert partials(account.storage) == []
    assert sorted(os.listdir(account.storage)) == [
        ".qbackup-sessions.lock", ".qbackup-upload.lock", ".race.pending", ".race.pending-sha256",
        ".ssh",
    ]
    assert backup_server.run(account, "commit race").returncode == 0
    assert (account.storage / "race").read_bytes() == body


def test_crash_leftover_is_hidden_then_removed_by_a_later_put_once_expired(
    backup_server: BackupServer, account: Account
) -> None:
    process = start_put(backup_server, account, "dir/crashed")
    feed_until_partial(process, account)
    pids = shell_pids(account)
    os.kill(pids[0], signal.SIGKILL)  # no chance to clean up: a real crash
    process.communicate(timeout=15)
    leftovers = partials(account.storage)
    assert leftovers == ["dir/.crashed.partial", "dir/.crashed.partial-state"]
    listing = backup_server.run(account, "list")
    assert listing.stdout == b'{"count":0,"end":true,"truncated":false}\n'
    # Younger than partial_max_age (1h): resumable, a later put leaves it.
    assert put(backup_server, account, "dir/next", b"n").returncode == 0
    assert partials(account.storage) == leftovers
    old = time.time() - 3601
    os.utime(account.storage / leftovers[0], (old, old))
    assert put(backup_server, account, "other/after", b"a").returncode == 0
    assert partials(account.storage) == []
    assert not (account.storage / "dir/crashed").exists()


def test_a_live_puts_partial_is_never_removed(
    backup_server: BackupServer, account: Account
) -> None:
    slow = start_put(backup_server, account, "dir/slow")
    feed_until_partial(slow, account)
    live = partials(account.storage)
    old = time.time() - 7200  # even if it looks expired (a stalled client)
    os.utime(account.storage / live[0], (old, old))
    # No other put can run meanwhile (the upload lock); the admin's prune can.
    prune = run_admin(backup_server, "prune", "--account", account.name, "--keep-daily", "1")
    assert prune.returncode == 0, prune.stderr
    assert partials(account.storage) == live
    assert slow.stdin is not None
    body = ONE_FRAME_BODY
    slow.stdin.write(wire.encode_end_frame(len(body), hashlib.sha256(body).digest()))
    slow.stdin.close()
    assert slow.wait(timeout=30) == 0
    assert backup_server.run(account, "commit dir/slow").returncode == 0
    assert (account.storage / "dir/slow").read_bytes() == body


# Replaces the writer-thread signal test (the thread is gone): the
# promise was that a signal during an upload never leaves a file written
# behind the shell's back. Now: a SIGTERM at any point leaves the partial
# consistent -- its state record names an offset the file holds, and the
# SHA-256 of exactly those bytes -- so a resume continues correctly.
def test_a_signal_mid_upload_leaves_a_consistent_resumable_partial(
    shell_config: BackupServer, account: Account
) -> None:
    shell_config.write_shell_config(f"[account {account.name}]\nsync_interval = 1M\n")
    data = DATA[: 2 * 1024 * 1024 + 5000]
    process = start_put(shell_config, account, "victim")
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write(frame_stream(data)[: -len(END)])
    process.stdin.flush()
    lines = [process.stdout.readline() for _ in range(3)]  # offset, ack 1M, ack 2M
    assert lines[2] == b'{"ack":2097152}\n', lines
    wait_until(lambda: (account.storage / ".victim.partial").stat().st_size == len(data), "data")
    os.kill(shell_pids(account)[0], signal.SIGTERM)
    process.communicate(timeout=15)
    assert process.returncode == 74
    state = json.loads((account.storage / ".victim.partial-state").read_text())
    kept = (account.storage / ".victim.partial").read_bytes()
    assert state["offset"] == 2 * 1024 * 1024 <= len(kept)
    assert state["sha256"] == hashlib.sha256(kept[: state["offset"]]).hexdigest()
    assert kept[: state["offset"]] == data[: state["offset"]]


# Threat: StorageError was an OSError, so a SIGPIPE/EPIPE during
# `list` (the client went away) ended as a data error (65). It is an
# interrupted session now: 74, "interrupted by signal SIGPIPE".
def test_a_broken_pipe_during_list_is_not_a_data_error(
    backup_server: BackupServer, account: Account
) -> None:
    assert put(backup_server, account, "one", b"1").returncode == 0
    read_end, write_end = os.pipe()
    os.close(read_end)  # nobody will ever read the listing
    try:
        result = subprocess.run(
            ["setpriv", f"--reuid={account.uid}", f"--regid={account.gid}", "--clear-groups",
             str(backup_server.shell_path), "-c", "list"],
            stdout=write_end, stderr=subprocess.PIPE, timeout=60, check=False,
            env={"PATH": "/usr/bin:/bin", "HOME": str(account.home)},
        )
    finally:
        os.close(write_end)
    assert (result.returncode, result.stderr) == (
        74, b"qbackup-shell: interrupted by signal SIGPIPE\n")


# Threat: 1-byte data frames cost ~100x the CPU per
# byte (1 MiB in 1-byte frames: 5.3 s). Residual risk: the first 1024 frames
# may be of any size; after them the average must be at least 4 KiB.
def test_a_stream_of_tiny_frames_is_refused(
    backup_server: BackupServer, account: Account
) -> None:
    before = snapshot(account.storage)
    tiny = b"".join(wire.encode_data_header(1) + b"x" for _ in range(2000))
    stream = tiny + wire.encode_end_frame(2000, hashlib.sha256(b"x" * 2000).digest())
    result = backup_server.run(account, "put tiny", stream)
    assert (result.returncode, result.stderr) == (
        65, b"qbackup-shell: data frames too small (under 4 KiB on average)\n")
    assert snapshot(account.storage) == before
