"""Desktop notifications through notify-send; their absence is never an error."""

from __future__ import annotations

import os

from dom0 import execute

NOTIFY_SEND = "notify-send"


def notify(summary: str, body: str = "", critical: bool = False) -> bool:
    """Given a summary and body, show a notification; return whether it worked.
    Cron has no DISPLAY: default to the dom0 desktop's :0."""
    os.environ.setdefault("DISPLAY", ":0")
    urgency = "critical" if critical else "normal"
    argv = [NOTIFY_SEND, "--app-name=qbackup", f"--urgency={urgency}", summary]
    if body:
        argv.append(body)
    return execute.run_optional(argv)
