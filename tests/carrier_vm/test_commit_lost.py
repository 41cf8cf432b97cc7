"""A commit whose session is lost: the carrier learns what happened instead
of guessing, over the real sshd and the real shell.

The kill point is gated, not timed (testbed/gated_commit.py): the commit
waits at the staged upload's lock while the test kills its session. The
left-behind shell publishes NAME and fails to write the receipt (what the
soak saw in 6 of 6 runs); only then may the carrier reconnect.

Threat: dom0 records a failed run for a backup the server committed (its
tamper check then meets a name it never recorded), or a put's first
connection fails at once during a brief outage that a second later would be
resumed. Residual risk: an outage longer than resume_window still leaves the
outcome unknown (exit 75; the listing shows it).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from qbackup_protocol.carrier_service import CarrierExit
from testbed.gated_commit import kill_the_waiting_commit, staged_upload_locked
from testbed.netproxy import NetProxy
from testbed.waiting import wait_until
from tests.carrier_vm.conftest import (
    CARRIER_SETTINGS,
    Carrier,
    assert_one_safe_line,
    failed_exit,
    finish_put,
    receipt_of,
    reconfigure_proxied,
    stored_files,
)

MIB = 1024 * 1024


def shell_log(carrier: Carrier, text: str) -> list[str]:
    assert carrier.server is not None and carrier.account is not None
    return carrier.server.syslog.wait_for(f"account={carrier.account.name} {text}", timeout=30)


def assert_listed_byte_exact(carrier: Carrier, name: str, data: bytes) -> None:
    listing = [json.loads(line) for line in carrier.run("list").stdout.splitlines()]
    [record] = [entry for entry in listing if entry.get("name") == name]
    assert (record["size"], record["sha256"]) == (len(data), hashlib.sha256(data).hexdigest())
    got = carrier.run("get", name)
    assert got.returncode == 0 and got.stdout == data, got.stderr


def test_a_commit_whose_session_dies_after_publishing_exits_0(
    proxied: tuple[Carrier, NetProxy],
) -> None:
    # dom0's path: `put NAME`, then `commit NAME` (its own carrier run).
    carrier, proxy = proxied
    name = "lost-receipt"
    data = os.urandom(2 * MIB + 7)
    put = carrier.run("put", name, data=data)
    assert put.returncode == 0, put.stderr
    with staged_upload_locked(carrier.account, name) as inode:
        commit = carrier.start("commit", name, QBACKUP_CARRIER_LOG="warning")
        kill_the_waiting_commit(proxy, inode)
    # The left-behind shell publishes, then cannot deliver the receipt.
    assert shell_log(carrier, f"command=commit {name} outcome=committed-receipt-lost")
    proxy.up()

    stdout, stderr = finish_put(commit)

    assert commit.returncode == 0, stderr
    assert receipt_of(stdout) == receipt_of(put.stdout)
    assert b"connection lost while committing" in stderr
    # Its probe: commit again (nothing staged any more), then the listing.
    assert shell_log(carrier, f"command=commit {name} outcome=missing")
    assert_listed_byte_exact(carrier, name, data)


def test_put_commit_whose_commit_session_dies_after_publishing_exits_0(
    proxied: tuple[Carrier, NetProxy],
) -> None:
    # `put --commit`: the commit follows on the put's connection. The relay
    # holds back the server's bytes while the put ends, so the test holds the
    # staged upload's lock before the carrier can even send its commit.
    carrier, proxy = proxied
    # The hold must not look like a dead network.
    reconfigure_proxied(carrier, proxy, keepalive_interval=30)
    # Whole frames (1 MiB): the carrier sends a short last frame only at EOF.
    name = "put-commit"
    data = os.urandom(2 * MIB)
    process = carrier.start("put", "--commit", name, QBACKUP_CARRIER_LOG="warning")
    assert process.stdin is not None
    process.stdin.write(data)
    process.stdin.flush()
    partial = carrier.account.storage / f".{name}.partial"
    wait_until(lambda: partial.exists() and partial.stat().st_size == len(data),
               "the whole stream in the partial upload", timeout=60)
    proxy.hold()
    process.stdin.close()  # the end frame goes out; its receipt is held back
    with staged_upload_locked(carrier.account, name) as inode:
        proxy.release()
        kill_the_waiting_commit(proxy, inode)
    assert shell_log(carrier, f"command=commit {name} outcome=committed-receipt-lost")
    proxy.up()

    stdout, stderr = finish_put(process)

    assert process.returncode == 0, stderr
    record = receipt_of(stdout)
    assert (record["size"], record["sha256"]) == (len(data), hashlib.sha256(data).hexdigest())
    assert b"connection lost while committing" in stderr
    assert_listed_byte_exact(carrier, name, data)


@pytest.mark.parametrize("staged", ["kept", "expired"])
def test_a_commit_killed_before_publishing_commits_again_or_fails_with_the_reason(
    proxied: tuple[Carrier, NetProxy], staged: str
) -> None:
    # The shell dies too, before publishing. Still staged: the carrier's probe
    # (commit again) publishes it. Gone meanwhile (expired, or the admin's
    # prune): neither staged nor listed, exit 66 with that reason.
    carrier, proxy = proxied
    name = f"killed-{staged}"
    data = os.urandom(MIB + 1)
    put = carrier.run("put", name, data=data)
    assert put.returncode == 0, put.stderr
    with staged_upload_locked(carrier.account, name) as inode:
        commit = carrier.start("commit", name, QBACKUP_CARRIER_LOG="warning")
        kill_the_waiting_commit(proxy, inode, also_the_shell=True)
    if staged == "expired":
        for suffix in ("pending", "pending-sha256"):
            (carrier.account.storage / f".{name}.{suffix}").unlink()
    proxy.up()

    stdout, stderr = finish_put(commit)

    assert b"connection lost while committing" in stderr
    if staged == "kept":
        assert commit.returncode == 0, stderr
        assert receipt_of(stdout) == receipt_of(put.stdout)
        assert shell_log(carrier, f"command=commit {name} outcome=ok")
        assert_listed_byte_exact(carrier, name, data)
    else:
        assert commit.returncode == CarrierExit.NO_SUCH_BACKUP, stderr
        assert stderr.endswith(b"neither staged nor listed on the server: nothing was committed\n")
        assert failed_exit(stdout) == commit.returncode
        assert name not in stored_files(carrier.account)


def test_a_commit_that_cannot_learn_its_outcome_within_the_window_exits_75(
    proxied: tuple[Carrier, NetProxy],
) -> None:
    carrier, proxy = proxied
    reconfigure_proxied(carrier, proxy, resume_window=2)
    name = "unknown"
    assert carrier.run("put", name, data=os.urandom(MIB)).returncode == 0
    with staged_upload_locked(carrier.account, name) as inode:
        commit = carrier.start("commit", name)
        kill_the_waiting_commit(proxy, inode)

        stdout, stderr = finish_put(commit)

    assert commit.returncode == CarrierExit.TEMPORARY, stderr
    assert b"not resumed within resume_window" in stderr
    assert_one_safe_line(stderr)
    assert failed_exit(stdout) == commit.returncode


# --- the first connection of a put --------------------------------------------


class StderrLines:
    """Collects a process's stderr lines from a thread; wait_for(TEXT) returns
    once a line containing TEXT came."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stderr is not None
        self.stream = process.stderr
        self.lines: list[bytes] = []
        self.changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.stream:
            with self.changed:
                self.lines.append(line)
                self.changed.notify_all()
        with self.changed:
            self.lines.append(b"")  # EOF
            self.changed.notify_all()

    def wait_for(self, text: bytes, timeout: float = 30) -> bool:
        with self.changed:
            return self.changed.wait_for(
                lambda: any(text in line for line in self.lines), timeout
            )

    def text(self) -> bytes:
        with self.changed:
            return b"".join(self.lines)


def test_a_put_whose_server_comes_up_after_it_started_completes(
    resuming: Carrier, tmp_path: Path
) -> None:
    # sshd restarting when the put starts: nothing listens on the port (the
    # relay's socket is bound, not listening: connections are refused). Once
    # the carrier's first attempt has failed, the listener comes up.
    carrier = resuming
    late = NetProxy(carrier.server.port, listen=False)
    try:
        key = carrier.server.known_hosts.read_text().split(None, 1)[1]
        known_hosts = tmp_path / "late_known_hosts"
        known_hosts.write_text(f"[127.0.0.1]:{late.port} {key}")
        carrier.write_config(**CARRIER_SETTINGS, port=late.port, known_hosts=str(known_hosts))
        name = "late-server"
        data = os.urandom(2 * MIB + 5)
        process = carrier.start("put", "--commit", name, QBACKUP_CARRIER_LOG="info")
        errors = StderrLines(process)
        assert errors.wait_for(b"cannot reach"), errors.text()
        late.listen()
        assert process.stdin is not None
        process.stdin.write(data)
        process.stdin.close()
        process.wait(timeout=60)
    finally:
        late.close()
        carrier.write_config(**CARRIER_SETTINGS)  # straight to sshd again

    assert process.returncode == 0, errors.text()
    assert late.accepted == 1
    assert_listed_byte_exact(carrier, name, data)


@pytest.mark.offline  # reaches no sshd: needs no account
def test_a_put_whose_server_stays_down_past_the_window_exits_75(carrier: Carrier) -> None:
    nobody = NetProxy(1, listen=False)  # bound, never listening: every connection refused
    try:
        carrier.write_config(port=nobody.port, resume_window=2)
        started = time.monotonic()
        result = carrier.run("put", "never", data=b"x" * 1000)
        elapsed = time.monotonic() - started
    finally:
        nobody.close()
    assert result.returncode == CarrierExit.TEMPORARY
    assert b"cannot reach" in result.stderr and b"resume_window" in result.stderr
    assert_one_safe_line(result.stderr)
    assert 2 <= elapsed < 2 + 8, elapsed


@pytest.mark.offline  # reaches no sshd: needs no account
def test_queries_still_fail_fast_when_the_server_is_down(carrier: Carrier) -> None:
    # dom0 asks `info` before it starts Qubes' engine: a down server must
    # fail that at once, whatever resume_window says.
    nobody = NetProxy(1, listen=False)
    try:
        carrier.write_config(port=nobody.port, resume_window=60)
        for verb in (["info"], ["list"], ["check", "x"]):
            started = time.monotonic()
            result = carrier.run(*verb)
            assert result.returncode == CarrierExit.TEMPORARY, verb
            assert time.monotonic() - started < 5, verb
    finally:
        nobody.close()
