"""Loading a job from the job file (dom0/config.py): defaults filled in, every
problem reported with its file, line and key, a broken file refused, an
unknown job named with the known ones. The job file's other tests are in
test_config.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from dom0 import config
from dom0.errors import ConfigError


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "qbackup.yaml"
    path.write_text(text)
    return path


def test_config_loads_a_job_with_defaults(tmp_path: Path) -> None:
    path = write_config(tmp_path, "jobs:\n  daily:\n    carrier: sys-backup\n"
                                  "    prefix: laptop\n    passphrase_vm: vault\n")
    job = config.file_job(config.read_config(path), "daily")
    assert job == config.Job(name="daily", carrier="sys-backup", prefix="laptop",
                             passphrase_vm="vault")


def test_config_collects_every_problem_with_file_and_key(tmp_path: Path) -> None:
    path = write_config(tmp_path, """
jobs:
  daily:
    carrier: "bad vm"
    prefix: "../x"
    vms: work
    retries: -1
    colour: blue
    verify: "yes"
""")
    with pytest.raises(ConfigError) as caught:
        config.file_job(config.read_config(path), "daily")
    lines = {"carrier": 4, "prefix": 5, "vms": 6, "retries": 7, "colour": 8, "verify": 9}
    problems = caught.value.problems
    for key, line in lines.items():
        assert any(problem.startswith(f"{path}:{line}: jobs.daily.{key}: ")
                   for problem in problems), key
    assert f"{path}:3: jobs.daily: give exactly one of passphrase_file and passphrase_vm" \
        in problems
    assert len(problems) == 7


@pytest.mark.parametrize(("text", "problem"), [
    ("jobs: [1]\n", "expected a mapping with a 'jobs' mapping"),
    ("jobs: {}\nextra: 1\n", ":2: extra: unknown key"),
    ("{{{", "qbackup.yaml:1:4: YAML syntax error: expected the node content"),
])
def test_config_refuses_bad_files(tmp_path: Path, text: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        config.read_config(write_config(tmp_path, text))


def test_unknown_job_names_the_known_ones(tmp_path: Path) -> None:
    path = write_config(tmp_path, "jobs:\n  daily:\n    carrier: c\n    prefix: p\n"
                                  "    passphrase_vm: v\n")
    with pytest.raises(ConfigError, match="no job named 'weekly' \\(jobs: daily\\)"):
        config.file_job(config.read_config(path), "weekly")
