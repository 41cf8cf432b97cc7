"""Syslog: one line per command, ident `qbackup-shell`.

Logging must never fail a backup: if the socket is missing or a send fails,
the record is dropped silently (nothing on stderr, which belongs to the
protocol's one-line errors).
"""

from __future__ import annotations

import logging
import logging.handlers
import re
import socket
from collections.abc import Mapping

IDENT = "qbackup-shell"
AUDIT_LOGGER = "server_shell"
# What SSH_CONNECTION may contribute: addresses and ports, nothing else.
ADDRESS_PATTERN = re.compile(r"[0-9A-Fa-f.:%]{1,64}")


class QuietSysLogHandler(logging.handlers.SysLogHandler):
    """A SysLogHandler that drops a record it cannot send instead of printing a traceback."""

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging's name)
        return


def setup_logging(socket_path: str) -> None:
    """Given the syslog socket path, send this package's records there; if
    the socket cannot be reached, log nothing."""
    logger = logging.getLogger(AUDIT_LOGGER)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    try:
        handler = QuietSysLogHandler(
            address=socket_path,
            facility=logging.handlers.SysLogHandler.LOG_DAEMON,
            socktype=socket.SOCK_DGRAM,
        )
    except OSError:
        logger.addHandler(logging.NullHandler())
        return
    handler.ident = f"{IDENT}: "
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)


def client_address(environ: Mapping[str, str]) -> str:
    """Given the environment, return "ADDRESS port PORT" from SSH_CONNECTION,
    "local" without one, "unknown" if it does not look like an address."""
    words = environ.get("SSH_CONNECTION", "").split(" ")
    if len(words) < 2 or not words[0]:
        return "local"
    # The value comes from sshd, but it is checked before it reaches the log
    # anyway: a log line must never carry control characters.
    if not all(ADDRESS_PATTERN.fullmatch(word) for word in words[:2]):
        return "unknown"
    return f"{words[0]} port {words[1]}"
