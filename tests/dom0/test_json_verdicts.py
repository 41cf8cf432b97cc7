"""`--json` on check, verify and restore: one JSON object on stdout for a
script, what was proved on success, the error and exit code on failure.

Simulated Qubes, REAL carrier, real sshd and shell."""

from __future__ import annotations

import json

import pytest

from dom0.errors import QbackupExit
from tests.dom0.conftest import CARRIER, Dom0

MISSING = "laptop-20200101T000000Z"


def backup(dom0: Dom0) -> str:
    """Back up work; return the backup's name."""
    dom0.sim.vms["work"].size = 64 * 1024
    assert dom0.run("-f", "laptop", "-t", CARRIER, "-p", str(dom0.passfile), "work") == 0
    [name] = dom0.stored()
    return name


def printed(capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    [line] = capsys.readouterr().out.splitlines()
    return json.loads(line)


def test_check_and_verify_answer_in_json(dom0: Dom0,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    name = backup(dom0)
    [run] = [json.loads(line) for line in dom0.history.read_text().splitlines()]
    capsys.readouterr()
    assert dom0.run("check", "--json", "-t", CARRIER, name) == 0
    assert printed(capsys) == {
        "backup": name, "size": run["size"], "sha256": run["sha256"],
        "matches_history": True}
    assert dom0.run("verify", "--json", "-t", CARRIER, "-p", str(dom0.passfile), name) == 0
    assert printed(capsys) == {
        "backup": name, "size": run["size"], "sha256": run["sha256"],
        "dom0_record": True}
    dom0.history.unlink()  # another dom0's backup: nothing to hold it to
    assert dom0.run("check", "--json", "-t", CARRIER, name) == 0
    assert printed(capsys)["matches_history"] is None


@pytest.mark.parametrize("command", [("check",), ("verify", "-p", "PASSFILE"),
                                     ("restore", "-p", "PASSFILE")])
def test_a_failure_is_one_json_object_with_the_error_and_exit_code(
        dom0: Dom0, capsys: pytest.CaptureFixture[str], command: tuple[str, ...]) -> None:
    argv = [str(dom0.passfile) if word == "PASSFILE" else word for word in command]
    assert dom0.run(*argv, "--json", "-t", CARRIER, MISSING) == QbackupExit.NO_SUCH_BACKUP
    assert printed(capsys) == {
        "backup": MISSING, "error": f"no such backup on the server: {MISSING} (see qbackup"
                                    " list)", "exit": int(QbackupExit.NO_SUCH_BACKUP)}
