"""The ONE place in dom0's qbackup that spawns processes (qubesadmin aside).

Always argv lists (never a shell), absolute timeouts where a hang would stall
a timer unit, and secrets masked in what is logged. Desktop notifications
(notify-send) are nice-to-have helpers: their absence is never an error.
"""

from __future__ import annotations

import contextlib
import html
import logging
import os
import shlex
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from qbackup_protocol.text import clean_text

logger = logging.getLogger(__name__)
MASK = "***"
NOTIFY_SEND = "notify-send"
TimeoutExpired = subprocess.TimeoutExpired
MAX_CAPTURE = 1024 * 1024
MAX_NOTIFICATION_LINE = 300
# A program stopped by a signal to qbackup gets this long after SIGTERM before
# its whole process group is killed: qvm-backup-restore's extraction runs in
# child processes, and systemd gives a stopping unit 60 s at most.
STOP_GRACE = 5.0
STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def stop_group(process: subprocess.Popen[bytes]) -> None:
    """Given a process started by `started` (leader of its own process group),
    end the group: SIGTERM, then SIGKILL for whatever still runs STOP_GRACE
    seconds later; return once the leader has been reaped. A second signal
    to qbackup meanwhile waits until this is done."""
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            process.wait(STOP_GRACE)
        except subprocess.TimeoutExpired:
            logger.warning("%s ignored SIGTERM for %.0f s: killing it", process.args,
                           STOP_GRACE)
        try:
            os.killpg(process.pid, signal.SIGKILL)  # children that outlived it, too
        except ProcessLookupError:
            pass
        process.wait()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


@contextmanager
def started(argv: Sequence[str], **options: Any) -> Iterator[subprocess.Popen[bytes]]:
    """Given an argv and Popen's options, start it as the leader of a process
    group of its own and yield it. If the block raises (above all Interrupted
    from a signal), the whole group is ended before the error goes on:
    Popen's own exit would wait for a program that never got the signal."""
    with subprocess.Popen(list(argv), process_group=0, **options) as process:  # noqa: S603
        try:
            yield process
        except BaseException:
            stop_group(process)
            raise


def describe(argv: Sequence[str], secrets: Sequence[str] = ()) -> str:
    """Given an argv and the secrets it may hold, return a loggable command line."""
    return shlex.join(MASK if word in secrets else word for word in argv)


def run(
    argv: Sequence[str],
    *,
    input_data: bytes | None = None,
    capture: bool = True,
    discard: bool = False,
    timeout: float | None = None,
    secrets: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    max_capture: int = MAX_CAPTURE,
) -> subprocess.CompletedProcess[bytes]:
    """Given an argv, run it and return the completed process (never raises on
    a non-zero exit); raise FileNotFoundError if the program is missing,
    TimeoutExpired (after killing it) if it runs longer than TIMEOUT.

    CAPTURE keeps stdout and stderr together, but only their LAST MAX_CAPTURE
    bytes (the end is where errors are): the rest is read and thrown away, so
    dom0's memory never follows what a program (or the VM behind it) prints.
    DISCARD sends both to /dev/null; neither: they go where ours go."""
    logger.debug("running %s", describe(argv, secrets))
    output = subprocess.DEVNULL if discard else subprocess.PIPE if capture else None
    with started(argv, stdin=subprocess.PIPE if input_data is not None else subprocess.DEVNULL,
                 stdout=output, stderr=subprocess.STDOUT if output is not None else None,
                 env=env) as process:
        expired = threading.Event()

        def expire() -> None:
            expired.set()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)

        timer = threading.Timer(timeout, expire) if timeout is not None else None
        if timer is not None:
            timer.daemon = True
            timer.start()
        try:
            feeder = threading.Thread(target=_feed, args=(process, input_data), daemon=True)
            feeder.start()
            kept = b""
            if process.stdout is not None:
                while chunk := process.stdout.read(65536):
                    kept = (kept + chunk)[-max_capture:]
            returncode = process.wait()
        finally:
            if timer is not None:
                timer.cancel()
        if expired.is_set() and timeout is not None:
            raise subprocess.TimeoutExpired(list(argv), timeout, kept)
        return subprocess.CompletedProcess(list(argv), returncode, kept, None)


def _feed(process: subprocess.Popen[bytes], data: bytes | None) -> None:
    """Given a process and its input (None: none), write it and close stdin."""
    if process.stdin is None:
        return
    try:
        process.stdin.write(data or b"")
        process.stdin.close()
    except OSError:  # it exited without reading: its status tells
        pass


def run_shown(argv: Sequence[str], input_data: bytes | None,
              max_kept: int = MAX_CAPTURE) -> tuple[int, bytes]:
    """Given an argv, run it with its output (stdout and stderr together)
    copied to our stderr as it arrives; return (status, the output's last
    MAX_KEPT bytes). A person watches it; qbackup still judges it."""
    logger.debug("running %s", describe(argv))
    with started(argv, stdin=subprocess.PIPE if input_data is not None else subprocess.DEVNULL,
                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as process:
        feeder = threading.Thread(target=_feed, args=(process, input_data), daemon=True)
        feeder.start()
        kept = b""
        for line in process.stdout or ():
            sys.stderr.buffer.write(line)
            sys.stderr.buffer.flush()
            kept = (kept + line)[-max_kept:]
        return process.wait(), kept


def run_optional(argv: Sequence[str], timeout: float = 10) -> bool:
    """Given an argv of a nice-to-have helper (notify-send), run it; return
    whether it succeeded. A missing or failing helper is never an error."""
    try:
        result = run(argv, timeout=timeout)
    except (OSError, subprocess.SubprocessError) as error:
        logger.debug("optional helper %s unavailable: %s", argv[0], error)
        return False
    return result.returncode == 0


def shown(text: str) -> str:
    """Given notification text (it may quote the carrier), return it cleaned
    and with &, < and > escaped: notification daemons read bodies as markup,
    and a carrier must not put links or images on the desktop."""
    lines = [clean_text(line, MAX_NOTIFICATION_LINE) for line in text.splitlines()[:10]]
    return html.escape("\n".join(lines), quote=False)


def notify(summary: str, body: str = "", critical: bool = False) -> bool:
    """Given a summary and body, show a desktop notification; return whether it
    worked. Cron has no DISPLAY: default to the dom0 desktop's :0."""
    os.environ.setdefault("DISPLAY", ":0")
    urgency = "critical" if critical else "normal"
    argv = [NOTIFY_SEND, "--app-name=qbackup", f"--urgency={urgency}", shown(summary)]
    if body:
        argv.append(shown(body))
    return run_optional(argv)
