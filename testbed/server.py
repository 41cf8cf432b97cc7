"""A real backup server on this machine, for the tests, the demo and the benchmarks.

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

Several test sessions may run at once (pytest-xdist workers, other checkouts):
each BackupServer has its own directory, sshd, port and accounts, and account
names carry the creating process's id, so no two live processes ever pick the
same name and no session removes another's accounts.

Nothing here is Qubes: the only simulated boundary lives in testbed/qubes_sim.
"""

from __future__ import annotations

import contextlib
import fcntl
import grp
import itertools
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from testbed import openssh

REPO = Path(__file__).resolve().parents[1]
SSHD = "/usr/sbin/sshd"
ACCOUNT_PREFIX = "qbt"
OWNER_TAG = "qbackup-test pid="  # the comment field names the process that made the account
SYNC_MARKER = "qbackup-testbed-sync "  # what SyslogSink.flush sends itself (never logged)
# Taken shared while accounts are added or removed, exclusive by a test that
# compares /etc/passwd or /etc/shells before and after (tests/conftest.py).
ACCOUNTS_LOCK = Path("/tmp/qbackup-testbed-accounts.lock")
_account_numbers = itertools.count(1)
_exclusive_holder: list[bool] = []  # non-empty while this process holds it exclusively


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class SyslogSink:
    """A Unix datagram socket that receives what a SysLogHandler sends.

    A thread reads the socket (a sender blocks once the socket's queue is full,
    so nobody may wait for the test to read). Datagrams on one socket arrive in
    the order they were sent, whoever sent them: `flush` relies on that."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.socket.bind(str(path))
        os.chmod(path, 0o666)  # the shell runs as the test accounts
        self._messages: list[str] = []
        self._synced: set[str] = set()
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._collect, daemon=True)
        self._thread.start()

    def _collect(self) -> None:
        while True:
            try:
                data = self.socket.recv(65536)
            except OSError:
                return
            if self._stop.is_set():
                return
            text = data.decode("utf-8", "replace")
            with self._changed:
                if text.startswith(SYNC_MARKER):
                    self._synced.add(text)
                else:
                    self._messages.append(text)
                self._changed.notify_all()

    def messages(self) -> list[str]:
        with self._changed:
            return list(self._messages)

    def flush(self, timeout: float = 10.0) -> list[str]:
        """Return every message sent to the socket before this call.

        Sends a marker datagram through the socket and waits until the reader
        has reached it: a lookup after a flush is exact at once, so a test
        asserting that something was NOT logged waits for nothing. Raise
        TimeoutError if the reader is stuck."""
        marker = f"{SYNC_MARKER}{secrets.token_hex(8)}"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
            sender.sendto(marker.encode(), str(self.path))
        with self._changed:
            if not self._changed.wait_for(lambda: marker in self._synced, timeout):
                raise TimeoutError(f"the syslog sink {self.path} did not read its marker")
            self._synced.discard(marker)
            return list(self._messages)

    def wait_for(self, text: str, timeout: float = 10.0) -> list[str]:
        """Return the messages containing TEXT, waiting up to TIMEOUT for one
        (for a line a process that outlives the request sends; a line sent
        before now is found at once with `flush`)."""

        def found() -> list[str]:
            return [m for m in self._messages if text in m]

        with self._changed:
            self._changed.wait_for(found, timeout)
            return found()

    def clear(self) -> None:
        """Forget every message sent before now (even one not read yet)."""
        self.flush()
        with self._changed:
            self._messages.clear()

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError), socket.socket(
            socket.AF_UNIX, socket.SOCK_DGRAM
        ) as waker:
            waker.sendto(b"", str(self.path))  # wakes the reader, which sees _stop
        self._thread.join(timeout=5)
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
    # A real server has an sftp subsystem; sshd runs it through the login
    # shell, which must refuse it. Tests may choose `internal-sftp` instead.
    sftp_subsystem: str = "/usr/lib/openssh/sftp-server"
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
                f"MANDIR={root}/usr/share/man",
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
        with accounts_lock(exclusive=False):
            name = new_account_name()
            if home is None:
                home = self.base / "home" / name
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
        home.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
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
        """Start sshd on 127.0.0.1 and pin its host key in known_hosts.

        The port is one that was free a moment ago; if another process took it
        in between, sshd exits at once and we try the next free port."""
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation dir
        for _attempt in range(5):
            if self._start_sshd(free_port()):
                break
        else:
            raise RuntimeError(f"sshd did not start: {(self.base / 'sshd.log').read_text()}")
        public = self.host_key.with_suffix(".pub").read_text().split()
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {public[0]} {public[1]}\n")

    def _start_sshd(self, port: int) -> bool:
        """Start sshd on PORT; return whether it listens there (False: it exited)."""
        self.port = port
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
                    f"Subsystem sftp {self.sftp_subsystem}",
                    "LogLevel VERBOSE",
                    "",
                ]
            )
        )
        self._sshd_log = open(self.base / "sshd.log", "ab")  # noqa: SIM115
        sshd = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(config)],
            stdout=self._sshd_log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    self._sshd = sshd
                    return True
            except OSError:
                if sshd.poll() is not None:
                    self._sshd_log.close()
                    return False
                if time.monotonic() > deadline:
                    sshd.kill()
                    sshd.wait()
                    self._sshd_log.close()
                    return False
                time.sleep(0.02)

    @property
    def endpoint(self) -> openssh.Endpoint:
        """Where and how a client logs in: port, client key, pinned host key."""
        return openssh.Endpoint(
            port=self.port, identity=self.client_key, known_hosts=self.known_hosts
        )

    def ssh_command(self, account: Account, *extra: str) -> list[str]:
        """Return an OpenSSH client argv that logs in as ACCOUNT (no command yet)."""
        return openssh.ssh_argv(self.endpoint, account.name, *extra)

    def scp_command(self, account: Account, source: Path, target: str, *extra: str) -> list[str]:
        """Return an scp argv copying SOURCE to TARGET in ACCOUNT's home."""
        return openssh.scp_argv(self.endpoint, account.name, source, target, *extra)

    def sftp_command(self, account: Account, *extra: str) -> list[str]:
        """Return an sftp argv that logs in as ACCOUNT."""
        return openssh.sftp_argv(self.endpoint, account.name, *extra)

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

    def remove_accounts(self, keep: int = 0) -> None:
        """Delete every account but the first KEEP made here (their processes
        too), and their homes in this server's tree: a test's backups (the
        drills write GiBs) must not stay on disk for the rest of the session,
        nor show up in a later test's view of the tree."""
        while len(self.accounts) > keep:
            name = self.accounts.pop().name
            remove_account(name)
            shutil.rmtree(self.base / "home" / name, ignore_errors=True)

    def close(self) -> None:
        """Stop sshd, delete the accounts and the whole temporary tree."""
        self.stop()
        self.remove_accounts()
        self.syslog.close()
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> BackupServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def accounts_lock(exclusive: bool) -> Iterator[None]:
    """Hold the test bed's accounts lock (shared: this process changes
    accounts; exclusive: nobody else may) until the block ends. Inside an
    exclusive hold this process may still change accounts itself."""
    if _exclusive_holder:
        yield
        return
    with open(ACCOUNTS_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        if not exclusive:
            yield
            return
        _exclusive_holder.append(True)
        try:
            yield
        finally:
            _exclusive_holder.clear()


def new_account_name() -> str:
    """Return a test account name no live process uses: it carries this
    process's id and a number this process never hands out twice. An account
    of that name left by a dead process that had the same id is removed."""
    name = f"{ACCOUNT_PREFIX}-{os.getpid()}-{next(_account_numbers)}"
    try:
        pwd.getpwnam(name)
    except KeyError:
        return name
    remove_account(name)  # stale: this process never made it, its pid's last owner did
    return name


USERDEL_DONE = (0, 6)  # userdel(8): deleted, or no such user


def remove_account(name: str) -> None:
    """Delete account NAME (and its group), killing its processes first.

    userdel fails for a moment while a killed process has not exited yet
    (SIGKILL is asynchronous: exit 8) or while another test process's
    useradd holds /etc/passwd's lock (exit 1 or 10): try again, bounded, and
    say so if the account could still not be deleted."""
    deadline = time.monotonic() + 10
    while True:
        subprocess.run(["pkill", "-KILL", "-u", name], check=False, capture_output=True)
        with accounts_lock(exclusive=False):
            result = subprocess.run(["userdel", name], check=False, capture_output=True)
        if result.returncode in USERDEL_DONE:
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"userdel {name} kept failing for 10 s: {result.stderr!r}")
        time.sleep(0.02)
    with accounts_lock(exclusive=False):
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
