"""The signals that end a command, and a way to hold them off briefly.

sshd ends a session with SIGHUP or SIGTERM; a vanished client means SIGPIPE.
main() turns the first of them into an Interrupted exception. While the
put's writer thread is being stopped and the temporary cleaned up, that
exception must wait: raised in the middle, it would leave the thread writing
to a descriptor that is then closed (or already reused for another file).
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager

FATAL_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE)


@contextmanager
def fatal_signals_blocked() -> Iterator[None]:
    """Block FATAL_SIGNALS in the calling thread for the duration of the
    block; one that arrives meanwhile is delivered (and its handler raises)
    right after it."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, FATAL_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def block_fatal_signals_in_this_thread() -> None:
    """Block FATAL_SIGNALS for good in the calling (helper) thread, so the
    kernel delivers them to the main thread, the only one that handles them."""
    signal.pthread_sigmask(signal.SIG_BLOCK, FATAL_SIGNALS)
