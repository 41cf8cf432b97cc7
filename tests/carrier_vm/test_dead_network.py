"""A network that goes silent mid-put (the sshd session frozen, no RST, no FIN):
keepalive notices within keepalive_interval * (keepalive_count_max + 1); a
server that stops reading is noticed by progress_timeout. Here resuming is
switched off (resume_window 0) to see each bound alone; test_resume.py drills
the same faults with resuming on."""

from __future__ import annotations

import contextlib
import os
import signal
import time

from qbackup_protocol.carrier_service import CarrierExit
from testbed.processes import account_pids, shell_pids
from testbed.waiting import wait_until
from tests.carrier_vm.conftest import CHUNK, Carrier, assert_never_stored, assert_one_safe_line


def test_frozen_server_is_detected_by_keepalive(carrier: Carrier) -> None:
    carrier.write_config(keepalive_interval=1, keepalive_count_max=2, resume_window=0)
    process = carrier.start("put", "frozen")
    assert process.stdin is not None
    process.stdin.write(CHUNK * 2)
    process.stdin.flush()
    wait_until(lambda: account_pids(carrier.account), "the session to start")
    frozen = account_pids(carrier.account)  # sshd's session process and the shell
    for pid in frozen:
        os.kill(pid, signal.SIGSTOP)
    started = time.monotonic()
    try:
        # Keep the carrier busy sending while the server says nothing.
        try:
            for _ in range(16):
                process.stdin.write(CHUNK)
        except BrokenPipeError:
            pass
        _, stderr = process.communicate(timeout=30)
        elapsed = time.monotonic() - started
    finally:
        for pid in frozen:
            with contextlib.suppress(ProcessLookupError):  # it may be gone by now
                os.kill(pid, signal.SIGCONT)
    assert process.returncode == 75, stderr
    assert elapsed < 1 * (2 + 1) + 5, elapsed
    assert_one_safe_line(stderr)
    assert_never_stored(carrier, "frozen")


def test_stopped_shell_behind_a_live_sshd_fails_after_progress_timeout(carrier: Carrier) -> None:
    # Only the shell is stopped (a hung disk): sshd keeps answering
    # keepalives, so keepalive alone would wait for ever.
    carrier.write_config(
        progress_timeout=2, keepalive_interval=1, keepalive_count_max=2, resume_window=0
    )
    process = carrier.start("put", "stalled")
    assert process.stdin is not None
    process.stdin.write(CHUNK * 2)
    process.stdin.flush()
    # Stop the shell only once it has written data into its partial: it has
    # then answered the offset line, so the upload has started and what the
    # carrier meets is a server that stopped taking bytes (not one that never
    # began the upload, which is another message).
    partial = carrier.account.storage / ".stalled.partial"
    wait_until(lambda: partial.exists() and partial.stat().st_size > 0, "the partial upload")
    stopped = shell_pids(carrier.account)
    for pid in stopped:
        os.kill(pid, signal.SIGSTOP)
    started = time.monotonic()
    try:
        try:
            for _ in range(32):
                process.stdin.write(CHUNK)
        except BrokenPipeError:
            pass
        _, stderr = process.communicate(timeout=60)
        elapsed = time.monotonic() - started
    finally:
        for pid in stopped:
            with contextlib.suppress(ProcessLookupError):  # it may be gone by now
                os.kill(pid, signal.SIGCONT)
    assert process.returncode == CarrierExit.TEMPORARY, stderr
    assert b"accepted no data for 2s" in stderr
    assert elapsed < 2 + 10, elapsed
    assert_one_safe_line(stderr)
    assert_never_stored(carrier, "stalled")
