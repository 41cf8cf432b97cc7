"""One command's context: the Qubes adapter, state paths, the carrier VM's
lifetime around the command, and the signals that stop it.

qbackup starts a halted carrier and shuts it down again afterwards (unless
it was already running or the user asked to keep it: -x). SIGINT/SIGTERM must
never leave a passphrase profile behind or a backup running: while Qubes'
engine runs they cancel it (admin.backup.Cancel); otherwise they unwind the
stack through every `finally`.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from dom0.errors import Interrupted, QbackupError, QubesError, VMNotFound, exit_code_for
from dom0.log import say_json
from dom0.qubes import QubesAdapter

logger = logging.getLogger(__name__)
HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclass(frozen=True)
class Context:
    """What every action gets besides its arguments: the Qubes adapter (made
    only when first needed), the signal guard and where state lives."""

    get_app: Callable[[], QubesAdapter]
    guard: SignalGuard
    history: Path
    lock_dir: Path
    config: Path | None  # --config, None: the default job file
    json: bool = False  # --json: machine-readable stdout
    quiet: bool = False  # -q: no progress bar or summary, errors only


@contextmanager
def failure_as_json(context: Context, backup: str) -> Iterator[None]:
    """Given the context and the BACKUP a command is about, with --json print
    an error that ends the block as one JSON object (the backup, the error,
    the exit code) before it goes on to main()."""
    try:
        yield
    except QbackupError as error:
        if context.json:
            say_json({"backup": backup, "error": str(error), "exit": int(exit_code_for(error))})
        raise


def require_vm(app: QubesAdapter, name: str, role: str) -> None:
    """Given a VM NAME and its ROLE ('carrier', 'VM to back up'), return if it
    exists; raise VMNotFound naming the role otherwise."""
    if not app.vm_exists(name):
        raise VMNotFound(f"the {role} {name} does not exist (see qvm-ls)")


@contextmanager
def running_vm(app: QubesAdapter, name: str | None, role: str,
               keep: bool = False) -> Iterator[None]:
    """Given a VM NAME (or None: nothing to do) and its ROLE, make sure it
    runs for the block; shut it down afterwards if this block started it and
    KEEP is false."""
    if name is None:
        yield
        return
    started = False
    if not app.is_running(name):
        logger.info("starting %s %s", role, name)
        app.start(name)
        started = True
    try:
        yield
    finally:
        # A cancelled run may have had to kill the carrier (dom0/qubes_backup.py).
        if started and not keep and app.is_running(name):
            logger.info("shutting down %s %s", role, name)
            try:
                app.shutdown(name, wait=True)
            except QubesError as error:
                logger.warning("could not shut down %s %s: %s", role, name, error)


@contextmanager
def running_carrier(app: QubesAdapter, carrier: str, keep: bool) -> Iterator[None]:
    """Given a carrier VM, raise VMNotFound if it does not exist; else make
    sure it runs for the block (running_vm)."""
    require_vm(app, carrier, "carrier VM")
    with running_vm(app, carrier, "carrier VM", keep):
        yield


class SignalGuard:
    """Turns SIGINT/SIGTERM into either a cancel request (while a cancel
    callback is armed) or an Interrupted exception."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.cancel: Callable[[], None] | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        self.signum = signum
        if self.cancel is not None:
            logger.warning("signal %d: cancelling the backup", signum)
            cancel = self.cancel
            self.cancel = None
            cancel()
            return
        raise Interrupted(signum)

    def __enter__(self) -> SignalGuard:
        for signum in HANDLED_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)  # type: ignore[arg-type]

    @contextmanager
    def cancelling_with(self, cancel: Callable[[], None]) -> Iterator[None]:
        """Given a cancel callback, arm it for the block; afterwards raise
        Interrupted if a signal arrived meanwhile."""
        self.cancel = cancel
        try:
            yield
        finally:
            self.cancel = None
            if self.signum is not None:
                raise Interrupted(self.signum)
