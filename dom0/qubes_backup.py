"""Running Qubes' backup engine, and ending a carrier upload it leaves running.

On admin.backup.Cancel, and on any failure inside the engine, qubesd waits for
the carrier's `qbackup-carrier put` to EXIT before it closes the stream
(docs/QUBES.md, "Cancel and failures"): `put` never sees the end of its
input, and Execute does not return until the upload ends by itself (the
server's idle timeout, ten minutes). So after a cancel or a failed Execute,
dom0 ends the upload itself: first the carrier's own `abort` (it stops the
running put WITHOUT its end frame, so nothing is staged), and when that fails
or hangs, by killing the carrier VM. Either way the run ends within seconds.
"""

from __future__ import annotations

import logging
import subprocess
import threading
from collections.abc import Callable

from dom0.errors import QubesError
from dom0.qubes import QubesAdapter
from dom0.session import SignalGuard

logger = logging.getLogger(__name__)
ABORT_SERVICE = "qubes.BackupCarrier+abort"
# The carrier's abort waits up to 10 s for its put to end; allow for qrexec.
ABORT_TIMEOUT = 12.0
# After a successful abort, how long Execute may take to return before the
# carrier is killed anyway (abort vouches for its put, not for qubes.Backup).
EXECUTE_GRACE = 8.0
# After killing the carrier, how long Execute may take to return before dom0
# stops waiting for it (a qubesd that never answers must not hold dom0).
KILLED_GRACE = 4.0
# abort, the graces and killing the VM: well inside 30 s of the signal.
ENDING_TIMEOUT = 28.0
ABORT_REPLY_LIMIT = 4096


def end_upload(app: QubesAdapter, carrier: str,
               execute_done: threading.Event | None = None) -> None:
    """Given the carrier VM (and an event set once Execute returned, if it
    runs), make sure no upload runs in it any more: ask its abort service,
    and kill the VM if that fails, hangs, or Execute still has not returned
    EXECUTE_GRACE seconds after it. Never raises."""
    try:
        app.run_service_for_stdio(carrier, ABORT_SERVICE, b"", max_output=ABORT_REPLY_LIMIT,
                                  timeout=ABORT_TIMEOUT)
        if execute_done is None or execute_done.wait(EXECUTE_GRACE):
            logger.info("the carrier %s ended its upload", carrier)
            return
        logger.warning("the carrier %s reported its upload ended, but Qubes' backup still"
                       " waits for it after %.0f s", carrier, EXECUTE_GRACE)
    except subprocess.TimeoutExpired:
        logger.warning("the carrier %s did not end its upload within %.0f s", carrier,
                       ABORT_TIMEOUT)
    except (subprocess.CalledProcessError, QubesError, OSError) as error:
        logger.warning("the carrier %s could not end its upload: %s", carrier,
                       type(error).__name__)
    logger.warning("killing the carrier VM %s to end the upload", carrier)
    try:
        app.kill(carrier)
    except QubesError as error:
        logger.error("could not kill the carrier VM %s: %s", carrier, error)
    if execute_done is not None and not execute_done.wait(KILLED_GRACE):
        logger.error("Qubes' backup still runs after the carrier was killed: no longer"
                     " waiting for it")
        app.abandon_execute()


class UploadEnder:
    """Cancels a running Execute and ends the carrier's upload, in a thread
    (a signal handler must not block) or in the caller's."""

    def __init__(self, app: QubesAdapter, carrier: str, profile: str) -> None:
        self.app = app
        self.carrier = carrier
        self.profile = profile
        self.thread: threading.Thread | None = None
        self.execute_done = threading.Event()
        self._lock = threading.Lock()

    def _cancel_and_end(self) -> None:
        try:
            self.app.backup_cancel(self.profile)
        except QubesError as error:
            logger.warning("admin.backup.Cancel failed: %s", error)
        end_upload(self.app, self.carrier, self.execute_done)

    def start(self) -> None:
        """Start cancelling in the background (once); return at once."""
        with self._lock:
            if self.thread is None:
                self.thread = threading.Thread(target=self._cancel_and_end, daemon=True,
                                               name="qbackup-cancel")
                self.thread.start()

    def wait(self) -> None:
        """Wait (bounded) for a started cancel to finish."""
        if self.thread is not None:
            self.thread.join(ENDING_TIMEOUT)


def run_qubes_backup(app: QubesAdapter, carrier: str, profile: str, guard: SignalGuard,
               on_progress: Callable[[float], None]) -> None:
    """Given a written profile, run admin.backup.Execute; a SIGINT/SIGTERM
    meanwhile cancels it and ends the carrier's upload, and so does a failed
    Execute. Raise what Execute raised (Interrupted after a signal)."""
    ender = UploadEnder(app, carrier, profile)
    try:
        with guard.cancelling_with(ender.start):
            try:
                try:
                    app.backup_execute(profile, on_progress)
                finally:
                    ender.execute_done.set()
            except Exception:
                if ender.thread is None:
                    # Normally qubesd returns only after put exited; if it
                    # failed otherwise (lost connection), a put may still run.
                    end_upload(app, carrier)
                raise
    finally:
        ender.wait()
