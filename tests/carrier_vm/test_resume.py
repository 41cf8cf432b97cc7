"""Fault drills over the real sshd and the real shell: an upload (and a
download) survives lost connections by resuming, and ends byte-exact -- or,
past resume_window, fails exactly as a lost connection always did.

Threat covered: hours of upload lost to a Wi-Fi roam, an ISP reset or a
suspended laptop. Residual risk: an outage longer than resume_window still
fails the backup (dom0 retries it with a new Qubes run).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

from qbackup_protocol.carrier_service import CarrierExit, parse_transfer_stats
from testbed.client import file_sha256
from testbed.netproxy import NetProxy
from testbed.processes import account_pids, shell_pids
from testbed.waiting import wait_until
from tests.carrier_vm.conftest import (
    CARRIER_SETTINGS,
    Carrier,
    assert_one_safe_line,
    call_service,
    failed_exit,
    finish_put,
    receipt_of,
    reconfigure_proxied,
    stored_files,
)

MIB = 1024 * 1024
class Feeder:
    """Writes DATA to a put's stdin in steps the test chooses, from a thread
    (a write may block while the carrier is reconnecting)."""

    def __init__(self, process: subprocess.Popen[bytes], data: bytes) -> None:
        self.process = process
        self.data = data
        self.position = 0

    def feed_to(self, end: int) -> threading.Thread:
        start = self.position
        self.position = end
        stdin = self.process.stdin
        assert stdin is not None

        def write() -> None:
            with contextlib.suppress(BrokenPipeError):
                stdin.write(self.data[start:end])
                stdin.flush()
                if end == len(self.data):
                    stdin.close()

        thread = threading.Thread(target=write, daemon=True)
        thread.start()
        return thread


def partial_size(carrier: Carrier, name: str) -> int:
    try:
        return (carrier.account.storage / f".{name}.partial").stat().st_size
    except FileNotFoundError:
        return 0


def sshd_session_pids(carrier: Carrier) -> list[int]:
    """The account's sshd session processes (killing one drops the connection)."""
    shells = set(shell_pids(carrier.account))
    return [pid for pid in account_pids(carrier.account) if pid not in shells]


def assert_committed_byte_exact(carrier: Carrier, name: str, data: bytes, receipt: bytes) -> None:
    record = receipt_of(receipt)
    assert (record["name"], record["size"]) == (name, len(data))
    assert record["sha256"] == hashlib.sha256(data).hexdigest()
    commit = carrier.run("commit", name)
    assert commit.returncode == 0, commit.stderr
    got = carrier.run("get", name, timeout=120)
    assert got.returncode == 0, got.stderr
    assert got.stdout == data


def transfer_stats(carrier: Carrier, name: str) -> dict[str, object]:
    result = call_service(carrier, "transfer", f"{name}\n".encode())
    assert result.returncode == 0, result.stderr
    stats = parse_transfer_stats(result.stdout)
    return {"lost": stats.lost, "outages": stats.outages, "resent": stats.resent}


def kill_and_wait_for_new_session(carrier: Carrier, victims: list[int], name: str, at: int) -> None:
    """Kill VICTIMS (SIGKILL), then wait until a new shell has taken over the
    upload and the partial file has grown to AT bytes."""
    old = set(shell_pids(carrier.account))
    for pid in victims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    wait_until(lambda: set(shell_pids(carrier.account)) - old, "a new shell", timeout=60)
    wait_until(lambda: partial_size(carrier, name) >= at, f"{at} bytes stored", timeout=60)


class LongStream:
    """Feeds SIZE bytes to a put's stdin from a thread, never past a gate the
    test moves, and hashes what it wrote. The stream is 1 MiB blocks cut
    from a few random ones, each stamped with its index: it never repeats,
    so a resume from a wrong offset cannot end byte-identical, and costs
    no time to make (2 GiB are not held in memory)."""

    def __init__(self, process: subprocess.Popen[bytes], size: int) -> None:
        self.process = process
        self.size = size
        self.sha256 = hashlib.sha256()
        self.blocks = [bytearray(os.urandom(MIB)) for _ in range(3)]
        self.gate = 0
        self.changed = threading.Condition()
        self.thread = threading.Thread(target=self._feed, daemon=True)
        self.thread.start()

    def open_to(self, end: int) -> None:
        with self.changed:
            self.gate = end
            self.changed.notify()

    def _feed(self) -> None:
        stdin = self.process.stdin
        assert stdin is not None
        position = 0
        with contextlib.suppress(BrokenPipeError):
            while position < self.size:
                with self.changed:
                    self.changed.wait_for(lambda: self.gate > position)  # noqa: B023
                    gate = self.gate
                index, skip = divmod(position, MIB)
                block = self.blocks[index % len(self.blocks)]
                block[:8] = index.to_bytes(8, "big")
                piece = memoryview(block)[skip : min(MIB, skip + gate - position)]
                stdin.write(piece)
                stdin.flush()
                self.sha256.update(piece)
                position += len(piece)
            stdin.close()


def test_a_2_gib_put_survives_its_session_being_killed_three_times(
    resuming: Carrier,
) -> None:
    carrier = resuming
    name = "thrice"
    size = 2048 * MIB
    # The server's defaults (sync_interval, idle_timeout) and the carrier's
    # default buffer; keepalive and progress timeouts long enough that a
    # loaded machine loses no connection but the three the test cuts.
    carrier.server.write_shell_config("")
    carrier.write_config(
        **{**CARRIER_SETTINGS, "keepalive_interval": 5, "keepalive_count_max": 6,
           "progress_timeout": 120}
    )
    process = carrier.start("put", name)
    stream = LongStream(process, size)
    # Each kill comes while the stream is held at a gate just past it, so the
    # upload cannot end before the third kill, however fast it runs. The
    # gates are off frame boundaries: when its session is cut, the carrier
    # holds a partly filled frame and waits for stdin (Qubes slower than the
    # network), and those bytes must survive into the resumed session.
    for at, victims in (
        (300 * MIB, lambda: shell_pids(carrier.account)),  # the shell dies
        (1000 * MIB, lambda: sshd_session_pids(carrier)),  # the TCP connection drops
        (1700 * MIB, lambda: shell_pids(carrier.account)),  # the shell, late in the stream
    ):
        stream.open_to(at + 12345)
        wait_until(
            lambda: partial_size(carrier, name) >= at, f"{at} bytes stored", timeout=120  # noqa: B023
        )
        kill_and_wait_for_new_session(carrier, victims(), name, at)
    stream.open_to(size)

    stdout, stderr = finish_put(process, timeout=300)

    assert process.returncode == 0, stderr
    assert stderr == b""
    stats = transfer_stats(carrier, name)
    assert stats["lost"] == 3
    # Never more than the unacknowledged data is sent again.
    assert isinstance(stats["resent"], int) and stats["resent"] <= 3 * 32 * MIB
    record = receipt_of(stdout)
    assert (record["name"], record["size"]) == (name, size)
    assert record["sha256"] == stream.sha256.hexdigest()
    assert carrier.run("commit", name).returncode == 0
    [stored] = [path for path in stored_files(carrier.account) if Path(path).name == name]
    assert file_sha256(carrier.account.storage / stored) == stream.sha256.hexdigest()


def test_put_survives_a_network_stall_past_the_keepalive(resuming: Carrier) -> None:
    # The session's sshd process and shell are stopped: no RST, no FIN, no
    # answer to keepalives. The carrier notices, reconnects, and the server
    # ends the left-behind shell that still holds the upload lock.
    carrier = resuming
    name = "stalled"
    data = os.urandom(24 * MIB)
    process = carrier.start("put", name)
    feeder = Feeder(process, data)
    feeder.feed_to(8 * MIB)
    wait_until(lambda: partial_size(carrier, name) >= 4 * MIB, "4 MiB stored", timeout=60)
    frozen = account_pids(carrier.account)
    for pid in frozen:
        os.kill(pid, signal.SIGSTOP)
    try:
        wait_until(
            lambda: set(shell_pids(carrier.account)) - set(frozen), "the carrier to resume",
            timeout=60,
        )
        feeder.feed_to(len(data))
        stdout, stderr = finish_put(process)
    finally:
        for pid in frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
    assert process.returncode == 0, stderr
    assert transfer_stats(carrier, name)["lost"] == 1
    assert_committed_byte_exact(carrier, name, data, stdout)


def test_put_survives_the_carrier_frozen_past_keepalive_and_idle_timeout(
    resuming: Carrier,
) -> None:
    # A laptop suspend: the carrier stops for longer than its keepalive and
    # the shell's idle timeout (4 s here). The shell gives up but keeps the
    # partial upload; the carrier resumes it after waking.
    carrier = resuming
    name = "suspended"
    data = os.urandom(24 * MIB)
    process = carrier.start("put", name)
    feeder = Feeder(process, data)
    feeder.feed_to(8 * MIB)
    wait_until(lambda: partial_size(carrier, name) >= 4 * MIB, "4 MiB stored", timeout=60)
    first_shells = set(shell_pids(carrier.account))
    os.kill(process.pid, signal.SIGSTOP)
    try:
        # The server's idle timeout ends the old shell while the carrier sleeps.
        wait_until(
            lambda: not (set(shell_pids(carrier.account)) & first_shells), "the old shell to end"
        )
    finally:
        os.kill(process.pid, signal.SIGCONT)
    assert partial_size(carrier, name) >= 4 * MIB  # the partial upload was kept
    feeder.feed_to(len(data))

    stdout, stderr = finish_put(process)

    assert process.returncode == 0, stderr
    assert transfer_stats(carrier, name)["lost"] == 1
    assert_committed_byte_exact(carrier, name, data, stdout)


class SlowReader:
    """Reads a process's stdout in a thread at about RATE bytes/s (Qubes'
    restore reading slowly), so the server cannot finish before a cut, while
    the carrier's pending output keeps draining (it notices a lost session
    only once it can write again)."""

    def __init__(self, process: subprocess.Popen[bytes], rate: int = 16 * MIB) -> None:
        self.received = bytearray()
        self.stdout = process.stdout
        self.rate = rate
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.stdout is not None
        while chunk := self.stdout.read(MIB // 4):
            self.received += chunk
            time.sleep(len(chunk) / self.rate)


def test_get_survives_losing_its_connection_twice(resuming: Carrier) -> None:
    carrier = resuming
    # The shell's default idle timeout: a session must not end on its own
    # while the reader is slow.
    carrier.server.write_shell_config(f"[account {carrier.account.name}]\nsync_interval = 1M\n")
    data = os.urandom(64 * MIB)
    assert carrier.run("put", "--commit", "restore-me", data=data, timeout=180).returncode == 0
    process = carrier.start("get", "restore-me", QBACKUP_CARRIER_LOG="warning")
    assert process.stdin is not None and process.stderr is not None
    process.stdin.close()
    reader = SlowReader(process)
    wait_until(lambda: len(reader.received) >= 8 * MIB, "8 MiB received", timeout=60)
    cut_get_session(carrier, shell_pids(carrier.account))  # the shell dies
    wait_until(lambda: len(reader.received) >= 24 * MIB, "24 MiB received", timeout=60)
    cut_get_session(carrier, sshd_session_pids(carrier))  # the connection drops
    process.wait(timeout=120)
    reader.thread.join(timeout=60)
    assert process.returncode == 0
    assert bytes(reader.received) == data
    assert process.stderr.read().count(b"connection lost during the download") == 2


def cut_get_session(carrier: Carrier, victims: list[int]) -> None:
    """Kill VICTIMS of the get's session, then wait for the carrier's next session."""
    before = set(shell_pids(carrier.account))
    assert before, "no get session to cut"
    for pid in victims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    wait_until(lambda: set(shell_pids(carrier.account)) - before, "a new session", timeout=60)


def test_an_outage_shorter_than_the_window_is_resumed_and_reported(
    proxied: tuple[Carrier, NetProxy],
) -> None:
    carrier, proxy = proxied
    name = "outage"
    data = os.urandom(16 * MIB)
    process = carrier.start("put", name)
    feeder = Feeder(process, data)
    feeder.feed_to(8 * MIB)
    wait_until(lambda: partial_size(carrier, name) >= 4 * MIB, "4 MiB stored", timeout=60)
    proxy.down()
    down_at = time.monotonic()
    # The network stays down until the carrier has tried (and failed) to reconnect.
    connections = proxy.accepted
    wait_until(lambda: time.monotonic() - down_at >= 2, "2 s of outage", timeout=5)
    proxy.up()
    feeder.feed_to(len(data))

    stdout, stderr = finish_put(process)

    assert process.returncode == 0, stderr
    assert proxy.accepted > connections
    stats = transfer_stats(carrier, name)
    assert stats["lost"] == 1
    outages = stats["outages"]
    assert isinstance(outages, tuple) and len(outages) == 1 and outages[0] >= 2
    assert_committed_byte_exact(carrier, name, data, stdout)


def test_an_outage_longer_than_the_window_fails_as_a_lost_connection(
    proxied: tuple[Carrier, NetProxy],
) -> None:
    carrier, proxy = proxied
    reconfigure_proxied(carrier, proxy, resume_window=3)
    name = "gone"
    process = carrier.start("put", name)
    feeder = Feeder(process, os.urandom(16 * MIB))
    feeder.feed_to(8 * MIB)
    wait_until(lambda: partial_size(carrier, name) >= 4 * MIB, "4 MiB stored", timeout=60)
    proxy.down()
    started = time.monotonic()

    stdout, stderr = finish_put(process)

    assert process.returncode == CarrierExit.TEMPORARY, stderr
    assert time.monotonic() - started < 3 + 10
    assert b"not resumed within resume_window" in stderr
    assert_one_safe_line(stderr)
    assert failed_exit(stdout) == process.returncode
    proxy.up()
    listing = carrier.run("list")
    assert listing.returncode == 0 and name.encode() not in listing.stdout
    assert carrier.run("commit", name).returncode == CarrierExit.NO_SUCH_BACKUP
    assert name not in stored_files(carrier.account)
    assert transfer_stats(carrier, name)["lost"] == 1
    # The server cannot know the carrier gave up: it keeps the partial upload
    # resumable for partial_max_age (an hour), then the next session's sweep
    # removes it. The hour passes here by dating the partial back.
    partial = carrier.account.storage / f".{name}.partial"
    state = carrier.account.storage / f".{name}.partial-state"
    assert carrier.run("put", "--commit", "next", data=b"next backup").returncode == 0
    assert partial.exists() and state.exists()  # not expired: still resumable
    two_hours_ago = time.time() - 7200
    os.utime(partial, (two_hours_ago, two_hours_ago))
    assert carrier.run("put", "--commit", "later", data=b"later backup").returncode == 0
    assert not partial.exists() and not state.exists()
    assert stored_files(carrier.account) == [".later.sha256", ".next.sha256", "later", "next"]


def test_rate_limited_put_with_frequent_acks_succeeds(carrier: Carrier) -> None:
    # The server may acknowledge a frame's bytes while the rate limiter sleeps
    # after writing it, before the carrier has counted them as sent: that must
    # not be "acknowledged data it was never sent" (exit 65) on an honest server.
    carrier.write_config(rate_limit=2_796_216)
    carrier.server.write_shell_config(f"[account {carrier.account.name}]\nsync_interval = 1M\n")
    try:
        data = os.urandom(4 * MIB)
        put = carrier.run("put", "--commit", "paced", data=data, timeout=60)
        assert put.returncode == 0, put.stderr
        assert receipt_of(put.stdout)["sha256"] == hashlib.sha256(data).hexdigest()
    finally:
        carrier.server.write_shell_config("")
