"""Fixtures for the carrier's tests: a carrier config pointing at the session's
real sshd + real qbackup-shell, and helpers that run the carrier as a process
(directly or as qrexec calls its service), feed a put and look at what the
server stored."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from testbed.carrier import carrier_config
from testbed.destinations import TwoDestinations
from testbed.netproxy import NetProxy
from testbed.openssh import Endpoint
from testbed.processes import shell_pids
from testbed.server import Account, BackupServer
from testbed.waiting import wait_until

REPO = Path(__file__).resolve().parents[2]
VENV_CARRIER = str(Path(sys.prefix) / "bin" / "qbackup-carrier")
# How a Debian TemplateVM runs it: Debian's python3 with python3-asyncssh 2.10.
DEBIAN_CARRIER = ["/usr/bin/python3", "-m", "carrier_vm.cli"]
# More interpreters to run the carrier under, e.g. a Fedora-like Python 3.13 +
# asyncssh 2.17 venv: QBACKUP_CARRIER_PYTHONS="fedora41=/tmp/py313/bin/python".
EXTRA_INTERPRETERS = {
    name: [path, "-m", "carrier_vm.cli"]
    for name, _, path in (
        entry.partition("=") for entry in os.environ.get("QBACKUP_CARRIER_PYTHONS", "").split()
    )
}
INTERPRETERS = {"venv": [VENV_CARRIER], "debian": DEBIAN_CARRIER, **EXTRA_INTERPRETERS}


@dataclass
class Carrier:
    """Runs qbackup-carrier against one account with its own config file
    (server and account are None for an offline carrier)."""

    config: Path
    server: BackupServer | None
    account: Account | None
    argv0: Sequence[str] = (VENV_CARRIER,)
    nowhere: Endpoint | None = None  # where an offline carrier's config points

    def env(self, **extra: str) -> dict[str, str]:
        env = {
            "PATH": f"{Path(sys.prefix) / 'bin'}:/usr/bin:/bin",
            "HOME": str(self.config.parent),
            "QBACKUP_CARRIER_CONFIG": str(self.config),
            "PYTHONPATH": str(REPO),
        }
        env.update(extra)
        return env

    def write_config(self, **overrides: object) -> None:
        """Write the config file: the account on the test server (or, offline,
        a port nobody listens on), plus OVERRIDES (None writes null)."""
        if self.server is None or self.account is None:
            assert self.nowhere is not None
            text = carrier_config(self.nowhere, "offline", **overrides)
        else:
            text = carrier_config(self.server.endpoint, self.account.name, **overrides)
        self.config.write_text(text)

    def run(
        self, *args: str, data: bytes = b"", timeout: float = 60, **env: str
    ) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [*self.argv0, *args],
            input=data,
            capture_output=True,
            timeout=timeout,
            env=self.env(**env),
            cwd=REPO,
            check=False,
        )

    def start(self, *args: str, **env: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [*self.argv0, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=self.env(**env),
            cwd=REPO,
        )


def add_account(server: BackupServer, shell: str) -> Account:
    """Create a real account with SHELL as its login shell (a hostile shell, or
    /bin/sh for the benchmark's baseline) and the client key authorized."""
    return server.add_account(login_shell=Path(shell))


@pytest.fixture(scope="session")
def stranger_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A client key no server knows (an offline carrier's identity)."""
    key = tmp_path_factory.mktemp("stranger") / "id_ed25519"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "stranger", "-f", str(key)],
        check=True,
    )
    return key


@pytest.fixture
def carrier(request: pytest.FixtureRequest, tmp_path: Path) -> Carrier:
    """A carrier configured for a fresh account on the session's server. A test
    marked `offline` (its request must be refused before any contact) gets one
    pointed at a port nobody listens on instead: no sshd, no account, no root."""
    tmp_path.chmod(0o755)
    config = tmp_path / "carrier.yaml"
    if request.node.get_closest_marker("offline") is not None:
        # Nothing listens on port 1 and no host key is pinned: a carrier that
        # did try to log in would fail with 75 or 77, never succeed.
        known_hosts = tmp_path / "known_hosts"
        known_hosts.touch()
        nowhere = Endpoint(port=1, identity=request.getfixturevalue("stranger_key"),
                           known_hosts=known_hosts)
        result = Carrier(config=config, server=None, account=None, nowhere=nowhere)
    else:
        server = request.getfixturevalue("backup_server")
        result = Carrier(config=config, server=server, account=request.getfixturevalue("account"))
    result.write_config()
    return result


@pytest.fixture
def tripwire(carrier: Carrier) -> Iterator[socket.socket]:
    """A listening port the carrier is configured to use: any connection is a failure."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    listener.setblocking(False)
    carrier.write_config(port=listener.getsockname()[1])
    try:
        yield listener
    finally:
        listener.close()


# The shell's lock files in the storage root (every session creates them).
SHELL_LOCKS = frozenset({".qbackup-upload.lock", ".qbackup-sessions.lock"})


def stored_files(account: Account) -> list[str]:
    """Return every file in the account's storage except its .ssh directory
    and the shell's lock files."""
    found = []
    for root, dirs, files in os.walk(account.storage):
        if Path(root) == account.storage:
            dirs[:] = [d for d in dirs if d != ".ssh"]
            files = [f for f in files if f not in SHELL_LOCKS]
        found += [str(Path(root, name).relative_to(account.storage)) for name in files]
    return sorted(found)


def receipt_of(stdout: bytes) -> dict[str, object]:
    """Given the stdout of a put or commit to the one destination `default`,
    return the receipt its outcome line carries (asserting it is that line)."""
    value = json.loads(stdout)
    assert set(value) == {"destination", "receipt"}, value
    assert value["destination"] == "default" and stdout.count(b"\n") == 1, stdout
    return dict(value["receipt"])


def failed_exit(stdout: bytes) -> int:
    """Given the stdout of a put or commit to the one destination `default`
    that failed, return the exit status its outcome line names (asserting
    it is that one failed line, with no receipt)."""
    value = json.loads(stdout)
    assert set(value) == {"destination", "failed"}, value
    assert value["destination"] == "default" and stdout.count(b"\n") == 1, stdout
    return int(value["failed"]["exit"])


def assert_no_result(verb: str, result: subprocess.CompletedProcess[bytes]) -> None:
    """Given a verb and its failed run, assert it printed no result: for put
    and commit only the failed outcome line, for the others nothing."""
    if verb in ("put", "commit"):
        assert failed_exit(result.stdout) == result.returncode
    else:
        assert result.stdout == b""


def assert_one_safe_line(stderr: bytes) -> None:
    """Assert STDERR is one line of printable ASCII (nothing a terminal would obey)."""
    assert stderr.endswith(b"\n") and stderr.count(b"\n") == 1, stderr
    assert all(0x20 <= byte < 0x7F for byte in stderr[:-1]), stderr


# Fast failure detection and frequent acknowledgements keep the drills short.
CARRIER_SETTINGS: dict[str, object] = {
    "keepalive_interval": 1,
    "keepalive_count_max": 2,
    "progress_timeout": 10,
    "resume_window": 60,
}


@pytest.fixture
def resuming(carrier: Carrier) -> Iterator[Carrier]:
    """The carrier with short timeouts, the shell acknowledging every MiB."""
    carrier.write_config(**CARRIER_SETTINGS)
    carrier.server.write_shell_config(
        f"[account {carrier.account.name}]\nsync_interval = 1M\nidle_timeout = 4\n"
    )
    try:
        yield carrier
    finally:
        carrier.server.write_shell_config("")


@pytest.fixture
def proxied(resuming: Carrier, tmp_path: Path) -> Iterator[tuple[Carrier, NetProxy]]:
    """The carrier reaching sshd through a relay the test can cut."""
    proxy = NetProxy(resuming.server.port)
    key = resuming.server.known_hosts.read_text().split(None, 1)[1]
    known_hosts = tmp_path / "proxied_known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{proxy.port} {key}")
    resuming.write_config(**CARRIER_SETTINGS, port=proxy.port, known_hosts=str(known_hosts))
    try:
        yield resuming, proxy
    finally:
        proxy.close()


def reconfigure_proxied(carrier: Carrier, proxy: NetProxy, **settings: object) -> None:
    """Given the `proxied` carrier and its relay, rewrite its config with
    SETTINGS over the usual ones, still reaching sshd through the relay."""
    carrier.write_config(
        **{**CARRIER_SETTINGS, **settings},
        port=proxy.port,
        known_hosts=str(carrier.config.parent / "proxied_known_hosts"),
    )


@pytest.fixture
def two_destinations(
    backup_server: BackupServer, account: Account, tmp_path: Path
) -> Iterator[tuple[Carrier, TwoDestinations]]:
    """A carrier whose carrier.yaml names two destinations, `home` and
    `offsite` (through a relay the test can cut), short timeouts, each
    shell acknowledging every MiB. (ACCOUNT: removes both accounts after.)"""
    tmp_path.chmod(0o755)
    config = tmp_path / "carrier.yaml"
    two = TwoDestinations.create(backup_server, config)
    two.write_config(**CARRIER_SETTINGS)
    backup_server.write_shell_config("".join(
        f"[account {user.name}]\nsync_interval = 1M\nidle_timeout = 4\n"
        for user in (two.home, two.offsite)))
    try:
        yield Carrier(config=config, server=backup_server, account=two.home), two
    finally:
        two.close()
        backup_server.write_shell_config("")


SERVICE = REPO / "carrier_vm" / "qubes-rpc" / "qubes.BackupCarrier"


def call_service(
    carrier: Carrier,
    argument: str,
    stdin: bytes = b"",
    env_argument: str | None = None,
    caller: str | None = "dom0",
    **env: str,
) -> subprocess.CompletedProcess[bytes]:
    """Run the service as qrexec-agent does: /etc/qubes-rpc/NAME ARG, called
    by CALLER (None: QREXEC_REMOTE_DOMAIN unset)."""
    environment = carrier.env(
        QREXEC_SERVICE_ARGUMENT=argument if env_argument is None else env_argument,
        **env,
    )
    if caller is not None:
        environment["QREXEC_REMOTE_DOMAIN"] = caller
    return subprocess.run(
        [str(SERVICE), argument],
        input=stdin,
        capture_output=True,
        env=environment,
        timeout=60,
        check=False,
    )


def finish_put(process: subprocess.Popen[bytes], timeout: float = 120) -> tuple[bytes, bytes]:
    """Given a started carrier PROCESS, wait for it to end; return its stdout and stderr."""
    assert process.stdout is not None and process.stderr is not None
    process.wait(timeout=timeout)
    return process.stdout.read(), process.stderr.read()


# One MiB of random data to feed a put with.
CHUNK = os.urandom(1024 * 1024)


def start_put(carrier: Carrier, name: str, mib: int = 4) -> subprocess.Popen[bytes]:
    """Start a put and feed it MIB MiB, leaving stdin open (the backup goes on)."""
    process = carrier.start("put", name)
    assert process.stdin is not None
    for _ in range(mib):
        process.stdin.write(CHUNK)
    process.stdin.flush()
    wait_until(lambda: shell_pids(carrier.account), "the shell to start")
    return process


def assert_never_stored(carrier: Carrier, name: str) -> None:
    """Assert NAME is neither stored, listed, staged nor committable."""
    # Once the account's shell is gone nothing can commit the name any more.
    wait_until(lambda: not shell_pids(carrier.account), "the shell to exit")
    listing = carrier.run("list")
    assert listing.returncode == 0, listing.stderr
    assert name.encode() not in listing.stdout
    assert name not in stored_files(carrier.account)
    # Nor staged: nothing that dom0 could commit by mistake.
    assert not [path for path in stored_files(carrier.account) if ".pending" in path]
    assert carrier.run("commit", name).returncode == 66
