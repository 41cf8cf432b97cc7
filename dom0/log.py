"""Everything qbackup shows a person: log records, stdout lines, sizes and times.

Logging is configured once: syslog ident `qbackup` (journald, so
`journalctl -t qbackup` tells each run's story) or the terminal (`-o`).

Text from the carrier VM is hostile: the carrier is networked and less
trusted than dom0, and anything it sends may be huge, invalid UTF-8, or full
of escape sequences meant to rewrite a terminal or forge journal lines. So
every line that leaves qbackup, log record or stdout, passes `clean_text`
(qbackup_protocol/text.py: the one sanitiser, shared with the carrier).
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import socket
import sys
from datetime import UTC, datetime

from qbackup_protocol.text import DEFAULT_LIMIT, clean_text

DEFAULT_SYSLOG_SOCKET = "/dev/log"
IDENT = "qbackup"
MAX_MESSAGE = 2000
MAX_OUTPUT_LINE = 1000
MAX_TAIL = 64 * 1024  # last_line looks at most this far back


# --- hostile text ------------------------------------------------------------
def last_line(data: bytes, limit: int = DEFAULT_LIMIT) -> str:
    """Given untrusted stderr, return its last non-empty line, cleaned."""
    for line in reversed(data[-MAX_TAIL:].splitlines()):
        if line.strip():
            return clean_text(line.strip(), limit)
    return ""


# --- what commands print -----------------------------------------------------
def say(text: str) -> None:
    """Given a line of output (which may quote carrier text), print it cleaned."""
    sys.stdout.write(clean_text(text, MAX_OUTPUT_LINE) + "\n")
    sys.stdout.flush()


def say_json(value: object) -> None:
    """Given a JSON-able value (which may quote carrier text), print it as one
    line, whole: json.dumps escapes every control and non-ASCII character (DEL
    too, below), so nothing is cut and nothing reaches the terminal raw."""
    text = json.dumps(value, sort_keys=True).replace("\x7f", "\\u007f")
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def show_time(epoch: float | None) -> str:
    """Given seconds since the epoch (or None), return ISO UTC or '-'."""
    if epoch is None:
        return "-"
    try:
        return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    except (OverflowError, ValueError, OSError):
        return "?"  # a carrier may send any 63-bit mtime


def human_size(size: float) -> str:
    """Given a byte count, return it as e.g. '1.5 GiB'."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


# --- logging -----------------------------------------------------------------
class CleanFormatter(logging.Formatter):
    """A formatter whose output is one line of printable characters."""

    def format(self, record: logging.LogRecord) -> str:
        return clean_text(super().format(record), MAX_MESSAGE)


def make_syslog_handler(socket_path: str) -> logging.Handler:
    """Given the syslog socket path, return a handler that sends records with
    ident `qbackup`; raise OSError if the socket cannot be reached."""
    # SysLogHandler tolerates a missing socket and then fails on every record;
    # probe first so the caller can fall back to the terminal.
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe:
        probe.connect(socket_path)
    handler = logging.handlers.SysLogHandler(
        address=socket_path,
        facility=logging.handlers.SysLogHandler.LOG_USER,
        socktype=socket.SOCK_DGRAM,
    )
    handler.append_nul = False  # journald and rsyslog need no terminator
    handler.setFormatter(CleanFormatter(f"{IDENT}[{os.getpid()}]: %(message)s"))
    return handler


def setup_logging(
    to_terminal: bool, syslog_socket: str = DEFAULT_SYSLOG_SOCKET, verbose: bool = False,
    quiet: bool = False,
) -> None:
    """Given whether to log to the terminal (-o), the syslog socket, -v and -q,
    (re)configure the root logger once for this process: syslog, or stderr if
    -o or syslog is unreachable; errors also reach stderr so cron mails them.
    -q quiets the terminal only: the journal still tells the whole story."""
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    terminal = logging.StreamHandler(sys.stderr)
    terminal.setFormatter(CleanFormatter("qbackup: %(levelname)s: %(message)s"))
    if not to_terminal:
        try:
            root.addHandler(make_syslog_handler(syslog_socket))
        except OSError as error:
            to_terminal = True
            terminal.setLevel(logging.WARNING if quiet else logging.DEBUG)
            root.addHandler(terminal)
            logging.getLogger(__name__).warning(
                "syslog socket %s unreachable (%s): logging to the terminal", syslog_socket, error
            )
            return
        terminal.setLevel(logging.ERROR)
    elif quiet:
        terminal.setLevel(logging.WARNING)
    root.addHandler(terminal)
