"""SimulatedQubes: the Qubes adapter as QUBES-INTERFACES.md describes it, no kinder.

Only Qubes is simulated. The carrier side is real: the backup stream goes into
`qbackup-carrier put NAME` run by a shell that behaves like the carrier VM's
qubes.Backup service (read ONE line, `command -v`, `eval "set -- $line"`), in
an environment the test chooses (PATH with the real qbackup-carrier,
QBACKUP_CARRIER_CONFIG pointing at the real sshd). qubes.BackupCarrier calls
run the real service script; qvm-backup-restore runs the location command
like qubes.Restore, twice.

Strictness: anything dom0 asks that real Qubes would refuse raises, and
anything the simulator does not model raises SimulationError (a test bug).
"""

from __future__ import annotations

import contextlib
import fcntl
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

import yaml

from dom0.errors import BackupEngineError, QubesError, ReplyTooLarge, VMNotFound
from tests.qubes_sim import restore, stream
from tests.qubes_sim.errors import SimulationError

REPO = Path(__file__).resolve().parents[2]
CARRIER_SERVICE_SCRIPT = REPO / "carrier_vm" / "qubes-rpc" / "qubes.BackupCarrier"
PROFILE_KEYS = frozenset({"include", "exclude", "compression", "destination_vm",
                          "destination_path", "passphrase_text", "passphrase_vm"})
WRITE_CHUNK = 1024 * 1024
F_SETPIPE_SZ = 1031  # fcntl.F_SETPIPE_SZ (Linux)

# What the carrier VM's qubes.Backup does with the line dom0's engine sends.
QUBES_BACKUP_SH = r"""
read -r line || exit 1
if [ -d "$line" ]; then
    cat > "$line/qubes-backup-$(date +%Y-%m-%dT%H%M%S)"
    exit $?
fi
first=${line%% *}
if command -v "$first" >/dev/null 2>&1; then
    eval "set -- $line"
    "$@"
    status=$?
    sync
    exit $status
fi
echo "Invalid command $first" >&2
exit 2
"""


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
class Hooks:
    """Ways a test makes Qubes misbehave or reacts to progress."""

    cancel_at: float | None = None  # Qubes cancels at this fraction of the stream
    kill_carrier_at: float | None = None  # the carrier process dies at this fraction
    on_progress: Callable[[float], None] | None = None
    corrupt_stream_byte: int | None = None  # flip this byte of the stream in transit


@dataclass
class SimulatedQubes:
    """A fake dom0 whose VMs are data and whose carrier VM is a local process env."""

    profile_dir: Path
    restore_dir: Path
    carrier_env: dict[str, str]
    carrier_script: Path = CARRIER_SERVICE_SCRIPT
    vms: dict[str, SimVM] = field(default_factory=dict)
    passphrase_vms: dict[str, str] = field(default_factory=dict)
    hooks: Hooks = field(default_factory=Hooks)
    calls: list[tuple[str, ...]] = field(default_factory=list)
    carrier_stderr: list[bytes] = field(default_factory=list)
    restore_runs: int = 0
    _running: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _cancelled: set[str] = field(default_factory=set)

    # -- VMs -------------------------------------------------------------
    def add_vm(self, name: str, size: int = 0, running: bool = False,
               include_in_backups: bool = True) -> SimVM:
        vm = SimVM(name=name, running=running, include_in_backups=include_in_backups, size=size)
        self.vms[name] = vm
        return vm

    def remove_vm(self, name: str) -> None:
        """Hook: make a VM unknown from now on."""
        del self.vms[name]

    def _vm(self, name: str) -> SimVM:
        try:
            return self.vms[name]
        except KeyError:
            raise VMNotFound(f"no VM named {name}") from None

    def vm_exists(self, name: str) -> bool:
        self.calls.append(("vm_exists", name))
        return name in self.vms

    def is_running(self, name: str) -> bool:
        self.calls.append(("is_running", name))
        return self._vm(name).running

    def start(self, name: str) -> None:
        self.calls.append(("start", name))
        vm = self._vm(name)
        if vm.running:
            raise QubesError(f"VM {name} is already running")  # qubesd refuses too
        vm.running = True

    def shutdown(self, name: str, wait: bool = True) -> None:
        self.calls.append(("shutdown", name, str(wait)))
        vm = self._vm(name)
        if not vm.running:
            raise QubesError(f"VM {name} is not running")
        vm.running = False

    def vms_in_backups(self) -> list[str]:
        self.calls.append(("vms_in_backups",))
        return sorted(vm.name for vm in self.vms.values() if vm.include_in_backups)

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
        process = subprocess.Popen(  # noqa: S603
            [str(self.carrier_script), argument], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
            env=self._carrier_env({"QREXEC_SERVICE_ARGUMENT": argument,
                                   "QREXEC_REMOTE_DOMAIN": "dom0"}))
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
        returncode = process.wait()
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
        path = self.profile_dir / f"{profile}.conf"
        try:
            info = path.lstat()
        except FileNotFoundError:
            raise QubesError(f"backup profile {profile} does not exist") from None
        if not stat.S_ISREG(info.st_mode):
            raise QubesError(f"backup profile {profile} is not a regular file")
        data = yaml.safe_load(path.read_text())
        if not isinstance(data, dict):
            raise QubesError("backup profile is not a YAML mapping")
        if "passphrase_text" in data and stat.S_IMODE(info.st_mode) != 0o600:
            raise SimulationError(f"profile holding passphrase_text has mode "
                                  f"{stat.S_IMODE(info.st_mode):o}, not 600")
        unknown = set(data) - PROFILE_KEYS
        if unknown:
            raise QubesError(f"backup profile has unknown keys {sorted(unknown)}")
        for key in ("include", "destination_vm", "destination_path"):
            if key not in data:
                raise QubesError(f"backup profile lacks required key {key}")
        if ("passphrase_text" in data) == ("passphrase_vm" in data):
            raise QubesError("backup profile needs exactly one passphrase source")
        return data

    def _selected_vms(self, data: dict[str, object]) -> list[SimVM]:
        include = data["include"]
        exclude = data.get("exclude") or []
        if include is None:
            names = [vm.name for vm in self.vms.values() if vm.include_in_backups]
        elif isinstance(include, list):
            names = [str(name) for name in include]
        else:
            raise QubesError("include must be a list or null")
        if not isinstance(exclude, list):
            raise QubesError("exclude must be a list")
        return [self._vm(name) for name in names if name not in exclude]

    def backup_info(self, profile: str) -> bytes:
        self.calls.append(("admin.backup.Info", profile))
        data = self._load_profile(profile)
        vms = self._selected_vms(data)
        rows = "".join(f"{vm.name:>20} |   VM | {human(vm.size):>12} |\n" for vm in vms)
        total = sum(vm.size for vm in vms)
        return (f"{'VM':>20} | type | {'size':>12} |\n{rows}"
                f"{'Total size:':>27} | {human(total):>12}\n").encode()

    def _passphrase(self, profile: str, data: dict[str, object]) -> str:
        if "passphrase_text" in data:
            return str(data["passphrase_text"])
        vm = str(data["passphrase_vm"])
        self._vm(vm)
        if vm not in self.passphrase_vms:
            raise QubesError(f"qubes.BackupPassphrase+{profile} in {vm} failed")
        # Assumed: qubesd takes the answer's first line without its line end.
        return self.passphrase_vms[vm].split("\n", 1)[0].rstrip()

    def backup_execute(self, profile: str, on_progress: Callable[[float], None]) -> None:
        """Like qubesd: read the profile, start qubes.Backup in the destination
        VM, send ONE line then the stream; fail if the command fails."""
        self.calls.append(("admin.backup.Execute", profile))
        data = self._load_profile(profile)
        vms = self._selected_vms(data)
        destination = str(data["destination_vm"])
        self._require_running(destination)
        passphrase = self._passphrase(profile, data)
        line = str(data["destination_path"]).replace("\r", "").replace("\n", "")
        salt = stream.derive_key(line, b"salt")[:16]
        chunks = stream.build_stream([(vm.name, vm.size) for vm in vms], passphrase, salt,
                                     data.get("compression"))
        total = len(stream.MAGIC) + sum(vm.size for vm in vms) + 400
        process = subprocess.Popen(  # noqa: S603
            ["/bin/sh", "-c", QUBES_BACKUP_SH], stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
            env=self._carrier_env())
        self._running[profile] = process
        stderr_box: list[bytes] = []
        drainer = threading.Thread(target=lambda: stderr_box.append(process.stderr.read()))  # type: ignore[union-attr]
        drainer.start()
        try:
            delivered = self._deliver(profile, process, line, self._pieces(chunks), total,
                                      on_progress)
        finally:
            returncode = process.wait()
            drainer.join()
            self.carrier_stderr.append(stderr_box[0] if stderr_box else b"")
            del self._running[profile]
            cancelled = profile in self._cancelled
            self._cancelled.discard(profile)
        if cancelled:
            raise BackupEngineError("Backup cancelled")
        if not delivered or returncode != 0:
            raise BackupEngineError(f"Writing backup to VM {destination} failed")
        for vm in vms:
            vm.backup_timestamp = int(time.time())

    def _pieces(self, chunks: Iterator[bytes]) -> Iterator[bytes]:
        """Given the stream's chunks, yield WRITE_CHUNK pieces, flipping the
        byte hooks.corrupt_stream_byte names (corruption in transit)."""
        sent = 0
        for chunk in chunks:
            for offset in range(0, len(chunk), WRITE_CHUNK):
                piece = chunk[offset : offset + WRITE_CHUNK]
                target = self.hooks.corrupt_stream_byte
                if target is not None and sent <= target < sent + len(piece):
                    index = target - sent
                    piece = piece[:index] + bytes([piece[index] ^ 0xFF]) + piece[index + 1 :]
                sent += len(piece)
                yield piece

    def _misbehave(self, profile: str, process: subprocess.Popen[bytes], fraction: float) -> None:
        """Given how far the stream got, fire the kill/cancel hooks once."""
        kill_at = self.hooks.kill_carrier_at
        if kill_at is not None and fraction >= kill_at:
            self.hooks.kill_carrier_at = None
            os.killpg(process.pid, signal.SIGKILL)
            time.sleep(0.1)
        if self.hooks.cancel_at is not None and fraction >= self.hooks.cancel_at:
            self.hooks.cancel_at = None
            self._cancel_process(profile)

    def _deliver(self, profile: str, process: subprocess.Popen[bytes], line: str,
                 pieces: Iterator[bytes], total: int,
                 on_progress: Callable[[float], None]) -> bool:
        """Write the line and the stream to qubes.Backup's stdin, reporting
        progress; return False if the VM side closed it (or a cancel stopped it)."""
        stdin = process.stdin
        assert stdin is not None
        with contextlib.suppress(OSError):  # like qrexec's big buffers; see PERFORMANCE.md
            fcntl.fcntl(stdin.fileno(), F_SETPIPE_SZ, WRITE_CHUNK)
        sent = 0
        try:
            stdin.write(line.encode() + b"\n")
            for piece in pieces:
                self._misbehave(profile, process, (sent + len(piece)) / total)
                if profile in self._cancelled:
                    return False
                stdin.write(piece)
                sent += len(piece)
                percent = min(100.0, 100.0 * sent / total)
                on_progress(percent)
                if self.hooks.on_progress is not None:
                    self.hooks.on_progress(percent)
            stdin.close()
        except BrokenPipeError:
            return False
        finally:
            with contextlib.suppress(BrokenPipeError):
                stdin.close()
        return profile not in self._cancelled

    def _cancel_process(self, profile: str) -> None:
        """Cancel as qubesd does: it terminates its end of the qrexec
        connection, so the VM side sees a clean END of its stdin, NOT a
        killed command (the carrier may well take it for a complete stream).
        _deliver stops writing and closes stdin at its next piece."""
        if profile not in self._running:
            raise QubesError(f"no backup running for profile {profile}")
        self._cancelled.add(profile)

    def backup_cancel(self, profile: str) -> None:
        self.calls.append(("admin.backup.Cancel", profile))
        self._cancel_process(profile)

    # -- qvm-backup-restore ----------------------------------------------
    def _run_location(self, location: str, header_only: bool) -> tuple[bytes, int]:
        """Run the location command like qubes.Restore; return (stdout, status)."""
        self.restore_runs += 1
        data, status, stderr = restore.run_location(self._carrier_env(), location, header_only)
        self.carrier_stderr.append(stderr)
        return data, status

    def backup_restore(self, args: Sequence[str], capture: bool,
                       input_data: bytes | None = None) -> tuple[int, bytes]:
        self.calls.append(("qvm-backup-restore", *args))
        options, location, wanted = restore.parse_restore_args(list(args))
        vm = self._autostart(options["dest_vm"])
        passphrase = restore.read_passphrase(options["passphrase_file"], input_data)
        header_bytes, _ = self._run_location(location, header_only=True)
        try:
            header = stream.parse_header(header_bytes, passphrase)
        except stream.StreamError as error:
            return 1, f"ERROR: {error}\n".encode()
        body, status = self._run_location(location, header_only=False)
        if status != 0:
            return 1, f"ERROR: reading the backup from {vm.name} failed ({status})\n".encode()
        try:
            volumes = stream.check_stream(body, passphrase)
        except stream.StreamError as error:
            return 1, f"ERROR: {error}\n".encode()
        names = [name for name, _ in header.vms
                 if (not wanted or name in wanted) and name not in options["exclude"]]
        if options["verify_only"]:
            return 0, b"".join(f"-> Verified {name}\n".encode() for name in names) + b"-> Done.\n"
        try:
            targets = restore.plan_targets(names, set(self.vms), options)
        except restore.Conflict as error:
            return 1, f"ERROR: {error}\n".encode()
        self.restore_dir.mkdir(parents=True, exist_ok=True)
        for name, target in targets.items():
            (self.restore_dir / f"{target}.img").write_bytes(volumes[name])
            self.add_vm(target, size=len(volumes[name]), include_in_backups=False)
        return 0, b"".join(f"-> Restored {n} as {t}\n".encode() for n, t in targets.items())


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
        carrier_env={
            "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
            "HOME": str(carrier_home),
            "QBACKUP_CARRIER_CONFIG": str(carrier_config),
        },
    )
    sim.profile_dir.mkdir(mode=0o755)
    return sim
