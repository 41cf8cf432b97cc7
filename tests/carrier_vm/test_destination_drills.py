"""The fan-out's fault drills over the real sshd and the real shell: one
destination unreachable, cut twice, stalled past its progress_timeout, or
both unreachable. Every destination that committed holds the stream
byte-exact; the others hold nothing committed. Faults are placed by what was
stored (gates, waits on the server's files), never by time.

Threat covered: one server's outage costing the backup on every server (or
the carrier's memory growing without bound behind a stalled one). Residual
risk: a destination dropped from a run has no backup of that run."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import signal

from qbackup_protocol.carrier_service import CarrierExit, parse_outcomes, parse_transfer_stats
from testbed.destinations import HOME, OFFSITE, TwoDestinations
from testbed.processes import account_pids, shell_pids
from testbed.server import Account
from testbed.waiting import wait_until
from tests.carrier_vm.conftest import CARRIER_SETTINGS, Carrier, finish_put, stored_files
from tests.carrier_vm.test_resume import LongStream

MIB = 1024 * 1024
BUFFER_LOG = re.compile(rb"at most (\d+) of (\d+) buffers")


def partial_size(account: Account, name: str) -> int:
    try:
        return (account.storage / f".{name}.partial").stat().st_size
    except FileNotFoundError:
        return 0


def assert_nothing_committed(carrier: Carrier, account: Account, destination: str,
                             name: str) -> None:
    wait_until(lambda: not shell_pids(account), "the shell to exit")
    assert name not in stored_files(account)
    listing = carrier.run("list", "--from", destination)
    assert listing.returncode == 0 and name.encode() not in listing.stdout, listing.stderr


def test_one_destination_unreachable_from_the_start_the_other_commits(
    two_destinations: tuple[Carrier, TwoDestinations],
) -> None:
    carrier, two = two_destinations
    two.write_config({OFFSITE: {"resume_window": 2}}, **CARRIER_SETTINGS)
    two.proxy.down()
    data = os.urandom(6 * MIB)
    put = carrier.run("put", "down-1", data=data)
    assert put.returncode == CarrierExit.PARTIAL, put.stderr
    home, offsite = parse_outcomes(put.stdout, "down-1")
    assert home.destination == HOME and home.exit == CarrierExit.OK
    assert offsite.destination == OFFSITE and offsite.exit == CarrierExit.TEMPORARY
    assert "resume_window" in offsite.reason
    assert put.stderr.startswith(b"qbackup-carrier: offsite: ") and put.stderr.count(b"\n") == 1
    # dom0's path: commit publishes where the put staged, and says so for it only.
    commit = carrier.run("commit", "down-1")
    assert commit.returncode == CarrierExit.OK, commit.stderr
    [committed] = parse_outcomes(commit.stdout, "down-1")
    assert committed.destination == HOME
    assert (two.home.storage / "down-1").read_bytes() == data
    two.proxy.up()
    assert_nothing_committed(carrier, two.offsite, OFFSITE, "down-1")


def test_one_destination_cut_twice_mid_stream_resumes_and_both_commit(
    two_destinations: tuple[Carrier, TwoDestinations],
) -> None:
    carrier, two = two_destinations
    name = "cut-twice"
    size = 64 * MIB
    process = carrier.start("put", "--commit", name)
    stream = LongStream(process, size)
    shells = lambda: shell_pids(two.offsite)  # noqa: E731
    sessions = lambda: [pid for pid in account_pids(two.offsite)  # noqa: E731
                        if pid not in shell_pids(two.offsite)]
    # Each cut comes while stdin is held at a gate past it: the upload
    # cannot end before the second one.
    for at, victims in ((12 * MIB, shells), (40 * MIB, sessions)):
        stream.open_to(at + 12345)
        wait_until(lambda: partial_size(two.offsite, name) >= at,  # noqa: B023
                   f"{at} bytes at offsite", timeout=120)
        old = set(shell_pids(two.offsite))
        for pid in victims():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        wait_until(lambda: set(shell_pids(two.offsite)) - old, "a new shell", timeout=60)  # noqa: B023
    stream.open_to(size)
    stdout, stderr = finish_put(process, timeout=300)
    assert process.returncode == CarrierExit.OK, stderr
    digest = stream.sha256.hexdigest()
    for outcome in parse_outcomes(stdout, name):
        assert outcome.record is not None and outcome.record.sha256 == digest
        stored = two.account(outcome.destination).storage / name
        assert hashlib.sha256(stored.read_bytes()).hexdigest() == digest
    stats = carrier.run("transfer", name)
    lost = {line.destination: line.lost for line in
            (parse_transfer_stats(raw + b"\n") for raw in stats.stdout.splitlines())}
    assert lost == {HOME: 0, OFFSITE: 2}


def test_a_stalled_destination_is_dropped_and_the_buffer_stays_bounded(
    two_destinations: tuple[Carrier, TwoDestinations],
) -> None:
    carrier, two = two_destinations
    name = "stalled-1"
    buffer = 4 * MIB
    two.write_config({OFFSITE: {"progress_timeout": 2}},
                     **{**CARRIER_SETTINGS, "resume_buffer": buffer})
    process = carrier.start("put", "--commit", name, QBACKUP_CARRIER_LOG="INFO")
    stream = LongStream(process, 48 * MIB)
    stream.open_to(2 * MIB)
    wait_until(lambda: partial_size(two.offsite, name) > 0, "data at offsite", timeout=60)
    stopped = shell_pids(two.offsite)
    for pid in stopped:
        os.kill(pid, signal.SIGSTOP)  # it stops reading: a hung disk
    try:
        stream.open_to(48 * MIB)
        stdout, stderr = finish_put(process, timeout=300)
    finally:
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
    assert process.returncode == CarrierExit.PARTIAL, stderr
    home, offsite = parse_outcomes(stdout, name)
    assert home.exit == CarrierExit.OK and home.record is not None
    assert home.record.sha256 == stream.sha256.hexdigest()
    assert (offsite.exit, "dropped" in offsite.reason) == (CarrierExit.TEMPORARY, True), offsite
    assert hashlib.sha256((two.home.storage / name).read_bytes()).hexdigest() == \
        stream.sha256.hexdigest()
    # The carrier's own accounting: the buffer filled up behind the stalled
    # destination, and never past its bound.
    [(held, pool)] = BUFFER_LOG.findall(stderr)
    assert int(pool) == buffer // MIB and int(held) == int(pool)
    assert_nothing_committed(carrier, two.offsite, OFFSITE, name)


def test_both_unreachable_fails_cleanly_with_nothing_committed(
    two_destinations: tuple[Carrier, TwoDestinations],
) -> None:
    carrier, two = two_destinations
    two.write_config({HOME: {"port": two.proxy.port}}, **{**CARRIER_SETTINGS, "resume_window": 2})
    two.proxy.down()
    put = carrier.run("put", "--commit", "nowhere-1", data=os.urandom(MIB))
    assert put.returncode == CarrierExit.TEMPORARY, put.stderr
    outcomes = parse_outcomes(put.stdout, "nowhere-1")
    assert [(o.destination, o.exit) for o in outcomes] == [
        (HOME, CarrierExit.TEMPORARY), (OFFSITE, CarrierExit.TEMPORARY)]
    assert put.stderr.count(b"\n") == 2
    two.proxy.up()
    for destination in (HOME, OFFSITE):
        assert_nothing_committed(carrier, two.account(destination), destination, "nowhere-1")
        assert not [path for path in stored_files(two.account(destination)) if "nowhere" in path]
