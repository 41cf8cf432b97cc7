"""``qubes.BackupCarrier+abort``: dom0 ends the put running in the carrier VM.

Why: after Qubes' backup is cancelled, qubesd keeps the stream open until the
carrier's command exits, so without abort the put would wait for data until
the server's idle timeout. Threat covered: a cancelled backup must never be
staged (nothing dom0 could commit by mistake) and must end within seconds.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import time
from pathlib import Path

from carrier_vm.abort import RUNTIME_SUBDIR, abort_puts, runtime_dir
from qbackup_protocol.carrier_service import CarrierExit
from testbed.waiting import wait_until
from tests.carrier_vm.conftest import (
    Carrier,
    assert_never_stored,
    assert_one_safe_line,
    call_service,
    start_put,
)


def lock_files(carrier: Carrier) -> list[str]:
    directory = carrier.config.parent / RUNTIME_SUBDIR
    return sorted(os.listdir(directory)) if directory.exists() else []


def test_abort_with_no_put_running_exits_0_at_once(carrier: Carrier) -> None:
    started = time.monotonic()
    result = call_service(carrier, "abort")
    assert result.returncode == CarrierExit.OK, result.stderr
    assert time.monotonic() - started < 5


def test_abort_ends_the_running_put_without_staging_anything(carrier: Carrier) -> None:
    process = start_put(carrier, "cancelled")
    assert process.stdin is not None
    wait_until(lambda: lock_files(carrier) == [f"{process.pid}.lock"], "the put's lock file")
    # Qubes keeps the stream open after Cancel: stdin stays open here too.
    result = call_service(carrier, "abort")

    # OK means the put ended within abort's own ABORT_WAIT (it answers 75
    # otherwise); a stopwatch here would also time the service's start-up.
    assert result.returncode == CarrierExit.OK, result.stderr
    # abort returns only once the put released its lock, which the kernel
    # does as the process exits.
    process.wait(timeout=2)
    assert process.stderr is not None
    stderr = process.stderr.read()
    assert process.returncode == CarrierExit.TEMPORARY
    assert b"interrupted by SIGTERM" in stderr
    assert_one_safe_line(stderr)
    assert lock_files(carrier) == []
    assert_never_stored(carrier, "cancelled")


def test_abort_kills_a_put_that_cannot_handle_sigterm(carrier: Carrier) -> None:
    # A stopped (or wedged) put never acts on SIGTERM: abort still ends it
    # within its 10 s bound.
    process = start_put(carrier, "wedged")
    wait_until(lambda: lock_files(carrier) == [f"{process.pid}.lock"], "the put's lock file")
    os.kill(process.pid, signal.SIGSTOP)
    try:
        result = call_service(carrier, "abort")
    finally:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGCONT)
    # OK: the put was gone within abort's ABORT_WAIT (see above).
    assert result.returncode == CarrierExit.OK, result.stderr
    process.communicate(timeout=5)
    assert process.returncode == -signal.SIGKILL
    assert_never_stored(carrier, "wedged")


def test_a_finished_put_leaves_no_running_put_behind(carrier: Carrier) -> None:
    assert carrier.run("put", "done", data=b"backup").returncode == 0
    result = call_service(carrier, "abort")
    assert result.returncode == CarrierExit.OK, result.stderr
    assert lock_files(carrier) == []


def test_abort_forgets_the_lock_of_a_put_that_was_killed(carrier: Carrier) -> None:
    process = start_put(carrier, "killed")
    wait_until(lambda: lock_files(carrier) == [f"{process.pid}.lock"], "the put's lock file")
    process.kill()
    process.communicate(timeout=5)
    assert lock_files(carrier) == [f"{process.pid}.lock"]  # left behind

    result = call_service(carrier, "abort")

    assert result.returncode == CarrierExit.OK, result.stderr
    assert lock_files(carrier) == []


def test_abort_leaves_other_processes_alone(carrier: Carrier) -> None:
    # A PID file naming a process that is not a put (here: a sleeping child)
    # is never signalled: only a held lock proves the PID is the put's.
    directory = carrier.config.parent / RUNTIME_SUBDIR
    directory.mkdir(parents=True)
    bystander = subprocess.Popen(["sleep", "30"])
    try:
        (directory / f"{bystander.pid}.lock").write_text(f"{bystander.pid}\n")
        result = call_service(carrier, "abort")
        assert result.returncode == CarrierExit.OK, result.stderr
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def test_abort_answers_false_when_a_put_outlives_its_wait(tmp_path: Path) -> None:
    # What the tests above rely on: abort's OK means the put ended within its
    # wait. Here the put's lock is held by this test, so no signal to the
    # put's pid can release it: abort must say the put still runs.
    environ = {"HOME": str(tmp_path)}
    directory = runtime_dir(environ)
    directory.mkdir(parents=True)
    decoy = subprocess.Popen(["sleep", "60"])
    fd = os.open(directory / f"{decoy.pid}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, f"{decoy.pid}\n".encode())
        assert abort_puts(environ, wait=0.5) is False
    finally:
        os.close(fd)
        decoy.kill()
        decoy.wait()
