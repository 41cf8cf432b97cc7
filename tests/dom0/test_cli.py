"""The command line behaves like the tools people know: options before or
after the command, --version, help for a bare `qbackup`, one meaning of -x,
status that fails without a success and never shows Python class names.
No server needed."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from dom0 import errors
from dom0.cli import PARSER, main, normalise
from dom0.errors import QbackupExit
from qbackup_protocol import __version__

pytestmark = pytest.mark.usefixtures("quiet_state")


def parse(*argv: str) -> dict[str, object]:
    arguments = normalise(list(argv))
    return vars(PARSER.parse_args(arguments))


def test_bare_qbackup_prints_help_and_fails(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == QbackupExit.USAGE
    out = capsys.readouterr().out
    assert out.startswith("usage: qbackup") and "exit codes:" in out


def test_version_is_the_project_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"qbackup {__version__}\n"


@pytest.mark.parametrize("argv", [
    ("-v", "list", "-t", "c"), ("list", "-v", "-t", "c"), ("list", "-t", "c", "-v"),
    ("-v", "--config", "x.yaml", "list", "-t", "c"),
])
def test_common_options_work_before_and_after_the_command(argv: tuple[str, ...]) -> None:
    args = parse(*argv)
    assert args["command"] == "list" and args["verbose"] is True and args["carrier"] == "c"


def test_an_option_after_the_command_keeps_one_given_before() -> None:
    args = parse("--config", "a.yaml", "-q", "status", "--max-age", "3")
    assert args["config"] == Path("a.yaml") and args["quiet"] is True


@pytest.mark.parametrize("command", [("backup", "-f", "p"), ("restore", "NAME")])
def test_exclude_is_spelled_out_in_every_command(command: tuple[str, ...]) -> None:
    assert parse(*command, "--exclude", "untrusted")["exclude"] == ["untrusted"]


def test_x_keeps_the_carrier_as_in_the_original_tool() -> None:
    assert parse("backup", "-f", "p", "-x")["keep_carrier"] is True
    assert parse("-f", "p", "-x")["keep_carrier"] is True


def test_every_command_that_keeps_the_carrier_spells_it_x_and_x_means_only_that() -> None:
    # The original call's meaning of -x ("leave the carrier running") holds
    # in every command that starts the carrier, and -x means nothing else.
    subcommands = next(action for action in PARSER._actions
                       if isinstance(action, argparse._SubParsersAction))
    keeping = []
    for name, sub in subcommands.choices.items():
        for action in sub._actions:
            if "--keep-carrier" in action.option_strings:
                assert "-x" in action.option_strings, name
                keeping.append(name)
            if "-x" in action.option_strings:
                assert "--keep-carrier" in action.option_strings, name
    assert "backup" in keeping


def test_original_form_still_means_backup() -> None:
    args = parse("-f", "laptop", "-t", "sys-backup", "-p", "/x", "work")
    assert args["command"] == "backup" and args["vms"] == ["work"]


@pytest.mark.parametrize("command", ["backup", "list", "check", "verify", "restore", "status",
                                     "config"])
def test_every_command_has_help_with_examples(
        command: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([command, "--help"]) == 0
    assert "example" in capsys.readouterr().out


def test_status_without_any_success_fails(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-o", "status"]) == QbackupExit.STALE
    assert "no recent enough backup for: no job in the job file and no backup in the history" \
        in capsys.readouterr().err


def test_status_names_outcomes_in_words_never_python_classes(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    record = {"job": "daily", "carrier": "c", "name": None, "size": None, "sha256": None,
              "start": 1.0, "end": 2.0}
    (tmp_path / "history.jsonl").write_text(
        json.dumps({**record, "outcome": "failed: TemporaryError"}) + "\n")  # an old record
    assert main(["status"]) == QbackupExit.STALE
    assert capsys.readouterr().out == "daily: no successful backup yet (last run: failed)\n"
    (tmp_path / "history.jsonl").write_text(json.dumps(
        {**record, "outcome": f"failed (exit 75): {errors.exit_meaning(75)}"}) + "\n")
    assert main(["status", "--json"]) == QbackupExit.STALE
    [job] = json.loads(capsys.readouterr().out)["jobs"]
    assert job["last_run"] == f"failed (exit 75): {errors.exit_meaning(75)}"
    assert job["last_success"] is None and job["stale"] is True


def test_config_check_reports_each_broken_job_and_fails(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "qbackup.yaml"
    path.write_text("jobs:\n  weekly:\n    carrier: c\n    prefix: w\n    passphrase_vm: v\n"
                    "    vms: []\n    colour: blue\n")
    assert main(["-o", "config", "check", "--config", str(path)]) == QbackupExit.USAGE
    captured = capsys.readouterr()
    assert captured.out == "weekly: 2 problem(s) in the job file (see above)\n"
    assert f"{path}:7: jobs.weekly.colour: unknown setting" in captured.err
    assert f"{path}:6: jobs.weekly.vms: an empty list backs up no VM" in captured.err


def test_a_job_drill_max_age_makes_status_fail_when_its_drill_is_old(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import time

    from dom0.drill import Drill, append_drill, drills_path

    path = tmp_path / "qbackup.yaml"
    path.write_text("jobs:\n  daily:\n    carrier: c\n    prefix: p\n    passphrase_vm: v\n"
                    "    drill_max_age: 24\n  weekly:\n    carrier: c\n    prefix: w\n"
                    "    passphrase_vm: v\n")
    now = time.time()
    history = tmp_path / "history.jsonl"
    history.write_text("".join(json.dumps({
        "job": job, "carrier": "c", "name": f"{prefix}-20261122T000000Z", "size": 1,
        "sha256": "a" * 64, "start": now - 60, "end": now, "outcome": "ok"}) + "\n"
        for job, prefix in (("daily", "p"), ("weekly", "w"))))
    # weekly has no drill_max_age: never drilled is fine for it.
    assert main(["-o", "status", "--config", str(path)]) == QbackupExit.STALE
    assert "no recent enough drill for: daily: never" in capsys.readouterr().err
    append_drill(drills_path(history), Drill("daily", ["p-20261122T000000Z"], now - 50 * 3600,
                                             now - 48 * 3600, "ok"))
    assert main(["-o", "status", "--config", str(path)]) == QbackupExit.STALE
    assert "no recent enough drill for: daily: last drill 2.0d old > 24h" \
        in capsys.readouterr().err
    append_drill(drills_path(history), Drill("daily", ["p-20261122T000000Z"], now - 60, now,
                                             "ok"))
    assert main(["-o", "status", "--config", str(path)]) == 0
