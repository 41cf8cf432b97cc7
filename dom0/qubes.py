"""The Qubes adapter: the ONLY module that imports qubesadmin (lazily).

`QubesAdapter` lists everything dom0's qbackup asks of Qubes; `RealQubes`
implements it with qubesadmin as docs/QUBES.md ("Driving a backup", "Our own
services") describes, using only calls that exist on BOTH Qubes 4.2 and 4.3,
and tests hand `cli.main(app=...)` a simulator instead. Every method raises
dom0's own errors (VMNotFound, QubesError, BackupEngineError) or
subprocess.CalledProcessError / TimeoutExpired for a failed service call.
"""

from __future__ import annotations

import contextlib
import logging
import subprocess
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Protocol

from dom0 import processes
from dom0.errors import BackupEngineError, QubesError, ReplyTooLarge, VMNotFound

logger = logging.getLogger(__name__)
PROFILE_DIR = Path("/etc/qubes/backup")
QVM_BACKUP_RESTORE = "qvm-backup-restore"
DEFAULT_MAX_OUTPUT = 64 * 1024
MAX_STDERR = 64 * 1024
ProgressCallback = Callable[[float], None]


class QubesAdapter(Protocol):
    """What dom0's qbackup needs from Qubes (the contract the simulator meets)."""

    profile_dir: Path  # where backup profiles live (/etc/qubes/backup)

    def vm_exists(self, name: str) -> bool:
        """Given a VM name, return whether Qubes knows it."""

    def is_running(self, name: str) -> bool:
        """Given a VM name, return whether it runs; raise VMNotFound."""

    def start(self, name: str) -> None:
        """Given a halted VM, start it; raise VMNotFound or QubesError."""

    def shutdown(self, name: str, wait: bool = True) -> None:
        """Given a running VM, shut it down (waiting until halted if WAIT)."""

    def kill(self, name: str) -> None:
        """Given a running VM, destroy it at once (every process in it ends)."""

    def vm_names(self) -> set[str]:
        """Return the names of every VM Qubes knows, as last listed (see
        refresh_vms: VMs another process created or removed since the first
        listing do not show until then)."""

    def refresh_vms(self) -> None:
        """Forget the client-side VM list, so the next lookup asks Qubes."""

    def vms_in_backups(self) -> list[str]:
        """Return the VMs whose include_in_backups is set, sorted."""

    def run_service_for_stdio(
        self, vm: str, service: str, input_data: bytes = b"", max_output: int = DEFAULT_MAX_OUTPUT,
        timeout: float | None = None,
    ) -> bytes:
        """Given a VM, a qrexec SERVICE+ARG and stdin bytes, return its stdout;
        raise ReplyTooLarge past MAX_OUTPUT bytes, CalledProcessError (status,
        stderr) if it fails, TimeoutExpired (after killing the call) if it
        runs longer than TIMEOUT seconds."""

    def backup_info(self, profile: str) -> bytes:
        """Given a profile name, return admin.backup.Info's summary; raise QubesError."""

    def backup_execute(self, profile: str, on_progress: ProgressCallback) -> None:
        """Given a profile name, run admin.backup.Execute, calling ON_PROGRESS with
        each backup-progress percentage; raise BackupEngineError if it fails."""

    def backup_cancel(self, profile: str) -> None:
        """Given the profile of a running Execute, send admin.backup.Cancel."""

    def abandon_execute(self) -> None:
        """Stop waiting for a running backup_execute (it raises
        BackupEngineError at once); for a Qubes that does not end it even
        after Cancel, abort and kill. Called from another thread."""

    def backup_restore(
        self, args: Sequence[str], capture: bool, input_data: bytes | None = None
    ) -> tuple[int, bytes]:
        """Given qvm-backup-restore's arguments, run it (output captured or on
        the terminal, INPUT_DATA on stdin) and return (status, output).
        Uncaptured output still comes back (bounded): it is shown as it
        arrives AND returned, because qvm-backup-restore can exit 0 after a
        failed restore and only its output tells (docs/QUBES.md, "Restore").
        An exception raised meanwhile (Interrupted by a signal) goes on only
        once the restore and every process it started have ended."""


def read_bounded(stream: Any, limit: int) -> tuple[bytes, bool]:
    """Given a binary stream, return (up to LIMIT bytes, whether there was more)."""
    chunks: list[bytes] = []
    total = 0
    while True:
        chunk = stream.read(65536)
        if not chunk:
            return b"".join(chunks), False
        total += len(chunk)
        if total > limit:
            return b"".join(chunks), True
        chunks.append(chunk)


class RealQubes:
    """QubesAdapter backed by qubesadmin in dom0."""

    profile_dir = PROFILE_DIR

    def __init__(self) -> None:
        import qubesadmin  # noqa: PLC0415 - only dom0 has it; tests never import it

        self.app = qubesadmin.Qubes()
        self._abandon: Callable[[], object] | None = None

    def _vm(self, name: str) -> Any:
        try:
            return self.app.domains[name]
        except KeyError:
            raise VMNotFound(f"no VM named {name}") from None

    def vm_exists(self, name: str) -> bool:
        return name in self.app.domains

    def is_running(self, name: str) -> bool:
        return bool(self._vm(name).is_running())

    def start(self, name: str) -> None:
        from qubesadmin.exc import QubesException  # noqa: PLC0415

        try:
            self._vm(name).start()
        except QubesException as error:
            raise QubesError(f"cannot start VM {name}: {error}") from None

    def shutdown(self, name: str, wait: bool = True) -> None:
        """qubesadmin's vm.shutdown() has no `wait` before 4.3.33 (a TypeError
        on 4.2), but qubesd's admin.vm.Shutdown takes the argument `wait` on
        4.2 and 4.3 alike: call that (docs/QUBES.md, "Shutting a VM down")."""
        from qubesadmin.exc import QubesException  # noqa: PLC0415

        self._vm(name)  # VMNotFound for an unknown name, like the other calls
        try:
            self.app.qubesd_call(name, "admin.vm.Shutdown", "wait" if wait else None)
        except QubesException as error:
            raise QubesError(f"cannot shut down VM {name}: {error}") from None

    def kill(self, name: str) -> None:
        from qubesadmin.exc import QubesException  # noqa: PLC0415

        try:
            self._vm(name).kill()
        except QubesException as error:
            raise QubesError(f"cannot kill VM {name}: {error}") from None

    def vm_names(self) -> set[str]:
        return set(self.app.domains.keys())

    def refresh_vms(self) -> None:
        """qubesadmin's VMCollection lists the VMs ONCE: refresh_cache()
        returns at once while its _vm_list is set, and `in`, iteration,
        keys() and [] all answer from that list (qubesadmin/app.py
        VMCollection, release4.2 and release4.3). VMs another process made
        (qvm-backup-restore creates them in its own) stay unknown to this
        process until clear_cache()."""
        self.app.domains.clear_cache()

    def vms_in_backups(self) -> list[str]:
        """Qubes' default set (qubes/backup.py Backup.__init__): every VM whose
        include_in_backups is set, dom0 (its home) included."""
        from qubesadmin.exc import QubesException  # noqa: PLC0415

        try:
            return sorted(vm.name for vm in self.app.domains if vm.include_in_backups)
        except QubesException as error:  # a VM removed since the list was taken
            raise QubesError(f"cannot list the VMs to back up: {error}") from None

    def run_service_for_stdio(
        self, vm: str, service: str, input_data: bytes = b"", max_output: int = DEFAULT_MAX_OUTPUT,
        timeout: float | None = None,
    ) -> bytes:
        """Like vm.run_service_for_stdio, but stdout is read only up to
        MAX_OUTPUT bytes: the carrier is less trusted and must not be able to
        fill dom0's memory; and a call with a TIMEOUT is killed when it runs
        longer (a hung VM must not hold up a cancel)."""
        process = self._vm(vm).run_service(
            service, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        stderr_head: Future[bytes] = Future()  # what drain_stderr kept

        def feed() -> None:
            try:
                process.stdin.write(input_data)
                process.stdin.close()
            except OSError:
                pass

        def drain_stderr() -> None:
            data, _ = read_bounded(process.stderr, MAX_STDERR)
            stderr_head.set_result(data)
            # Keep draining so the service cannot block, but discard: dom0's
            # memory must not follow the carrier's stderr.
            while process.stderr.read(65536):
                pass

        threads = [threading.Thread(target=feed, daemon=True),
                   threading.Thread(target=drain_stderr, daemon=True)]
        expired = threading.Event()

        def expire() -> None:
            expired.set()
            process.kill()

        timer = threading.Timer(timeout, expire) if timeout is not None else None
        for thread in threads:
            thread.start()
        if timer is not None:
            timer.daemon = True
            timer.start()
        stdout, overflow = read_bounded(process.stdout, max_output)
        if overflow:
            process.kill()
            # Closing our end makes anything still writing get EPIPE at once.
            process.stdout.close()
        returncode = process.wait()
        if timer is not None:
            timer.cancel()
        for thread in threads:
            thread.join(timeout=10)
        stderr = stderr_head.result() if stderr_head.done() else b""
        if expired.is_set() and timeout is not None:
            raise subprocess.TimeoutExpired(service, timeout, stdout, stderr)
        if overflow:
            raise ReplyTooLarge(f"{service} in {vm} sent more than {max_output} bytes; refused")
        if returncode != 0:
            raise subprocess.CalledProcessError(returncode, service, stdout, stderr)
        return stdout

    def backup_info(self, profile: str) -> bytes:
        from qubesadmin.exc import QubesException  # noqa: PLC0415

        try:
            return bytes(self.app.qubesd_call("dom0", "admin.backup.Info", profile))
        except QubesException as error:
            raise QubesError(f"Qubes refused the backup profile: {error}") from None

    def backup_execute(self, profile: str, on_progress: ProgressCallback) -> None:
        """Run admin.backup.Execute in a DAEMON thread while an EventsDispatcher
        relays backup-progress events (what qvm-backup does). Not asyncio's
        executor: its worker thread is joined at interpreter exit, so a
        qubesd that never answers would keep dom0 from exiting at all."""
        import asyncio  # noqa: PLC0415

        import qubesadmin.events  # noqa: PLC0415
        from qubesadmin.exc import QubesException  # noqa: PLC0415

        def handler(_subject: Any, _event: str, **kwargs: Any) -> None:
            if kwargs.get("backup_profile") == profile:
                try:
                    on_progress(float(kwargs.get("progress", 0)))
                except (TypeError, ValueError):
                    pass

        loop = asyncio.new_event_loop()
        # enable_cache=True (the default) would switch qubesadmin's property
        # cache on for good: once we stop listening, vm.is_running() could
        # answer stale values (docs/QUBES.md, "Progress events").
        dispatcher = qubesadmin.events.EventsDispatcher(self.app, enable_cache=False)
        dispatcher.add_handler("backup-progress", handler)
        events = loop.create_task(dispatcher.listen_for_events())
        finished: asyncio.Future[None] = loop.create_future()

        def settle(error: BaseException | None) -> None:
            if not finished.done():
                if error is None:
                    finished.set_result(None)
                else:
                    finished.set_exception(error)

        def execute() -> None:
            error: BaseException | None = None
            try:
                self.app.qubesd_call("dom0", "admin.backup.Execute", profile)
            except BaseException as failure:  # noqa: BLE001 - handed to the waiting loop
                error = failure
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(settle, error)

        self._abandon = lambda: loop.call_soon_threadsafe(
            settle, BackupEngineError("Qubes' backup did not end after cancel; abandoned"))
        threading.Thread(target=execute, daemon=True, name="qbackup-execute").start()
        try:
            loop.run_until_complete(finished)
        except QubesException as error:
            raise BackupEngineError(f"Qubes backup failed: {error}") from None
        finally:
            events.cancel()
            try:
                loop.run_until_complete(events)
            except (asyncio.CancelledError, Exception):  # noqa: BLE001, S110
                pass
            self._abandon = None
            loop.close()

    def abandon_execute(self) -> None:
        abandon = self._abandon
        if abandon is not None:
            with contextlib.suppress(RuntimeError):
                abandon()

    def backup_cancel(self, profile: str) -> None:
        from qubesadmin.exc import QubesException  # noqa: PLC0415

        try:
            self.app.qubesd_call("dom0", "admin.backup.Cancel", profile)
        except QubesException as error:
            logger.warning("admin.backup.Cancel failed: %s", error)

    def backup_restore(
        self, args: Sequence[str], capture: bool, input_data: bytes | None = None
    ) -> tuple[int, bytes]:
        # Both end qvm-backup-restore's whole process group when a signal
        # interrupts qbackup (processes.started): it gets no signal of its own.
        if capture:
            result = processes.run([QVM_BACKUP_RESTORE, *args], input_data=input_data)
            return result.returncode, result.stdout or b""
        return processes.run_shown([QVM_BACKUP_RESTORE, *args], input_data)
