"""The ONE place in dom0's qbackup that spawns processes (qubesadmin aside).

Always argv lists (never a shell), absolute timeouts where a hang would stall
a timer unit, and secrets masked in what is logged. Desktop notifications
(notify-send) are nice-to-have helpers: their absence is never an error.
"""

from __future__ import annotations

import html
import logging
import os
import shlex
import subprocess
import threading
from collections.abc import Mapping, Sequence

from dom0.log import clean_text

logger = logging.getLogger(__name__)
MASK = "***"
NOTIFY_SEND = "notify-send"
TimeoutExpired = subprocess.TimeoutExpired
MAX_CAPTURE = 1024 * 1024
MAX_NOTIFICATION_LINE = 300


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
    with subprocess.Popen(  # noqa: S603 - argv list from our own code, no shell
            list(argv), stdin=subprocess.PIPE if input_data is not None else subprocess.DEVNULL,
            stdout=output, stderr=subprocess.STDOUT if output is not None else None,
            env=env) as process:
        expired = threading.Event()

        def expire() -> None:
            expired.set()
            process.kill()

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
