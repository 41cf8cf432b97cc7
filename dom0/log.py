"""Logging, configured once: syslog ident `qbackup` (journald) or the terminal.

`journalctl -t qbackup` must tell each run's story, so every record goes to
syslog with that identifier. `-o` sends it to the terminal instead. Every line
is cleaned of control characters on its way out: a message may quote text
that came from the carrier, and one escape sequence must not rewrite a
terminal or forge a second journal entry.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import socket
import sys

from dom0.untrusted import clean_text

DEFAULT_SYSLOG_SOCKET = "/dev/log"
IDENT = "qbackup"
MAX_MESSAGE = 2000


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
    to_terminal: bool, syslog_socket: str = DEFAULT_SYSLOG_SOCKET, verbose: bool = False
) -> None:
    """Given whether to log to the terminal (-o) and the syslog socket, (re)configure
    the root logger once for this process: syslog, or stderr if -o or syslog
    is unreachable; errors also reach stderr so cron mails them."""
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
            terminal.setLevel(logging.INFO)
            root.addHandler(terminal)
            logging.getLogger(__name__).warning(
                "syslog socket %s unreachable (%s): logging to the terminal", syslog_socket, error
            )
            return
        terminal.setLevel(logging.ERROR)
    root.addHandler(terminal)
