"""Every problem of a job file at once, each with FILE:LINE: a key given
twice hides none of the others, wherever it is, and a problem with a value
names the line of the value in force (YAML keeps the last). No server
needed."""

from __future__ import annotations

from pathlib import Path

import pytest

from dom0 import config
from dom0.cli import main
from dom0.errors import ConfigError, QbackupExit

TWICE_AND_MORE = """\
jobs:
  daily:
    carrier: sys-backup
    prefix: laptop
    passphrase_vm: vault
    prefix: 'a b'
    retries: 99
    colour: blue
  weekly:
    carrier: sys-backup
    prefix: weekly
    passphrase_vm: vault
    passphrase_vm: other
    compression: lz4
"""


pytestmark = pytest.mark.usefixtures("quiet_state")


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "qbackup.yaml"
    path.write_text(text)
    return path


def test_a_key_given_twice_hides_none_of_the_jobs_other_problems(tmp_path: Path) -> None:
    path = write(tmp_path, TWICE_AND_MORE)
    with pytest.raises(ConfigError) as caught:
        config.file_job(config.read_config(path), "daily")
    assert caught.value.problems == [
        f"{path}:6: jobs.daily.prefix: given twice (first on line 4): keep one",
        f"{path}:8: jobs.daily.colour: unknown setting (known: {', '.join(config.SETTINGS)})",
        f"{path}:6: jobs.daily.prefix: invalid prefix: use letters, digits, '.', '_', '-'"
        " (segments start with a letter or digit, '/' separates segments)",
        f"{path}:7: jobs.daily.retries: expected an integer from 0 to 10",
    ]


def test_config_check_reports_every_problem_of_every_job_at_once(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, TWICE_AND_MORE)
    assert main(["-o", "config", "check", "--config", str(path)]) == QbackupExit.USAGE
    captured = capsys.readouterr()
    assert captured.out == ("daily: 4 problem(s) in the job file (see above)\n"
                            "weekly: 2 problem(s) in the job file (see above)\n")
    assert f"{path}:13: jobs.weekly.passphrase_vm: given twice (first on line 12)" \
        in captured.err
    assert f"{path}:14: jobs.weekly.compression: lz4: no Qubes release can restore" \
        in captured.err


def test_a_problem_outside_the_jobs_hides_none_of_theirs(tmp_path: Path) -> None:
    path = write(tmp_path, TWICE_AND_MORE + "colour: blue\n")
    with pytest.raises(ConfigError) as caught:
        config.read_config(path)
    problems = caught.value.problems
    assert problems[0] == f"{path}:15: colour: unknown key (only 'jobs' is allowed at the top)"
    assert len(problems) == 1 + 4 + 2
    assert problems[-1].startswith(f"{path}:14: jobs.weekly.compression: lz4:")


def test_a_backup_of_a_job_with_a_key_given_twice_names_all_its_problems(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, TWICE_AND_MORE)
    assert main(["-o", "backup", "--job", "weekly", "--config", str(path)]) \
        == QbackupExit.USAGE
    err = capsys.readouterr().err
    assert "configuration refused: 2 problem(s)" in err
    assert f"{path}:14: jobs.weekly.compression" in err
