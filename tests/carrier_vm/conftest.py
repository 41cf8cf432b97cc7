"""Fixtures for the carrier's tests: a carrier config pointing at the session's
real sshd + real qbackup-shell, and helpers that run the carrier as a process."""

from __future__ import annotations

import os
import pwd
import secrets
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.harness.server import Account, BackupServer, remove_account

REPO = Path(__file__).resolve().parents[2]
VENV_CARRIER = str(Path(sys.prefix) / "bin" / "qbackup-carrier")
# How a Debian TemplateVM runs it: Debian's python3 with python3-asyncssh 2.10.
DEBIAN_CARRIER = ["/usr/bin/python3", "-m", "carrier_vm.cli"]
INTERPRETERS = {"venv": [VENV_CARRIER], "debian": DEBIAN_CARRIER}


@dataclass
class Carrier:
    """Runs qbackup-carrier against one account with its own config file."""

    config: Path
    server: BackupServer
    account: Account
    argv0: Sequence[str] = (VENV_CARRIER,)

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
        """Write the config file: the account on the test server, plus OVERRIDES."""
        values: dict[str, object] = {
            "host": "127.0.0.1",
            "port": self.server.port,
            "user": self.account.name,
            "identity_file": str(self.server.client_key),
            "known_hosts": str(self.server.known_hosts),
            "connect_timeout": 5,
            "ssh_config": None,
        }
        values.update(overrides)
        lines = [f"{key}: {'null' if value is None else value}" for key, value in values.items()]
        self.config.write_text("\n".join(lines) + "\n")

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


# Other parts' test sessions run concurrently on this machine and start by
# deleting every stale "qbt-" account (tests.harness.server.remove_stale_accounts),
# which would delete ours mid-test - and our session would delete theirs. So the
# carrier's tests use their own server without that sweep and their own prefix.
CARRIER_ACCOUNT_PREFIX = "qbc"


@pytest.fixture(scope="session")
def backup_server() -> Iterator[BackupServer]:
    """One running sshd + installed shell for the carrier's tests."""
    if os.geteuid() != 0:
        pytest.fail("the tests create real accounts and run sshd: run them as root")
    remove_orphaned_accounts()
    with BackupServer.create() as server:
        server.start()
        yield server


def remove_orphaned_accounts() -> None:
    """Delete our accounts left by killed runs: those whose server's sshd is
    not running (a running session's sshd is, so concurrent runs are safe)."""
    for entry in pwd.getpwall():
        if entry.pw_name.startswith(CARRIER_ACCOUNT_PREFIX + "-") and not sshd_alive(
            Path(entry.pw_dir).parent.parent
        ):
            remove_account(entry.pw_name)


def sshd_alive(base: Path) -> bool:
    """Given a server's base directory, return whether its sshd still runs."""
    try:
        pid = int((base / "sshd.pid").read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return False
    return True


@pytest.fixture
def account(backup_server: BackupServer) -> Account:
    """A fresh account (empty storage, login shell = the installed qbackup-shell)."""
    return add_account(backup_server, str(backup_server.shell_path))


def add_account(server: BackupServer, shell: str) -> Account:
    """Create a real account with SHELL as login shell and the client key
    authorized (what BackupServer.add_account does, with our own prefix)."""
    name = f"{CARRIER_ACCOUNT_PREFIX}-{secrets.token_hex(4)}"
    home = server.base / "home" / name
    home.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    subprocess.run(
        [
            "useradd",
            "--no-create-home",
            "--home-dir",
            str(home),
            "--shell",
            shell,
            "--user-group",
            name,
        ],
        check=True,
    )
    subprocess.run(["usermod", "-p", "*", name], check=True)
    entry = pwd.getpwnam(name)
    ssh_dir = home / ".ssh"
    ssh_dir.mkdir(mode=0o700, parents=True)
    home.chmod(0o700)
    authorized = ssh_dir / "authorized_keys"
    public = server.client_key.with_suffix(".pub").read_text().strip()
    authorized.write_text(f"restrict {public}\n")
    authorized.chmod(0o600)
    for path in (home, ssh_dir, authorized):
        os.chown(path, entry.pw_uid, entry.pw_gid)
    account = Account(name=name, home=home, uid=entry.pw_uid, gid=entry.pw_gid)
    server.accounts.append(account)  # removed by server.close()
    return account


@pytest.fixture
def carrier(backup_server: BackupServer, account: Account, tmp_path: Path) -> Carrier:
    """A carrier configured for a fresh account on the session's server."""
    tmp_path.chmod(0o755)
    result = Carrier(config=tmp_path / "carrier.yaml", server=backup_server, account=account)
    result.write_config()
    return result


def stored_files(account: Account) -> list[str]:
    """Return every file in the account's storage except its .ssh directory."""
    found = []
    for root, dirs, files in os.walk(account.storage):
        if Path(root) == account.storage:
            dirs[:] = [d for d in dirs if d != ".ssh"]
        found += [str(Path(root, name).relative_to(account.storage)) for name in files]
    return sorted(found)


def assert_one_safe_line(stderr: bytes) -> None:
    """Assert STDERR is one line of printable ASCII (nothing a terminal would obey)."""
    assert stderr.endswith(b"\n") and stderr.count(b"\n") == 1, stderr
    assert all(0x20 <= byte < 0x7F for byte in stderr[:-1]), stderr
