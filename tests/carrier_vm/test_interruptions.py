"""Transfers cut short: the carrier never reports success and NAME never appears.

Threat: a backup that was interrupted (network, signal, full disk) must not
look like a stored backup; dom0 would otherwise trust a truncated copy.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from testbed.processes import shell_pids
from tests.carrier_vm.conftest import (
    CHUNK,
    Carrier,
    assert_never_stored,
    assert_one_safe_line,
    failed_exit,
    start_put,
    stored_files,
)


def test_killed_server_session_fails_the_put_without_resumption(carrier: Carrier) -> None:
    # resume_window 0 switches resumption off: a lost session is final.
    carrier.write_config(resume_window=0)
    process = start_put(carrier, "cut")
    for pid in shell_pids(carrier.account):
        os.kill(pid, signal.SIGKILL)
    try:
        _, stderr = process.communicate(timeout=30)
    except BrokenPipeError:
        _, stderr = process.communicate(timeout=30)
    assert process.returncode == 75
    assert_one_safe_line(stderr)
    assert_never_stored(carrier, "cut")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_signal_aborts_the_put_without_committing(carrier: Carrier, signum: int) -> None:
    process = start_put(carrier, "aborted")
    process.send_signal(signum)
    # stdin stays open, as Qubes keeps it after a Cancel (closing it here
    # would race the signal with a complete stream).
    process.wait(timeout=30)
    assert process.stdin is not None and process.stdout is not None
    assert process.stderr is not None
    stdout = process.stdout.read()
    stderr = process.stderr.read()
    assert process.returncode == 75
    assert stdout == b""
    assert b"interrupted by" in stderr
    assert_never_stored(carrier, "aborted")


def test_killed_carrier_leaves_no_backup(carrier: Carrier) -> None:
    process = start_put(carrier, "killed")
    process.kill()
    process.wait(timeout=10)
    assert_never_stored(carrier, "killed")


@pytest.fixture
def small_tmpfs(carrier: Carrier, tmpfs: Callable[..., Path]) -> Path:
    return tmpfs("2m", owner=carrier.account)


# What the shell says for each limit, relayed by the carrier after its own words.
SPACE_REFUSALS = {
    "quota": "this backup would exceed the account's quota",  # met mid-stream
    "reserve": "free space on the server is below its reserve; free some space",  # up front
    "tmpfs": "the server's free space would drop below its reserve",  # re-read mid-stream
}


@pytest.mark.parametrize("limit", sorted(SPACE_REFUSALS))
def test_full_server_disk_fails_the_put(
    carrier: Carrier, request: pytest.FixtureRequest, limit: str
) -> None:
    section = f"[account {carrier.account.name}]\n"
    if limit == "quota":
        section += "quota = 2M\n"  # aborted mid-stream
    elif limit == "reserve":
        section += "reserve = 1000T\n"  # refused up front
    else:
        mount = request.getfixturevalue("small_tmpfs")
        section += f"root = {mount}\nreserve = 0\n"  # a real ENOSPC
    carrier.server.write_shell_config(section)
    try:
        result = carrier.run("put", "toolarge", data=CHUNK * 6)
        assert result.returncode == 69, result.stderr
        assert result.stderr.decode() == (
            "qbackup-carrier: the server refused: no space (reserve, quota, inodes) or another"
            f" upload is running (qbackup-shell: {SPACE_REFUSALS[limit]})\n")
        assert_one_safe_line(result.stderr)
        assert failed_exit(result.stdout) == 69
        listing = carrier.run("list")
        assert listing.returncode == 0, listing.stderr
        assert b"toolarge" not in listing.stdout
    finally:
        carrier.server.write_shell_config("")
    assert "toolarge" not in stored_files(carrier.account)


def test_get_stops_when_its_reader_goes_away(carrier: Carrier) -> None:
    assert carrier.run("put", "--commit", "big", data=CHUNK * 8).returncode == 0
    process = carrier.start("get", "big")
    assert process.stdout is not None and process.stderr is not None
    assert process.stdout.read(10) == CHUNK[:10]
    process.stdout.close()  # the restore side went away
    assert process.wait(timeout=30) == 75
    assert_one_safe_line(process.stderr.read())


def test_sigterm_aborts_a_get(carrier: Carrier) -> None:
    assert carrier.run("put", "--commit", "big", data=CHUNK * 8).returncode == 0
    process = carrier.start("get", "big")
    assert process.stdout is not None
    process.stdout.read(10)  # transfer under way, consumer not reading
    process.terminate()
    _, stderr = process.communicate(timeout=30)
    assert process.returncode == 75
    assert b"interrupted by SIGTERM" in stderr


def test_sigterm_ends_a_get_whose_consumer_is_stuck(carrier: Carrier) -> None:
    assert carrier.run("put", "--commit", "big", data=CHUNK * 8).returncode == 0
    process = carrier.start("get", "big")
    assert process.stdout is not None
    process.stdout.read(10)
    time.sleep(1)  # the pipe fills; the carrier's write blocks
    process.terminate()
    # Nobody reads stdout and it stays open: the carrier must still exit.
    assert process.wait(timeout=15) == 75
