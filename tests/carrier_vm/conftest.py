"""Fixtures for the carrier's tests: a carrier config pointing at the session's
real sshd + real qbackup-shell, and helpers that run the carrier as a process."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.harness.server import Account, BackupServer

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


def add_account(server: BackupServer, shell: str) -> Account:
    """Create a real account with SHELL as its login shell (a hostile shell, or
    /bin/sh for the benchmark's baseline) and the client key authorized."""
    return server.add_account(login_shell=Path(shell))


@pytest.fixture
def carrier(backup_server: BackupServer, account: Account, tmp_path: Path) -> Carrier:
    """A carrier configured for a fresh account on the session's server."""
    tmp_path.chmod(0o755)
    result = Carrier(config=tmp_path / "carrier.yaml", server=backup_server, account=account)
    result.write_config()
    return result


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


def assert_one_safe_line(stderr: bytes) -> None:
    """Assert STDERR is one line of printable ASCII (nothing a terminal would obey)."""
    assert stderr.endswith(b"\n") and stderr.count(b"\n") == 1, stderr
    assert all(0x20 <= byte < 0x7F for byte in stderr[:-1]), stderr
