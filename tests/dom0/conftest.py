"""Fixtures for dom0's tests: the Qubes simulator wired to the REAL carrier,
the real sshd and the real shell of testbed/, and a syslog socket standing
in for dom0's /dev/log (journald)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dom0.cli import main
from testbed.carrier import write_carrier_config
from testbed.qubes_sim import SimulatedQubes, simulated_dom0
from testbed.server import Account, BackupServer, SyslogSink

CARRIER = "sys-backup"
PASSPHRASE = "correct horse battery staple"
MIB = 1024 * 1024


@dataclass
class Dom0:
    """One simulated dom0 user: Qubes, the journal, and qbackup's state paths."""

    sim: SimulatedQubes
    journal: SyslogSink
    passfile: Path
    history: Path
    lock_dir: Path
    carrier_config: Path
    account: Account
    server: BackupServer

    def run(self, *argv: str) -> int:
        """Run `qbackup ARGV` against the simulator, as a new process (its
        qubesadmin caches start empty); return its exit code."""
        self.sim.new_process()
        return main(list(argv), app=self.sim)

    def lines(self) -> list[str]:
        """Return what qbackup sent to the journal so far (qbackup runs in this
        process and logs synchronously, so once `run` returned, all of it)."""
        return [line for line in self.journal.flush() if "qbackup[" in line]

    def logged(self, text: str) -> bool:
        """Return whether a journal line of qbackup's contains TEXT; no waiting,
        whether it is there or not."""
        return any(text in line for line in self.lines())

    def stored(self) -> list[str]:
        """Return the backups on the server's disk (never its own dot-files)."""
        root = self.account.storage
        return sorted(
            str(path.relative_to(root)) for path in root.rglob("*")
            if path.is_file() and not any(part.startswith(".") for part in
                                          path.relative_to(root).parts)
        )


@pytest.fixture
def dom0(backup_server: BackupServer, account: Account, tmp_path: Path,
         monkeypatch: pytest.MonkeyPatch) -> Iterator[Dom0]:
    """A simulated dom0 with VMs work (2 MiB), personal (1 MiB), a halted carrier
    and a VM outside backups, its journal socket and state in tmp_path."""
    os.chmod(tmp_path, 0o755)
    carrier_config = write_carrier_config(backup_server, account, tmp_path)
    sim = simulated_dom0(tmp_path, carrier_config)
    sim.add_vm("work", size=2 * MIB, running=True)
    sim.add_vm("personal", size=1 * MIB)
    sim.add_vm("untrusted", size=MIB // 2, include_in_backups=False)
    sim.add_vm(CARRIER, include_in_backups=False)
    sim.add_vm("vault", include_in_backups=False)
    passfile = tmp_path / "passphrase"
    passfile.write_text(PASSPHRASE + "\n")
    passfile.chmod(0o600)
    journal = SyslogSink(tmp_path / "dom0-log.sock")
    state = Dom0(sim=sim, journal=journal, passfile=passfile,
                 history=tmp_path / "history.jsonl", lock_dir=tmp_path / "locks",
                 carrier_config=carrier_config, account=account, server=backup_server)
    monkeypatch.setenv("QBACKUP_LOG_SOCKET", str(journal.path))
    monkeypatch.setenv("QBACKUP_HISTORY", str(state.history))
    monkeypatch.setenv("QBACKUP_LOCK_DIR", str(state.lock_dir))
    monkeypatch.delenv("QBKP_DEST_VM", raising=False)
    monkeypatch.delenv("QBKP_PASS_FILE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr("dom0.processes.NOTIFY_SEND", "/nonexistent/notify-send")
    yield state
    journal.close()


@pytest.fixture
def quiet_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No journal, no default config, no history of this machine's user, no
    desktop notification, no carrier or passphrase file from the environment.
    The CLI's own tests take it for every test (pytestmark)."""
    monkeypatch.setenv("QBACKUP_LOG_SOCKET", str(tmp_path / "no-syslog"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("QBACKUP_HISTORY", str(tmp_path / "history.jsonl"))
    monkeypatch.setattr("dom0.processes.NOTIFY_SEND", "/nonexistent/notify-send")
    monkeypatch.delenv("QBKP_DEST_VM", raising=False)
    monkeypatch.delenv("QBKP_PASS_FILE", raising=False)
