"""SimulatedQubes: the Qubes adapter as Qubes 4.2 behaves, no kinder.

Only Qubes is simulated, and where Qubes 4.2 and 4.3 differ it behaves like
4.2 (the oldest release qbackup supports). Each behaviour names the Qubes
source it follows; docs/QUBES.md explains them. The carrier side is real: the
backup stream goes into `qbackup-carrier put NAME` run by a shell that behaves
like the carrier VM's qubes.Backup service (read ONE line, `command -v`,
`eval "set -- $line"`), in an environment the test chooses (PATH with the real
qbackup-carrier, QBACKUP_CARRIER_CONFIG pointing at the real sshd).
qubes.BackupCarrier calls run the real service script; qvm-backup-restore
runs the location command like qubes.Restore, three times, ignoring its
exit status.

Strictness: anything dom0 asks that real Qubes would refuse raises, and
anything the simulator does not model raises SimulationError (a test bug).
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dom0.errors import BackupEngineError, QubesError, ReplyTooLarge, VMNotFound
from testbed.qubes_sim import restore, stream
from testbed.qubes_sim.errors import SimulationError

REPO = Path(__file__).resolve().parents[2]
CARRIER_SERVICE_SCRIPT = REPO / "carrier_vm" / "qubes-rpc" / "qubes.BackupCarrier"
WRITE_CHUNK = 1024 * 1024
DOM0 = "dom0"  # the AdminVM: backed up and restored as the dom0 user's home
F_SETPIPE_SZ = 1031  # fcntl.F_SETPIPE_SZ (Linux)

# The carrier VM's qubes.Backup (qubes-core-agent-linux, qubes-rpc/qubes.Backup,
# release4.2 = release4.3), its messages going to stdout, which qubesd sends
# to /dev/null. An unknown command exits 1; the command's status is the
# service's (`"$@" && sync`).
QUBES_BACKUP_SH = r"""
echo Starting Backupcopy
read -r args
if [ -d "$args" ]; then
    TARGET="$args/qubes-backup-$(date +'%Y-%m-%dT%H%M%S')"
    dd bs=128K iflag=fullblock conv=fsync of="$TARGET" 2>/dev/null && sync -- "$args"
else
    COMMAND=$(echo "$args" | cut -d ' ' -f 1)
    if command -v "$COMMAND" >/dev/null; then
        sync
        eval "set -- $args"
        "$@" && sync
    else
        echo "Invalid command $COMMAND"
        exit 1
    fi
fi
"""
# qubes/backup.py _monitor_process: the VM's stderr joins the error message,
# keeping printable ASCII minus CR, LF, '%', '{', '}'.
PRINTABLE = frozenset(chr(code) for code in range(32, 127)) | {"\t", "\x0b", "\x0c"}


def filtered_stderr(data: bytes) -> str:
    """Given the VM command's stderr, return it as qubesd quotes it."""
    text = data.decode("ascii", errors="ignore")
    return "".join(c for c in text if c in PRINTABLE and c not in "\r\n%{}")


@dataclass
class SimVM:
    name: str
    running: bool = False
    include_in_backups: bool = True
    size: int = 0
    backup_timestamp: int | None = None

    def data(self) -> bytes:
        return stream.vm_data(self.name, self.size)


@dataclass
class Interventions:
    """Ways a test makes Qubes misbehave or reacts to progress."""

    engine_fails_at: float | None = None  # qubesd's archiving fails at this fraction
    kill_carrier_at: float | None = None  # the carrier process dies at this fraction
    on_progress: Callable[[float], None] | None = None
    # Called once when qubesd, after a cancel or failure, starts waiting for
    # the VM's command to exit (the moment a real run would hang).
    on_engine_waits: Callable[[], None] | None = None
    corrupt_stream_byte: int | None = None  # flip this byte of the stream in transit
    # Called before each run of the restore command, with header_only (the
    # two header passes: True; the data pass: False).
    on_restore_pass: Callable[[bool], None] | None = None


@dataclass
class SimulatedQubes:
    """A fake dom0 whose VMs are data and whose carrier VM is a local process env."""

    profile_dir: Path
    restore_dir: Path
    dom0_home: Path  # the dom0 user's home, where Qubes restores dom0's home
    carrier_env: dict[str, str]
    carrier_script: Path = CARRIER_SERVICE_SCRIPT
    vms: dict[str, SimVM] = field(default_factory=dict)
    passphrase_vms: dict[str, str] = field(default_factory=dict)
    interventions: Interventions = field(default_factory=Interventions)
    calls: list[tuple[str, ...]] = field(default_factory=list)
    carrier_stderr: list[bytes] = field(default_factory=list)
    restore_runs: int = 0
    restore_installed_filters: frozenset[str] = frozenset({"gzip", "bzip2", "xz", "zstd"})
    # Only the restore side differs between the releases qbackup supports
    # (docs/QUBES.md, "Supported releases"): "4.2" (the default) or "4.3".
    restore_release: str = "4.2"
    # The VM list qubesadmin's client caches in this process (VMCollection
    # _vm_list, qubesadmin/app.py, release4.2 and 4.3): taken at the first
    # lookup, then every `in`, listing and [] answers from it until the code
    # calls refresh_vms. VMs made or removed meanwhile by another process
    # (qvm-backup-restore, a test's remove_vm) do not show.
    _listed: set[str] | None = None
    _running: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _cancelled: set[str] = field(default_factory=set)
    _vm_processes: dict[str, set[subprocess.Popen[bytes]]] = field(default_factory=dict)

    # -- VMs -------------------------------------------------------------
    def add_vm(self, name: str, size: int = 0, running: bool = False,
               include_in_backups: bool = True) -> SimVM:
        vm = SimVM(name=name, running=running, include_in_backups=include_in_backups, size=size)
        self.vms[name] = vm
        return vm

    def remove_vm(self, name: str) -> None:
        """Hook: another process removes a VM (this one's cached list still
        names it until refresh_vms or the next process)."""
        del self.vms[name]

    def new_process(self) -> None:
        """A new qbackup process: a new qubesadmin.Qubes(), nothing cached."""
        self._listed = None

    def refresh_vms(self) -> None:
        """VMCollection.clear_cache(): the next lookup lists the VMs again."""
        self.calls.append(("refresh_vms",))
        self._listed = None

    def _vm_list(self) -> set[str]:
        """The cached list; admin.vm.List only when there is none."""
        if self._listed is None:
            self.calls.append(("admin.vm.List",))
            self._listed = set(self.vms)
        return self._listed

    def _vm(self, name: str) -> SimVM:
        """VMCollection.__getitem__: KeyError for a name the CACHED list lacks
        (a VM created since); a VM removed since is still handed out, and
        qubesd refuses what is then asked of it (QubesVMNotFoundError)."""
        if name not in self._vm_list():
            raise VMNotFound(f"no VM named {name}")
        try:
            return self.vms[name]
        except KeyError:
            raise QubesError(f"No such domain: {name!r}") from None

    def vm_exists(self, name: str) -> bool:
        self.calls.append(("vm_exists", name))
        return name in self._vm_list()

    def is_running(self, name: str) -> bool:
        """QubesVM.is_running: the power state comes from qubesd each time
        (the property cache is off); a VM gone meanwhile is 'NA', not running
        (get_power_state catches QubesVMNotFoundError)."""
        self.calls.append(("is_running", name))
        if name not in self._vm_list():
            raise VMNotFound(f"no VM named {name}")
        vm = self.vms.get(name)
        return vm is not None and vm.running

    def start(self, name: str) -> None:
        self.calls.append(("start", name))
        vm = self._vm(name)
        if vm.running:
            raise QubesError(f"VM {name} is already running")  # qubesd refuses too
        vm.running = True

    def shutdown(self, name: str, wait: bool = True) -> None:
        """admin.vm.Shutdown (qubes/api/admin.py vm_shutdown, qubes/vm/qubesvm.py
        shutdown, release4.2): a halted VM is refused."""
        self.calls.append(("shutdown", name, str(wait)))
        vm = self._vm(name)
        if not vm.running:
            raise QubesError(f"Domain is powered off: {name!r}")
        self._end_processes(name)
        vm.running = False

    def kill(self, name: str) -> None:
        """admin.vm.Kill (qubes/vm/qubesvm.py kill, release4.2): refused for a
        halted VM; otherwise every process in the VM ends at once."""
        self.calls.append(("kill", name))
        vm = self._vm(name)
        if not vm.running:
            raise QubesError(f"Domain is powered off: {name!r}")
        self._end_processes(name)
        vm.running = False

    def vm_names(self) -> set[str]:
        self.calls.append(("vm_names",))
        return set(self._vm_list())

    def _end_processes(self, name: str) -> None:
        for process in list(self._vm_processes.get(name, ())):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)

    def _spawn_in(self, vm: str, argv: list[str], extra_env: dict[str, str] | None = None,
                  stdout: int = subprocess.PIPE) -> subprocess.Popen[bytes]:
        """Given a VM, start ARGV as a process "in" it (killed with the VM)."""
        process = subprocess.Popen(  # noqa: S603
            argv, stdin=subprocess.PIPE, stdout=stdout, stderr=subprocess.PIPE,
            start_new_session=True, env=self._carrier_env(extra_env))
        self._vm_processes.setdefault(vm, set()).add(process)
        return process

    def _reap(self, vm: str, process: subprocess.Popen[bytes]) -> int:
        status = process.wait()
        self._vm_processes.get(vm, set()).discard(process)
        return status

    def vms_in_backups(self) -> list[str]:
        """The cached list, each VM's include_in_backups read from qubesd."""
        self.calls.append(("vms_in_backups",))
        return sorted(name for name in self._vm_list() if self._vm(name).include_in_backups)

    # -- processes in the "carrier VM" -----------------------------------
    def _carrier_env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(self.carrier_env)
        env.update(extra or {})
        return env

    def _autostart(self, name: str) -> SimVM:
        """qrexec calls from dom0 start a halted target VM (qubesadmin's
        run_service autostart)."""
        vm = self._vm(name)
        if not vm.running:
            self.calls.append(("autostart", name))
            vm.running = True
        return vm

    def _require_running(self, name: str) -> SimVM:
        vm = self._vm(name)
        if not vm.running:
            raise QubesError(f"VM {name} is not running")
        return vm

    def run_service_for_stdio(self, vm: str, service: str, input_data: bytes = b"",
                              max_output: int = 64 * 1024, timeout: float | None = None) -> bytes:
        """A dom0 qrexec call: qubesadmin's run_service starts a halted VM
        (app.py run_service autostart=True, release4.2)."""
        self.calls.append(("run_service_for_stdio", vm, service))
        self._autostart(vm)
        base, _, argument = service.partition("+")
        if base == "qubes.BackupPassphrase" and vm in self.passphrase_vms:
            return self.passphrase_vms[vm].encode() + b"\n"
        if base != "qubes.BackupCarrier":
            raise SimulationError(f"service {base} is not installed in the simulated {vm}")
        # qrexec rule: arguments use only A-Z a-z 0-9 - _ . +
        if not all(c.isalnum() or c in "-_.+" for c in argument):
            raise SimulationError(f"qrexec would refuse the argument {argument!r}")
        process = self._spawn_in(vm, [str(self.carrier_script), argument],
                                 {"QREXEC_SERVICE_ARGUMENT": argument,
                                  "QREXEC_REMOTE_DOMAIN": "dom0"})
        expired = threading.Event()

        def expire() -> None:
            expired.set()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)

        timer = threading.Timer(timeout, expire) if timeout is not None else None
        if timer is not None:
            timer.daemon = True
            timer.start()
        stderr_box: list[bytes] = []

        def feed() -> None:
            try:
                assert process.stdin is not None
                process.stdin.write(input_data)
                process.stdin.close()
            except OSError:
                pass

        def drain() -> None:
            assert process.stderr is not None
            stderr_box.append(process.stderr.read())

        threads = [threading.Thread(target=feed), threading.Thread(target=drain)]
        for thread in threads:
            thread.start()
        assert process.stdout is not None
        chunks: list[bytes] = []
        total = 0
        overflow = False
        while chunk := process.stdout.read(65536):
            total += len(chunk)
            if total > max_output:
                overflow = True
                os.killpg(process.pid, signal.SIGKILL)
                break
            chunks.append(chunk)
        returncode = self._reap(vm, process)
        if timer is not None:
            timer.cancel()
        for thread in threads:
            thread.join()
        stdout = b"".join(chunks)
        stderr = stderr_box[0] if stderr_box else b""
        self.carrier_stderr.append(stderr)
        if expired.is_set() and timeout is not None:
            raise subprocess.TimeoutExpired(service, timeout, stdout, stderr)
        if overflow:
            raise ReplyTooLarge(f"{service} in {vm} sent more than {max_output} bytes; refused")
        if returncode != 0:
            raise subprocess.CalledProcessError(returncode, service, stdout, stderr)
        return stdout

    # -- backup engine ---------------------------------------------------
    def _load_profile(self, profile: str) -> dict[str, object]:
        """Read a profile like qubesd's _load_backup_profile (qubes/api/admin.py,
        release4.2): include, destination_vm and destination_path are required,
        exclude defaults to [], compression to True; other keys are ignored."""
        path = self.profile_dir / f"{profile}.conf"
        try:
            info = path.lstat()
        except FileNotFoundError:
            raise QubesError(f"Backup profile {profile} does not exist") from None
        if not stat.S_ISREG(info.st_mode):
            raise SimulationError(f"backup profile {profile} is not a regular file")
        data = yaml.safe_load(path.read_text())
        if not isinstance(data, dict):
            raise QubesError("Invalid backup profile")
        if "passphrase_text" in data and stat.S_IMODE(info.st_mode) != 0o600:
            # Not a Qubes refusal: qbackup's own promise (docs/QUBES.md).
            raise SimulationError(f"profile holding passphrase_text has mode "
                                  f"{stat.S_IMODE(info.st_mode):o}, not 600")
        for key in ("destination_vm", "destination_path", "include"):
            if key not in data:
                raise QubesError(f"Invalid backup profile - missing '{key}'")
        if str(data["destination_vm"]) not in self.vms:
            raise QubesError("Invalid destination_vm specified in backup profile")
        return data

    def _selected_vms(self, data: dict[str, object]) -> list[SimVM]:
        """include: null = every VM with include_in_backups; a list selects the
        VMs it names (names no VM has select nothing); then exclude."""
        include = data["include"]
        exclude = data.get("exclude", [])
        if not isinstance(exclude, list):
            raise QubesError("exclude must be a list")  # qubesd: a TypeError
        if include is None:
            names = [vm.name for vm in self.vms.values() if vm.include_in_backups]
        elif isinstance(include, list):
            names = [vm for vm in self.vms if vm in {str(name) for name in include}]
        else:
            raise QubesError("include must be a list or null")  # qubesd: a TypeError
        return [self.vms[name] for name in names if name not in exclude]

    def backup_info(self, profile: str) -> bytes:
        self.calls.append(("admin.backup.Info", profile))
        data = self._load_profile(profile)  # skip_passphrase=True: no passphrase needed
        vms = self._selected_vms(data)
        rows = "".join(f"{vm.name:>20} |   VM | {human(vm.size):>12} |\n" for vm in vms)
        total = sum(vm.size for vm in vms)
        return (f"{'VM':>20} | type | {'size':>12} |\n{rows}"
                f"{'Total size:':>27} | {human(total):>12}\n").encode()

    def _passphrase(self, profile: str, data: dict[str, object]) -> str:
        """The passphrase as qubesd gets it: passphrase_text wins; a
        passphrase_vm is asked WITHOUT autostart and its answer stripped, a
        newline inside refused (qubes/api/admin.py, qubes/vm/qubesvm.py
        run_service autostart=False, release4.2)."""
        if "passphrase_text" in data:
            return str(data["passphrase_text"])
        if "passphrase_vm" not in data:
            raise BackupEngineError("Invalid backup profile - you need to specify"
                                    " passphrase_text or passphrase_vm")
        name = str(data["passphrase_vm"])
        vm = self.vms.get(name)
        if vm is None:
            raise BackupEngineError("Invalid backup profile - invalid passphrase_vm")
        if not vm.running:
            raise BackupEngineError(
                f"Domain not running (either powered off or paused): {name!r}")
        self.calls.append(("qubesd asks", name, f"qubes.BackupPassphrase+{profile}"))
        if name not in self.passphrase_vms:
            raise BackupEngineError(f"Failed to retrieve passphrase from '{name}' VM")
        answer = (self.passphrase_vms[name] + "\n").encode().strip()
        if b"\n" in answer:
            raise BackupEngineError("Got empty response from qubesd")  # PermissionDenied
        return answer.decode()

    def backup_execute(self, profile: str, on_progress: Callable[[float], None]) -> None:
        """Like qubesd's backup_execute and backup_do (qubes/backup.py,
        release4.2): start qubes.Backup in the (running) destination VM, send
        ONE line then the stream. When the archiving is cancelled or fails,
        qubesd first waits for the VM's command to EXIT and only then closes
        the stream; then Execute fails. Every failure comes back as
        BackupEngineError, as RealQubes maps qubesd's."""
        self.calls.append(("admin.backup.Execute", profile))
        try:
            data = self._load_profile(profile)
        except QubesError as error:
            raise BackupEngineError(str(error)) from None
        if profile in self._running:
            raise BackupEngineError("Backup already running")
        vms = self._selected_vms(data)
        destination = str(data["destination_vm"])
        passphrase = self._passphrase(profile, data)
        if not self.vms[destination].running:  # run_service without autostart
            raise BackupEngineError(
                f"Domain not running (either powered off or paused): {destination!r}")
        compression = data.get("compression", True)
        if not isinstance(data["destination_path"], str):  # qubesd calls .replace() on it
            raise BackupEngineError("'bool' object has no attribute 'replace'")
        line = data["destination_path"].replace("\r", "").replace("\n", "")
        salt = stream.derive_key(line, b"salt")[:16]
        chunks = stream.build_stream([(vm.name, vm.size) for vm in vms], passphrase, salt,
                                     compression)
        total = len(stream.MAGIC) + sum(vm.size for vm in vms) + 400
        process = self._spawn_in(destination, ["/bin/sh", "-c", QUBES_BACKUP_SH],
                                 stdout=subprocess.DEVNULL)
        assert process.stdin is not None
        self._running[profile] = process
        stderr_box: list[bytes] = []
        drainer = threading.Thread(target=lambda: stderr_box.append(process.stderr.read()))  # type: ignore[union-attr]
        drainer.start()
        try:
            outcome = self._deliver(profile, process, line, self._pieces(chunks), total,
                                    on_progress)
            if outcome != "sent" and self.interventions.on_engine_waits is not None:
                waits = self.interventions.on_engine_waits
                self.interventions.on_engine_waits = None
                waits()
            # The order that matters: wait for the VM's command, THEN close.
            returncode = self._reap(destination, process)
        finally:
            with contextlib.suppress(BrokenPipeError):
                process.stdin.close()
            self._reap(destination, process)
            drainer.join()
            self.carrier_stderr.append(stderr_box[0] if stderr_box else b"")
            del self._running[profile]
            self._cancelled.discard(profile)
        if returncode != 0:
            raise BackupEngineError(f"Writing backup to VM {destination} failed: "
                                    f"{filtered_stderr(stderr_box[0] if stderr_box else b'')}")
        if outcome == "cancelled":
            raise BackupEngineError("Backup cancelled")
        if outcome == "failed":
            raise BackupEngineError("ERROR: the backup engine failed (simulated)")
        if outcome == "pipe closed":
            raise BackupEngineError("ERROR: Failed to write the backup, out of disk space?")
        for vm in vms:
            vm.backup_timestamp = int(time.time())

    def _pieces(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        """Given the stream's chunks, yield WRITE_CHUNK pieces, flipping the
        byte interventions.corrupt_stream_byte names (corruption in transit)."""
        sent = 0
        for chunk in chunks:
            for offset in range(0, len(chunk), WRITE_CHUNK):
                piece = chunk[offset : offset + WRITE_CHUNK]
                target = self.interventions.corrupt_stream_byte
                if target is not None and sent <= target < sent + len(piece):
                    index = target - sent
                    piece = piece[:index] + bytes([piece[index] ^ 0xFF]) + piece[index + 1 :]
                sent += len(piece)
                yield piece

    def _misbehave(self, process: subprocess.Popen[bytes], fraction: float) -> bool:
        """Given how far the stream got, fire the kill hook once; return
        whether the engine fails here (interventions.engine_fails_at)."""
        kill_at = self.interventions.kill_carrier_at
        if kill_at is not None and fraction >= kill_at:
            self.interventions.kill_carrier_at = None
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        fail_at = self.interventions.engine_fails_at
        if fail_at is not None and fraction >= fail_at:
            self.interventions.engine_fails_at = None
            return True
        return False

    def _deliver(self, profile: str, process: subprocess.Popen[bytes], line: str,
                 pieces: Iterator[bytes], total: int,
                 on_progress: Callable[[float], None]) -> str:
        """Write the line and the stream to qubes.Backup's stdin, reporting
        progress; return "sent" (all written, stdin closed: the VM sees the
        end), "cancelled", "failed" or "pipe closed" (stdin left OPEN)."""
        stdin = process.stdin
        assert stdin is not None
        with contextlib.suppress(OSError):
            # Big pipe buffers, like qrexec's (docs/QUBES.md, "The stream").
            fcntl.fcntl(stdin.fileno(), F_SETPIPE_SZ, WRITE_CHUNK)
        sent = 0
        try:
            # qubesd writes the line with os.write at once (no buffer): flush.
            stdin.write(line.encode() + b"\n")
            stdin.flush()
            for piece in pieces:
                if self._misbehave(process, (sent + len(piece)) / total):
                    return "failed"
                if profile in self._cancelled:
                    return "cancelled"
                stdin.write(piece)
                stdin.flush()
                sent += len(piece)
                percent = min(100.0, 100.0 * sent / total)
                on_progress(percent)
                if self.interventions.on_progress is not None:
                    self.interventions.on_progress(percent)
            if profile in self._cancelled:
                return "cancelled"
            stdin.close()
        except BrokenPipeError:
            return "pipe closed"
        return "sent"

    def abandon_execute(self) -> None:
        """Nothing to abandon: a simulated Execute always ends once the VM's
        command is gone (killing the VM ends it)."""
        self.calls.append(("abandon_execute",))

    def backup_cancel(self, profile: str) -> None:
        """admin.backup.Cancel: cancels the running backup task; refused when
        none runs ("Backup operation not running"). qubesd does NOT close the
        stream: backup_execute then waits for the VM's command to exit."""
        self.calls.append(("admin.backup.Cancel", profile))
        if profile not in self._running:
            raise QubesError("Backup operation not running")
        self._cancelled.add(profile)

    # -- qvm-backup-restore ----------------------------------------------
    def _run_location(self, location: str, header_only: bool) -> tuple[bytes, int]:
        """Run the location command like qubes.Restore; return (stdout, status)."""
        self.restore_runs += 1
        if self.interventions.on_restore_pass is not None:
            self.interventions.on_restore_pass(header_only)
        data, status, stderr = restore.run_location(self._carrier_env(), location, header_only)
        self.carrier_stderr.append(stderr)
        return data, status

    def backup_restore(self, args: Sequence[str], capture: bool,
                       input_data: bytes | None = None) -> tuple[int, bytes]:
        """qvm-backup-restore as in qubesadmin 4.2 (tools/qvm_backup_restore.py,
        backup/restore.py, backup/dispvm.py), a process of its own: the VMs it
        creates are unknown to qbackup's cached VM list until refresh_vms, and
        an exception in qbackup meanwhile (a signal) ends it together with the
        qubes.Restore calls it made (qrexec closes them). Paranoid mode runs
        the inner restore in a disposable VM whose log comes back only with
        --auto-close, and the outer tool exits 0 whenever the inner one did."""
        self.calls.append(("qvm-backup-restore", *args))
        options, location, wanted = restore.parse_restore_args(list(args))
        if options["dest_vm"] not in self.vms:
            message = f"qvm-backup-restore: error: no such domain: {options['dest_vm']!r}\n"
            return 2, message.encode()
        if not options["paranoid_mode"]:
            return self._restore(options, location, wanted, input_data)
        if options["passphrase_file"] == "-":
            # dispvm.py transfer_pass_file: qvm-copy-to-vm of the FILE '-'
            return 1, b"qvm-backup-restore: error: cannot copy the passphrase file '-'\n"
        head = (b"app: Starting restore process in a DisposableVM...\n"
                b"app: When operation completes, close its window manually.\n")
        # qvm_backup_restore.main: paranoid mode sets dom0_home False.
        inner = dict(options, paranoid_mode=False, skip_dom0_home=True)
        code, log = self._restore(inner, location, wanted, input_data)
        log += f"exit code: {code}\n".encode()  # what dispvm.py run() reads back
        if code != 0:  # BackupRestoreError: its log is printed, then error_runtime
            return 1, head + log + (f"qvm-backup-restore: error: qvm-backup-restore failed"
                                    f" with {code}\n").encode()
        return 0, head + (log if options["auto_close"] else b"")

    def _restore(self, options: dict[str, Any], location: str, wanted: list[str],
                 input_data: bytes | None) -> tuple[int, bytes]:
        """One (inner or plain) qvm-backup-restore: three qubes.Restore runs,
        the summary, the VMs created (metadata first), then their data; a
        data error only LOGGED. Return (status, output)."""
        self._autostart(options["dest_vm"])
        passphrase = restore.read_passphrase(options["passphrase_file"], input_data)
        output = b"app: Checking backup content...\n"
        header_bytes, _ = self._run_location(location, header_only=True)
        try:
            header = stream.parse_header(header_bytes, passphrase)
            filter_used = restore.header_filter(header, options["compression"],
                                                self.restore_release,
                                                self.restore_installed_filters)
        except (stream.StreamError, restore.RestoreRefused) as error:
            return 1, output + f"qvm-backup-restore: error: {error}\n".encode()
        self._run_location(location, header_only=True)  # qubes.xml.000.enc
        # dom0's home escapes both the VM list and -x: restore_info_verify
        # skips 'dom0', so only --skip-dom0-home leaves it out (restore.py).
        home = DOM0 in dict(header.vms) and not options["skip_dom0_home"]
        names = [name for name, _ in header.vms if name != DOM0
                 and (not wanted or name in wanted) and name not in options["exclude"]]
        if options["verify_only"]:
            volumes, failure = self._extract(location, passphrase, header, filter_used)
            if failure is not None:
                return 1, output + f"qvm-backup-restore: error: {failure}\n".encode()
            return 0, output + b"".join(f"qubesadmin.backup: -> Verifying {name}...\n".encode()
                                        for name in names) + b"qubesadmin.backup: -> Done.\n"
        try:
            targets = restore.plan_targets(names, set(self.vms), options, self.restore_release)
        except restore.Conflict as error:
            return 1, output + f"qvm-backup-restore: error: {error}\n".encode()
        output += restore.summary(names, targets, home)
        for name, target in targets.items():  # restore_do: metadata (the VMs) first
            output += f"qubesadmin.backup: -> Restoring {name}...\n".encode()
            self.add_vm(target, include_in_backups=False)
        if home:  # announced like a VM; its "VM" is dom0 itself, nothing is created
            output += f"qubesadmin.backup: -> Restoring {DOM0}...\n".encode()
        volumes, failure = self._extract(location, passphrase, header, filter_used)
        if failure is not None:
            return 0, output + (f"qubesadmin.backup: Error extracting data: {failure}\n"
                                f"qubesadmin.backup: -> Done.\n").encode()
        self.restore_dir.mkdir(parents=True, exist_ok=True)
        for name, target in targets.items():
            (self.restore_dir / f"{target}.img").write_bytes(volumes[name])
            self.vms[target].size = len(volumes[name])
        if home:
            output += self._restore_dom0_home(volumes[DOM0])
        return 0, output + b"qubesadmin.backup: -> Done.\n"

    def _extract(self, location: str, passphrase: str, header: Any,
                 filter_used: str) -> tuple[dict[str, bytes], str | None]:
        """The data pass (its status ignored): return (each VM's data, None),
        or ({}, why) if its parts fail their HMAC or cannot be decompressed."""
        body, _ = self._run_location(location, header_only=False)
        try:
            volumes = stream.check_stream(body, passphrase)
            restore.check_decompression(header, filter_used, self.restore_installed_filters)
        except (stream.StreamError, restore.RestoreRefused) as error:
            return {}, str(error)
        return volumes, None

    def _restore_dom0_home(self, data: bytes) -> bytes:
        """restore.py _handle_dom0: a new home-restore-DATE directory in the
        dom0 user's home (no VM is created); return the line it logs."""
        directory = f"home-restore-{time.strftime('%Y-%m-%d-%H%M%S')}"
        (self.dom0_home / directory).mkdir(parents=True)
        (self.dom0_home / directory / "home.data").write_bytes(data)
        return (f"qubesadmin.backup: Restoring home of user '{getpass.getuser()}' to"
                f" '{directory}' directory...\n").encode()


def human(size: int) -> str:
    """Qubes' size_to_human: bytes plain, else one decimal and a binary unit."""
    if size < 1024:
        return str(size)
    for unit, scale in (("KiB", 1024), ("MiB", 1024**2)):
        if size < scale * 1024:
            return f"{round(size / scale, 1)} {unit}"
    return f"{round(size / 1024**3, 1)} GiB"


def simulated_dom0(work: Path, carrier_config: Path) -> SimulatedQubes:
    """Given a work directory (traversable by every account) and the carrier
    VM's config file, return a SimulatedQubes whose profiles, restored VMs and
    carrier home live under WORK, and whose carrier VM runs this venv's real
    qbackup-carrier with that config."""
    carrier_home = work / "carrier-home"
    carrier_home.mkdir()
    sim = SimulatedQubes(
        profile_dir=work / "profiles",
        restore_dir=work / "restored",
        dom0_home=work / "home",
        carrier_env={
            "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
            "HOME": str(carrier_home),
            "QBACKUP_CARRIER_CONFIG": str(carrier_config),
        },
    )
    sim.profile_dir.mkdir(mode=0o755)
    return sim
