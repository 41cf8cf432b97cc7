"""A real backup server on this machine, for tests, the demo and the benchmark.

What it builds, all under one temporary directory that every account can
traverse (never under /root, which other accounts cannot enter):

* the shell installed by the project's own `make server-files` into
  ``<base>/usr/lib/qbackup`` + ``<base>/usr/sbin/qbackup-shell``, world-readable,
  run by Debian's /usr/bin/python3 (what a real server runs);
* real accounts made with ``useradd`` whose LOGIN SHELL is that installed shell,
  with an ``authorized_keys`` for a client key;
* a real OpenSSH ``sshd`` on 127.0.0.1 and a free port, its host key pinned in
  a known_hosts file the client side uses;
* a Unix datagram socket standing in for /dev/log, so tests can read what the
  shell sent to syslog.

Nothing here is Qubes: the only simulated boundary lives in tests/qubes_sim.
"""

from __future__ import annotations

import grp
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SSHD = "/usr/sbin/sshd"
ACCOUNT_PREFIX = "qbt"
OWNER_TAG = "qbackup-test pid="  # the comment field names the process that made the account


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class SyslogSink:
    """A Unix datagram socket that receives what a SysLogHandler sends."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind(str(path))
        os.chmod(path, 0o666)  # the shell runs as the test accounts
        self.socket.settimeout(0.2)
        self._messages: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._collect, daemon=True)
        self._thread.start()

    def _collect(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.socket.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self._messages.append(data.decode("utf-8", "replace"))

    def messages(self) -> list[str]:
        with self._lock:
            return list(self._messages)

    def wait_for(self, text: str, timeout: float = 5.0) -> list[str]:
        """Return the messages containing TEXT, waiting up to TIMEOUT for one."""
        deadline = time.monotonic() + timeout
        while True:
            found = [m for m in self.messages() if text in m]
            if found or time.monotonic() > deadline:
                return found
            time.sleep(0.05)

    def clear(self) -> None:
        with self._lock:
            self._messages.clear()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.socket.close()


@dataclass
class Account:
    """A real account on this machine whose login shell is qbackup-shell."""

    name: str
    home: Path
    uid: int
    gid: int

    @property
    def storage(self) -> Path:
        return self.home


@dataclass
class BackupServer:
    """sshd + installed shell + accounts, under ``base``. Use as a context manager."""

    base: Path
    port: int = 0
    accounts: list[Account] = field(default_factory=list)
    shell_path: Path = field(init=False)
    config_path: Path = field(init=False)
    client_key: Path = field(init=False)
    known_hosts: Path = field(init=False)
    host_key: Path = field(init=False)
    syslog: SyslogSink = field(init=False)
    _sshd: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @classmethod
    def create(cls, base: Path | None = None, shell_config: str = "") -> BackupServer:
        """Build a server under BASE (a fresh directory in /tmp by default)."""
        if base is None:
            base = Path(tempfile.mkdtemp(prefix="qbackup-server-", dir="/tmp"))
        os.chmod(base, 0o755)
        server = cls(base=base)
        server._install_shell(shell_config)
        server._make_keys()
        return server

    # -- installation ----------------------------------------------------
    def _install_shell(self, shell_config: str) -> None:
        root = self.base / "root"
        subprocess.run(
            [
                "make",
                "-s",
                "-C",
                str(REPO),
                "server-files",
                "DESTDIR=",
                f"LIBDIR={root}/usr/lib/qbackup",
                f"SBINDIR={root}/usr/sbin",
                f"CONFDIR={root}/etc/qbackup",
            ],
            check=True,
            env={**os.environ, "DESTDIR": ""},
        )
        # No DESTDIR: the "installed" tree is the temporary one, and the
        # launcher embeds its paths.
        self.shell_path = root / "usr/sbin/qbackup-shell"
        self.config_path = root / "etc/qbackup/qbackup-shell.conf"
        self.syslog = SyslogSink(self.base / "log.sock")
        self.write_shell_config(shell_config)

    def write_shell_config(self, text: str) -> None:
        """Replace the shell's config file with TEXT plus the test syslog socket."""
        body = f"[logging]\nsocket = {self.syslog.path}\n\n" + text
        self.config_path.write_text(body)
        os.chmod(self.config_path, 0o644)

    def _make_keys(self) -> None:
        keys = self.base / "keys"
        keys.mkdir(mode=0o700)
        self.host_key = keys / "ssh_host_ed25519_key"
        self.client_key = keys / "client_ed25519"
        for path in (self.host_key, self.client_key):
            subprocess.run(
                [
                    "ssh-keygen",
                    "-q",
                    "-t",
                    "ed25519",
                    "-N",
                    "",
                    "-C",
                    "qbackup-test",
                    "-f",
                    str(path),
                ],
                check=True,
            )
        self.known_hosts = keys / "known_hosts"

    # -- accounts --------------------------------------------------------
    def add_account(
        self,
        home: Path | None = None,
        authorized_options: str = "restrict",
        login_shell: Path | None = None,
    ) -> Account:
        """Create a real account whose login shell is the installed qbackup-shell
        (or LOGIN_SHELL: the benchmark's plain-OpenSSH baseline uses /bin/sh)."""
        name = f"{ACCOUNT_PREFIX}-{secrets.token_hex(4)}"
        if home is None:
            home = self.base / "home" / name
        home.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        subprocess.run(
            [
                "useradd",
                "--no-create-home",
                "--home-dir",
                str(home),
                "--shell",
                str(login_shell or self.shell_path),
                "--user-group",
                "--comment",
                f"{OWNER_TAG}{os.getpid()}",
                name,
            ],
            check=True,
        )
        # Debian's useradd locks the password with '!', which OpenSSH (without
        # PAM) treats as a locked account even for keys; '*' means "no password".
        subprocess.run(["usermod", "-p", "*", name], check=True)
        entry = pwd.getpwnam(name)
        home.mkdir(mode=0o700, exist_ok=True)
        os.chown(home, entry.pw_uid, entry.pw_gid)
        os.chmod(home, 0o700)
        ssh_dir = home / ".ssh"
        ssh_dir.mkdir(mode=0o700, exist_ok=True)
        public = (self.client_key.with_suffix(".pub")).read_text().strip()
        authorized = ssh_dir / "authorized_keys"
        authorized.write_text(
            f"{authorized_options} {public}\n" if authorized_options else public + "\n"
        )
        for path in (ssh_dir, authorized):
            os.chown(path, entry.pw_uid, entry.pw_gid)
        os.chmod(authorized, 0o600)
        account = Account(name=name, home=home, uid=entry.pw_uid, gid=entry.pw_gid)
        self.accounts.append(account)
        return account

    # -- sshd ------------------------------------------------------------
    def start(self) -> None:
        """Start sshd on 127.0.0.1 and pin its host key in known_hosts."""
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation dir
        self.port = free_port()
        config = self.base / "sshd_config"
        config.write_text(
            "\n".join(
                [
                    f"Port {self.port}",
                    "ListenAddress 127.0.0.1",
                    f"HostKey {self.host_key}",
                    f"PidFile {self.base / 'sshd.pid'}",
                    "UsePAM no",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "PubkeyAuthentication yes",
                    "PermitRootLogin no",
                    "StrictModes yes",
                    "AllowTcpForwarding no",
                    "X11Forwarding no",
                    "PermitTunnel no",
                    "PermitUserEnvironment no",
                    "MaxStartups 100:30:200",
                    "MaxSessions 50",
                    # A real server has an sftp subsystem; sshd runs it through the
                    # login shell, which must refuse it.
                    "Subsystem sftp /usr/lib/openssh/sftp-server",
                    "LogLevel VERBOSE",
                    "",
                ]
            )
        )
        self._sshd_log = open(self.base / "sshd.log", "ab")  # noqa: SIM115
        self._sshd = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(config)],
            stdout=self._sshd_log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    break
            except OSError:
                if self._sshd.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"sshd did not start: {(self.base / 'sshd.log').read_text()}"
                    ) from None
                time.sleep(0.05)
        public = self.host_key.with_suffix(".pub").read_text().split()
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {public[0]} {public[1]}\n")

    def ssh_command(self, account: Account, *extra: str) -> list[str]:
        """Return an OpenSSH client argv that logs in as ACCOUNT (no command yet)."""
        return [
            "ssh",
            "-p",
            str(self.port),
            "-i",
            str(self.client_key),
            "-o",
            f"UserKnownHostsFile={self.known_hosts}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-F",
            "/dev/null",
            *extra,
            f"{account.name}@127.0.0.1",
        ]

    def run(
        self,
        account: Account,
        command: str | None,
        data: bytes = b"",
        timeout: float = 60,
        extra: tuple[str, ...] = (),
    ) -> subprocess.CompletedProcess[bytes]:
        """Run COMMAND over real ssh as ACCOUNT; return the completed process."""
        argv = self.ssh_command(account, *extra)
        if command is not None:
            argv.append(command)
        return subprocess.run(argv, input=data, capture_output=True, timeout=timeout, check=False)

    def stop(self) -> None:
        if self._sshd is not None:
            self._sshd.terminate()
            try:
                self._sshd.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._sshd.kill()
                self._sshd.wait()
            self._sshd = None
            self._sshd_log.close()

    def close(self) -> None:
        """Stop sshd, delete the accounts and the whole temporary tree."""
        self.stop()
        for account in self.accounts:
            remove_account(account.name)
        self.accounts.clear()
        self.syslog.close()
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> BackupServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def remove_account(name: str) -> None:
    """Delete account NAME (and its group), killing its processes first."""
    subprocess.run(["pkill", "-KILL", "-u", name], check=False, capture_output=True)
    subprocess.run(["userdel", name], check=False, capture_output=True)
    try:
        grp.getgrnam(name)
        subprocess.run(["groupdel", name], check=False, capture_output=True)
    except KeyError:
        pass


def remove_stale_accounts() -> None:
    """Delete test accounts that a killed earlier run left behind: those whose
    creating process (recorded in the account's comment field) is gone. Accounts
    of test sessions still running, here or in parallel, are left alone."""
    for entry in pwd.getpwall():
        if not entry.pw_name.startswith(ACCOUNT_PREFIX + "-"):
            continue
        owner = entry.pw_gecos.removeprefix(OWNER_TAG)
        alive = owner.isdigit() and Path(f"/proc/{owner}").exists()
        if entry.pw_gecos.startswith(OWNER_TAG) and alive:
            continue
        remove_account(entry.pw_name)
