"""A fatal signal while a put stops its writer thread waits until the thread
is gone (in-process: the exact moment cannot be hit through sshd reliably)."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from types import FrameType

import pytest

from server_shell.errors import Interrupted
from server_shell.put import Writer
from server_shell.signals import block_fatal_signals_in_this_thread
from server_shell.space import SpaceGuard

MIB = 1024 * 1024


# Threat: SIGTERM/SIGHUP arriving while finish() joins the writer thread
# raised Interrupted at once; the cleanup then closed the temporary's
# descriptor while the thread was still writing to it (or to whatever file
# reused that number). Residual risk: a stuck write (a hung disk) now delays
# the exit on SIGTERM until it returns; SIGKILL still ends it.
def test_a_signal_during_finish_is_held_until_the_writer_thread_is_gone(
    tmp_path: Path,
) -> None:
    read_end, write_end = os.pipe()
    root_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise Interrupted("interrupted")

    drained_all = threading.Event()

    def signal_then_drain() -> None:
        block_fatal_signals_in_this_thread()  # like the shell: only main handles them
        time.sleep(0.3)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.3)
        drained = 0
        while drained < MIB:
            drained += len(os.read(read_end, MIB))
        drained_all.set()

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        writer = Writer(write_end, SpaceGuard(root_fd, reserve=0, quota=None))
        buffer = writer.take_buffer(MIB)
        # A 1 MiB write into a 64 KiB pipe nobody reads: the thread is stuck
        # in os.write until the helper drains it, 0.3 s after the signal.
        writer.work.put((buffer, MIB))
        helper = threading.Thread(target=signal_then_drain)
        helper.start()
        with pytest.raises(Interrupted):
            writer.finish()
        # (Thread.is_alive() cannot tell: an interrupted join marks the
        # thread stopped while it still runs.) The write could only end
        # after the helper drained the pipe.
        assert drained_all.is_set()
        helper.join()
    finally:
        signal.signal(signal.SIGTERM, previous)
        for fd in (read_end, write_end, root_fd):
            os.close(fd)
