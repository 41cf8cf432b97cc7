"""RealQubes against a strict fake `qubesadmin`: every Qubes call must be one the
table expects, with exactly the expected arguments (the qubesadmin test model).

The fake mirrors the signatures of qubesadmin on Qubes 4.2 (the oldest release
qbackup supports; qubes-core-admin-client, branch release4.2): a keyword 4.2
lacks is a TypeError here as it is there. FakeVM43 adds what 4.3 changed."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dom0.errors import BackupEngineError, QubesError, ReplyTooLarge, VMNotFound
from testbed.waiting import wait_until


class FakeQubesException(Exception):
    pass


POPEN_STDIO = frozenset({"stdin", "stdout", "stderr"})


class FakeVM:
    """qubesadmin/vm/__init__.py QubesVM, release4.2 signatures."""

    def __init__(self, name: str, running: bool = True, include: bool = True,
                 service_argv: list[str] | None = None) -> None:
        self.name = name
        self.running = running
        self.include_in_backups = include
        self.service_argv = service_argv
        self.log: list[tuple[Any, ...]] = []
        self.removed = False  # qubesd no longer knows it (another process removed it)

    def is_running(self) -> bool:
        # get_power_state: QubesVMNotFoundError from qubesd becomes 'NA'.
        return self.running and not self.removed

    def start(self) -> None:
        if self.removed:
            raise FakeQubesException(f"No such domain: '{self.name}'")
        self.log.append(("start",))

    def shutdown(self, force: bool = False) -> None:  # 4.2: no `wait`
        self.log.append(("shutdown", force))

    def kill(self) -> None:
        self.log.append(("kill",))

    # vm.run_service(service, **kwargs) passes on to app.run_service(dest,
    # service, user=None, *, filter_esc=False, localcmd=None, wait=True,
    # autostart=True, **kwargs), whose leftover kwargs go to Popen.
    def run_service(self, service: str, user: str | None = None, *, filter_esc: bool = False,
                    localcmd: str | None = None, wait: bool = True, autostart: bool = True,
                    **kwargs: Any) -> subprocess.Popen[bytes]:
        self.log.append(("run_service", service))
        assert set(kwargs) <= POPEN_STDIO, f"not a Popen stdio argument: {set(kwargs)}"
        assert self.service_argv is not None, f"unexpected service call {service}"
        return subprocess.Popen(self.service_argv, **kwargs)


class FakeVM43(FakeVM):
    """What qubesadmin 4.3.33 changed: shutdown(force=False, wait=False)."""

    def shutdown(self, force: bool = False, wait: bool = False) -> None:  # type: ignore[override]
        self.log.append(("shutdown", force, wait))


class FakeVMCollection:
    """qubesadmin/app.py VMCollection (release4.2 = release4.3): the VM list
    is fetched from qubesd ONCE; `in`, iteration, keys() and [] answer from it
    until clear_cache() (or refresh_cache(force=True)). [] of a name the list
    lacks is a KeyError even if qubesd knows it now; a VM removed since is
    still handed out (get_blind), and qubesd refuses what is asked of it."""

    def __init__(self, qubesd: dict[str, FakeVM]) -> None:
        self.qubesd = qubesd  # what qubesd knows NOW (other processes change it)
        self._vm_list: dict[str, FakeVM] | None = None
        self.listings = 0  # admin.vm.List calls

    def clear_cache(self, invalidate_name: str | None = None) -> None:
        self._vm_list = None

    def refresh_cache(self, force: bool = False) -> None:
        if not force and self._vm_list is not None:
            return
        self.listings += 1
        self._vm_list = dict(self.qubesd)

    def __getitem__(self, name: str) -> FakeVM:
        if name not in self:
            raise KeyError(name)
        assert self._vm_list is not None
        return self._vm_list[name]

    def __contains__(self, name: object) -> bool:
        self.refresh_cache()
        assert self._vm_list is not None
        return name in self._vm_list

    def __iter__(self) -> Iterator[FakeVM]:
        self.refresh_cache()
        assert self._vm_list is not None
        return iter([self._vm_list[name] for name in sorted(self._vm_list)])

    def keys(self) -> Any:
        self.refresh_cache()
        assert self._vm_list is not None
        return self._vm_list.keys()


class FakeApp:
    """Answers qubesd_call from a table of expected calls, in order."""

    def __init__(self, vms: list[FakeVM], expected: list[tuple[tuple[str, ...], Any]]) -> None:
        self.vms = {vm.name: vm for vm in vms}
        self.expected = list(expected)
        self.events_done = threading.Event()
        self.domains = FakeVMCollection(self.vms)
        self.cache_enabled = False  # qubesadmin/app.py QubesBase.cache_enabled

    def create_elsewhere(self, vm: FakeVM) -> None:
        """Another process (qvm-backup-restore) creates a VM through qubesd."""
        self.vms[vm.name] = vm

    def remove_elsewhere(self, name: str) -> None:
        """Another process removes a VM through qubesd."""
        self.vms.pop(name).removed = True

    def qubesd_call(self, dest: str, method: str, arg: str | None = None,
                    payload: bytes | None = None, payload_stream: Any = None) -> Any:
        assert payload is None
        assert self.expected, f"unexpected qubesd call {(dest, method, arg)}"
        call, answer = self.expected.pop(0)
        assert (dest, method, arg) == call, f"expected {call}, got {(dest, method, arg)}"
        if method == "admin.backup.Execute":
            assert self.events_done.wait(5)
        if isinstance(answer, Exception):
            raise answer
        return answer


class FakeDispatcher:
    """qubesadmin/events/__init__.py EventsDispatcher, release4.2."""

    events: list[dict[str, Any]] = []

    def __init__(self, app: FakeApp, api_method: str = "admin.Events",
                 enable_cache: bool = True) -> None:
        self.app = app
        self.handlers: dict[str, list[Any]] = {}
        if enable_cache:
            app.cache_enabled = True  # and nothing turns it off again

    def add_handler(self, event: str, handler: Any) -> None:
        self.handlers.setdefault(event, []).append(handler)

    async def listen_for_events(self, vm: Any = None, reconnect: bool = True) -> None:
        for kwargs in self.events:
            for handler in self.handlers.get("backup-progress", []):
                handler(None, "backup-progress", **kwargs)
        self.app.events_done.set()
        await asyncio.sleep(3600)


@pytest.fixture
def fake_qubesadmin(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    holder: dict[str, Any] = {}
    module = types.ModuleType("qubesadmin")
    exc = types.ModuleType("qubesadmin.exc")
    events = types.ModuleType("qubesadmin.events")
    exc.QubesException = FakeQubesException  # type: ignore[attr-defined]
    events.EventsDispatcher = FakeDispatcher  # type: ignore[attr-defined]
    module.Qubes = lambda: holder["app"]  # type: ignore[attr-defined]
    module.exc = exc  # type: ignore[attr-defined]
    module.events = events  # type: ignore[attr-defined]
    for name, value in (("qubesadmin", module), ("qubesadmin.exc", exc),
                        ("qubesadmin.events", events)):
        monkeypatch.setitem(sys.modules, name, value)
    FakeDispatcher.events = []
    return holder


def make(holder: dict[str, Any], vms: list[FakeVM],
         expected: list[tuple[tuple[str, ...], Any]]) -> Any:
    from dom0.qubes import RealQubes

    holder["app"] = FakeApp(vms, expected)
    return RealQubes()


def test_execute_relays_progress_of_our_profile_only(fake_qubesadmin: dict[str, Any]) -> None:
    FakeDispatcher.events = [
        {"backup_profile": "qbackup-x", "progress": "12.5"},
        {"backup_profile": "someone-else", "progress": 99},
        {"backup_profile": "qbackup-x", "progress": 100},
    ]
    app = make(fake_qubesadmin, [], [(("dom0", "admin.backup.Execute", "qbackup-x"), None)])
    seen: list[float] = []
    app.backup_execute("qbackup-x", seen.append)
    assert seen == [12.5, 100.0]
    assert fake_qubesadmin["app"].expected == []


def test_execute_failure_becomes_backup_engine_error(fake_qubesadmin: dict[str, Any]) -> None:
    failure = FakeQubesException("Writing backup to VM sys-backup failed")
    app = make(fake_qubesadmin, [], [(("dom0", "admin.backup.Execute", "p"), failure)])
    with pytest.raises(BackupEngineError, match="Writing backup to VM sys-backup failed"):
        app.backup_execute("p", lambda _: None)


def test_info_and_cancel_use_the_admin_api(fake_qubesadmin: dict[str, Any]) -> None:
    app = make(fake_qubesadmin, [], [
        (("dom0", "admin.backup.Info", "p"), b"Total size: | 1.0 MiB"),
        (("dom0", "admin.backup.Cancel", "p"), None),
        (("dom0", "admin.backup.Info", "bad"), FakeQubesException("no such profile")),
    ])
    assert app.backup_info("p") == b"Total size: | 1.0 MiB"
    app.backup_cancel("p")
    with pytest.raises(QubesError, match="no such profile"):
        app.backup_info("bad")


def test_vm_lookups_start_and_kill(fake_qubesadmin: dict[str, Any]) -> None:
    vms = [FakeVM("dom0"), FakeVM("work"), FakeVM("carrier", running=False, include=False)]
    app = make(fake_qubesadmin, vms, [])
    assert app.vm_exists("work") and not app.vm_exists("nope")
    # dom0 too: Qubes' default set is every VM with include_in_backups, and
    # the AdminVM's stands for dom0's home (qubes/backup.py Backup.__init__).
    assert app.vms_in_backups() == ["dom0", "work"]
    assert app.vm_names() == {"dom0", "work", "carrier"}
    assert app.is_running("carrier") is False
    with pytest.raises(VMNotFound):
        app.is_running("nope")
    app.start("carrier")
    app.kill("carrier")
    assert vms[2].log == [("start",), ("kill",)]


def test_vms_another_process_made_or_removed_show_only_after_a_refresh(
        fake_qubesadmin: dict[str, Any]) -> None:
    # qvm-backup-restore creates the restored VMs in its own process: the
    # list this process cached does not show them (qubesadmin/app.py
    # VMCollection.refresh_cache returns at once while _vm_list is set).
    app = make(fake_qubesadmin, [FakeVM("dom0"), FakeVM("work")], [])
    fake = fake_qubesadmin["app"]
    assert app.vm_names() == {"dom0", "work"}
    fake.create_elsewhere(FakeVM("work1"))
    fake.remove_elsewhere("work")
    assert app.vm_names() == {"dom0", "work"}
    assert not app.vm_exists("work1") and app.vm_exists("work")
    with pytest.raises(VMNotFound):
        app.is_running("work1")
    assert app.is_running("work") is False  # 'NA': qubesd no longer knows it
    with pytest.raises(QubesError, match="No such domain"):
        app.start("work")
    assert fake.domains.listings == 1
    app.refresh_vms()
    assert app.vm_names() == {"dom0", "work1"}
    assert app.vm_exists("work1") and not app.vm_exists("work")
    assert fake.domains.listings == 2


@pytest.mark.parametrize("vm_class", [FakeVM, FakeVM43], ids=["qubes-4.2", "qubes-4.3"])
def test_shutdown_waits_through_qubesd_on_both_releases(
        fake_qubesadmin: dict[str, Any], vm_class: type[FakeVM]) -> None:
    # vm.shutdown(wait=True) is a TypeError on 4.2; admin.vm.Shutdown with the
    # argument 'wait' exists on both (qubes/api/admin.py vm_shutdown).
    carrier = vm_class("carrier")
    app = make(fake_qubesadmin, [carrier], [
        (("carrier", "admin.vm.Shutdown", "wait"), None),
        (("carrier", "admin.vm.Shutdown", None), None),
        (("carrier", "admin.vm.Shutdown", "wait"), FakeQubesException("Domain is powered off")),
    ])
    app.shutdown("carrier", wait=True)
    app.shutdown("carrier", wait=False)
    with pytest.raises(QubesError, match="powered off"):
        app.shutdown("carrier")
    assert fake_qubesadmin["app"].expected == []
    with pytest.raises(VMNotFound):
        app.shutdown("nope")


def test_execute_leaves_the_property_cache_off(fake_qubesadmin: dict[str, Any]) -> None:
    # A cache switched on by the dispatcher goes stale once it stops listening:
    # is_running() of a carrier halted afterwards would still say True.
    app = make(fake_qubesadmin, [], [(("dom0", "admin.backup.Execute", "p"), None)])
    app.backup_execute("p", lambda _: None)
    assert fake_qubesadmin["app"].cache_enabled is False


def test_service_call_past_its_timeout_is_killed(fake_qubesadmin: dict[str, Any]) -> None:
    vm = FakeVM("carrier", service_argv=["sleep", "60"])
    app = make(fake_qubesadmin, [vm], [])
    with pytest.raises(subprocess.TimeoutExpired):
        app.run_service_for_stdio("carrier", "qubes.BackupCarrier+abort", b"", timeout=0.5)


def test_shown_restore_output_is_also_returned(fake_qubesadmin: dict[str, Any],
                                               monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path,
                                               capfd: pytest.CaptureFixture[str]) -> None:
    # qvm-backup-restore exits 0 after "Error extracting data": dom0 must see
    # the output of a restore the user watches, too.
    script = tmp_path / "qvm-backup-restore"
    script.write_text("#!/bin/sh\nread line\necho \"got $line $*\"\n"
                      "echo 'Error extracting data: x' >&2\n")
    script.chmod(0o755)
    monkeypatch.setattr("dom0.qubes.QVM_BACKUP_RESTORE", str(script))
    app = make(fake_qubesadmin, [], [])
    code, output = app.backup_restore(["-p", "-", "cmd"], capture=False, input_data=b"pw\n")
    assert code == 0
    assert output == b"got pw -p - cmd\nError extracting data: x\n"
    assert "Error extracting data" in capfd.readouterr().err


def test_service_output_is_bounded(fake_qubesadmin: dict[str, Any]) -> None:
    vm = FakeVM("carrier", service_argv=["sh", "-c", "cat >/dev/null; head -c 1000000 /dev/zero"])
    app = make(fake_qubesadmin, [vm], [])
    with pytest.raises(ReplyTooLarge):
        app.run_service_for_stdio("carrier", "qubes.BackupCarrier+list", b"\n", max_output=1000)


def test_service_failure_keeps_status_and_stderr(fake_qubesadmin: dict[str, Any]) -> None:
    vm = FakeVM("carrier", service_argv=["sh", "-c", "cat; echo broken >&2; exit 75"])
    app = make(fake_qubesadmin, [vm], [])
    with pytest.raises(subprocess.CalledProcessError) as caught:
        app.run_service_for_stdio("carrier", "qubes.BackupCarrier+info", b"line\n")
    assert caught.value.returncode == 75
    assert caught.value.stdout == b"line\n" and caught.value.stderr == b"broken\n"
    assert vm.log == [("run_service", "qubes.BackupCarrier+info")]


# A whole dom0 process against a qubesadmin stand-in whose Execute blocks
# like qubesd after a Cancel: it returns only once Cancel AND the carrier's
# abort came (MODE=ends), or never (MODE=hangs: a qubesd that does not answer).
FAKE_QUBESADMIN = '''
import subprocess, sys, threading
LOG = []
class QubesException(Exception):
    pass
class VM:
    def __init__(self, app, name):
        self.app, self.name = app, name
    def kill(self):
        self.app.note("kill " + self.name)
    def run_service(self, service, user=None, *, filter_esc=False, localcmd=None, wait=True,
                    autostart=True, **kwargs):
        self.app.note("service " + service)
        if service.endswith("+abort"):
            self.app.aborted.set()
        return subprocess.Popen(["sh", "-c", "cat >/dev/null"], **kwargs)
class Qubes:
    def __init__(self):
        self.cancelled, self.aborted = threading.Event(), threading.Event()
        self.domains = {"carrier": VM(self, "carrier")}
        self.cache_enabled = False
    def note(self, text):
        print(text, flush=True)
    def qubesd_call(self, dest, method, arg=None, payload=None, payload_stream=None):
        self.note(method)
        if method == "admin.backup.Cancel":
            self.cancelled.set()
        elif method == "admin.backup.Execute":
            if MODE == "hangs":
                threading.Event().wait()
            self.cancelled.wait()
            self.aborted.wait()
            raise QubesException("Backup cancelled")
        return b""
'''
FAKE_EVENTS = '''
import asyncio
class EventsDispatcher:
    def __init__(self, app, api_method="admin.Events", enable_cache=True):
        pass
    def add_handler(self, event, handler):
        pass
    async def listen_for_events(self, vm=None, reconnect=True):
        await asyncio.sleep(3600)
'''
DOM0_RUN = '''
import sys
from dom0 import qubes_backup
from dom0.errors import QbackupError, exit_code_for
from dom0.qubes import RealQubes
from dom0.session import SignalGuard
qubes_backup.EXECUTE_GRACE = qubes_backup.KILLED_GRACE = 1.0
try:
    with SignalGuard() as guard:
        qubes_backup.run_qubes_backup(RealQubes(), "carrier", "p", guard, lambda _: None)
except QbackupError as error:
    print("dom0 exits", exit_code_for(error), flush=True)
    sys.exit(exit_code_for(error))
'''


@pytest.mark.parametrize("mode", ["ends", "hangs"])
def test_sigterm_ends_a_dom0_whose_execute_blocks(tmp_path: Path, mode: str) -> None:
    package = tmp_path / "fake" / "qubesadmin"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        f"MODE = {mode!r}\n" + FAKE_QUBESADMIN + "from qubesadmin import exc, events\n")
    (package / "exc.py").write_text("from qubesadmin import QubesException\n")
    (package / "events.py").write_text(FAKE_EVENTS)
    repo = Path(__file__).resolve().parents[2]
    process = subprocess.Popen(
        [sys.executable, "-c", DOM0_RUN], stdout=subprocess.PIPE, text=True,
        env={"PYTHONPATH": f"{tmp_path / 'fake'}:{repo}", "PATH": "/usr/bin:/bin"})
    assert process.stdout is not None
    try:
        assert process.stdout.readline() == "admin.backup.Execute\n"  # it blocks now
        process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        output = process.communicate(timeout=60)[0]
    finally:
        process.kill()
        process.wait()
    assert time.monotonic() - started < 30
    assert process.returncode == 143
    assert "admin.backup.Cancel\nservice qubes.BackupCarrier+abort\n" in output
    # abort sufficed when Qubes then ended Execute; otherwise the carrier is
    # killed and dom0 stops waiting for a qubesd that never answers.
    assert ("kill carrier" in output) == (mode == "hangs")


# qvm-backup-restore gets no signal of its own when qbackup is stopped: this
# one ignores SIGTERM (as a program stuck in a call may), and so does its
# child, so only killing the whole group ends them.
FAKE_RESTORE = '''#!/bin/bash
trap '' TERM
sleep 300 &
echo "$!" > "$PIDFILE.new" && mv "$PIDFILE.new" "$PIDFILE"
wait
'''
DOM0_RESTORE = '''
import sys
from dom0 import processes, qubes
from dom0.errors import QbackupError, exit_code_for
from dom0.session import SignalGuard
qubes.QVM_BACKUP_RESTORE = sys.argv[1]
processes.STOP_GRACE = 1.0
try:
    with SignalGuard():
        qubes.RealQubes().backup_restore(["-p", "-", "x"], capture=sys.argv[2] == "capture",
                                         input_data=b"pw\\n")
except QbackupError as error:
    sys.exit(exit_code_for(error))
'''


def process_gone(pid: int) -> bool:
    """Return whether PID has ended (gone, or a zombie nobody reaped yet)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.mark.parametrize("mode", ["capture", "shown"])  # verify and drill / restore
def test_sigterm_during_a_restore_ends_it_and_its_children(tmp_path: Path, mode: str) -> None:
    package = tmp_path / "fake" / "qubesadmin"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        "MODE = 'ends'\n" + FAKE_QUBESADMIN + "from qubesadmin import exc, events\n")
    (package / "exc.py").write_text("from qubesadmin import QubesException\n")
    (package / "events.py").write_text(FAKE_EVENTS)
    script = tmp_path / "qvm-backup-restore"
    script.write_text(FAKE_RESTORE)
    script.chmod(0o755)
    pidfile = tmp_path / "child.pid"
    repo = Path(__file__).resolve().parents[2]
    process = subprocess.Popen(
        [sys.executable, "-c", DOM0_RESTORE, str(script), mode], stdout=subprocess.DEVNULL,
        env={"PYTHONPATH": f"{tmp_path / 'fake'}:{repo}", "PATH": "/usr/bin:/bin",
             "PIDFILE": str(pidfile)})
    try:
        deadline = time.monotonic() + 60
        while not pidfile.exists():  # the restore and its child run now
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.05)
        child = int(pidfile.read_text())
        process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        process.wait(timeout=60)
    finally:
        process.kill()
        process.wait()
    assert time.monotonic() - started < 30
    assert process.returncode == 143
    # The child was signalled (SIGTERM, then SIGKILL with its group) before
    # dom0 exited, but a signal is delivered when the kernel next runs the
    # child: on a loaded machine that can come after dom0's exit. It must end
    # soon after; a child the group kill missed would sleep for 300 s.
    wait_until(lambda: process_gone(child), "the restore's child to end", timeout=10)
