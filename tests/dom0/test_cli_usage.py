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


pytestmark = pytest.mark.usefixtures("quiet_state")


def test_config_check_of_an_unknown_job_lists_the_jobs_that_exist(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "qbackup.yaml"
    path.write_text("jobs:\n  daily:\n" + JOB + "  weekly:\n" + JOB)
    assert main(["-o", "config", "check", "--config", str(path), "--job", "nightly"]) \
        == QbackupExit.USAGE
    assert f"{path}: no job named 'nightly' (jobs: daily, weekly)" in capsys.readouterr().err


class VMs:
    """A Qubes that knows only which VMs exist (all a command-word check asks)."""

    def __init__(self, *names: str) -> None:
        self.names = set(names)

    def vm_exists(self, name: str) -> bool:
        return name in self.names


@pytest.mark.parametrize(("argv", "word", "command"), [
    (["lst"], "lst", "list"), (["stauts", "--max-age", "36h"], "stauts", "status"),
    (["-v", "verfy", "x"], "verfy", "verify"), (["lst", "-t", "sys-backup"], "lst", "list"),
    (["cofig", "check"], "cofig", "config"),
])
def test_a_mistyped_command_is_named_with_the_command_it_looks_like(
        argv: list[str], word: str, command: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv, app=VMs("work")) == QbackupExit.USAGE  # type: ignore[arg-type]
    assert f"qbackup: error: unknown command '{word}' (did you mean {command}?)" \
        in capsys.readouterr().err


def test_outside_dom0_a_mistyped_command_is_named_too(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lst"]) == QbackupExit.USAGE  # no Qubes here: no VM has that name
    assert "unknown command 'lst' (did you mean list?)" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["-f", "laptop", "store"], ["store", "-f", "laptop"],
    ["-f", "laptop", "-t", "sys-backup", "-p", "/nonexistent/pass", "store"],
    ["-f", "laptop", "-t", "sys-backup", "-p", "/nonexistent/pass", "work", "personal"],
])
def test_a_vm_that_exists_is_a_vm_of_the_original_form_whatever_its_name(
        argv: list[str], capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QBKP_DEST_VM", "sys-backup")
    monkeypatch.setenv("QBKP_PASS_FILE", "/nonexistent/pass")
    # `store` looks like `restore`, but a VM has that name: it is backed up
    # (the run stops at the passphrase file, before Qubes is asked anything else).
    code = main(["-o", *argv], app=VMs("store", "work", "personal"))  # type: ignore[arg-type]
    err = capsys.readouterr().err
    assert code == QbackupExit.USAGE
    assert "passphrase file /nonexistent/pass does not exist" in err
    assert "unknown command" not in err


@pytest.mark.parametrize("argv", [
    ["-t", "sys-backup", "-f", "laptop", "-p", "/nonexistent/pass", "work"],
    ["-f", "stats", "-t", "sys-backup", "-p", "/nonexistent/pass"],
    ["--prefix", "lists", "--carrier", "sys-backup", "--passphrase-file", "/nonexistent/pass"],
    ["-f", "laptop", "-t", "sys-backup", "-p", "/nonexistent/pass", "list"],  # as it always was
])
def test_an_options_value_is_never_taken_for_a_mistyped_command(
        argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    # `sys-backup` looks like `backup`, the prefixes like `status` and `list`:
    # they are values, not commands, whether or not a VM has their name.
    code = main(["-o", *argv], app=VMs("work", "personal"))  # type: ignore[arg-type]
    err = capsys.readouterr().err
    assert code == QbackupExit.USAGE
    assert "passphrase file /nonexistent/pass does not exist" in err
