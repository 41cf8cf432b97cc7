"""Usage mistakes a new user makes get an answer that helps: a job name that
does not exist lists the jobs that do, and a mistyped command is named as
one (never read as a VM of the original `qbackup [VM ...]` form). No server
needed."""

from __future__ import annotations

from pathlib import Path

import pytest

from dom0.cli import main
from dom0.errors import QbackupExit

JOB = "    carrier: sys-backup\n    prefix: laptop\n    passphrase_vm: vault\n"


@pytest.fixture(autouse=True)
def quiet_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No journal, no default config, no history of this machine's user."""
    monkeypatch.setenv("QBACKUP_LOG_SOCKET", str(tmp_path / "no-syslog"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("QBACKUP_HISTORY", str(tmp_path / "history.jsonl"))
    monkeypatch.setattr("dom0.processes.NOTIFY_SEND", "/nonexistent/notify-send")
    monkeypatch.delenv("QBKP_DEST_VM", raising=False)
    monkeypatch.delenv("QBKP_PASS_FILE", raising=False)


def test_config_check_of_an_unknown_job_lists_the_jobs_that_exist(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "qbackup.yaml"
    path.write_text("jobs:\n  daily:\n" + JOB + "  weekly:\n" + JOB)
    assert main(["-o", "config", "check", "--config", str(path), "--job", "nightly"]) \
        == QbackupExit.USAGE
    assert f"{path}: no job named 'nightly' (jobs: daily, weekly)" in capsys.readouterr().err
