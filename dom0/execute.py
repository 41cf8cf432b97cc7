"""The ONE place in dom0's qbackup that spawns processes (qubesadmin aside).

Always argv lists (never a shell), absolute timeouts where a hang would stall
a timer unit, and secrets masked in what is logged. Desktop notifications
(notify-send) are nice-to-have helpers: their absence is never an error.
"""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
from collections.abc import Mapping, Sequence

logger = logging.getLogger(__name__)
MASK = "***"
NOTIFY_SEND = "notify-send"
TimeoutExpired = subprocess.TimeoutExpired


def describe(argv: Sequence[str], secrets: Sequence[str] = ()) -> str:
    """Given an argv and the secrets it may hold, return a loggable command line."""
    return shlex.join(MASK if word in secrets else word for word in argv)


def run(
    argv: Sequence[str],
    *,
    input_data: bytes | None = None,
    capture: bool = True,
    timeout: float | None = None,
    secrets: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Given an argv, run it and return the completed process (never raises on
    a non-zero exit); raise FileNotFoundError if the program is missing,
    TimeoutExpired (after killing it) if it runs longer than TIMEOUT."""
    logger.debug("running %s", describe(argv, secrets))
    return subprocess.run(  # noqa: S603 - argv list from our own code, no shell
        list(argv),
        input=input_data,
        stdout=subprocess.PIPE if capture else None,
        stderr=subprocess.STDOUT if capture else None,
        stdin=None if input_data is not None else subprocess.DEVNULL,
        timeout=timeout,
        check=False,
        env=env,
    )


def run_optional(argv: Sequence[str], timeout: float = 10) -> bool:
    """Given an argv of a nice-to-have helper (notify-send), run it; return
    whether it succeeded. A missing or failing helper is never an error."""
    try:
        result = run(argv, timeout=timeout)
    except (OSError, subprocess.SubprocessError) as error:
        logger.debug("optional helper %s unavailable: %s", argv[0], error)
        return False
    return result.returncode == 0


def notify(summary: str, body: str = "", critical: bool = False) -> bool:
    """Given a summary and body, show a desktop notification; return whether it
    worked. Cron has no DISPLAY: default to the dom0 desktop's :0."""
    os.environ.setdefault("DISPLAY", ":0")
    urgency = "critical" if critical else "normal"
    argv = [NOTIFY_SEND, "--app-name=qbackup", f"--urgency={urgency}", summary]
    if body:
        argv.append(body)
    return run_optional(argv)
