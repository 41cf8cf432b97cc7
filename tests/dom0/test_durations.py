"""dom0's durations (retry_delay, answer_timeout, --retry-delay) take a unit,
s, m, h or d; a bare number keeps meaning seconds, so every job file written
before still loads as it did; a bad one is one line naming the setting and
how to write a duration."""

from __future__ import annotations

from pathlib import Path

import pytest

from dom0 import config
from dom0.arguments import build_parser
from dom0.errors import ConfigError, UsageError

JOB = "jobs:\n  daily:\n    carrier: sys-backup\n    prefix: laptop\n    passphrase_vm: vault\n"
HOW = "not a duration: use a number and a unit, s, m, h or d (90s, 5m; a bare number means" \
      " seconds)"


def load(tmp_path: Path, extra: str) -> config.Job:
    path = tmp_path / "qbackup.yaml"
    path.write_text(JOB + extra)
    return config.file_job(config.read_config(path), "daily")


@pytest.mark.parametrize(("extra", "answer_timeout", "retry_delay"), [
    ("    answer_timeout: 5m\n    retry_delay: 90s\n", 300, 90),
    ("    answer_timeout: 300\n    retry_delay: 90\n", 300, 90),  # bare: seconds, as before
    ("    answer_timeout: '1h'\n    retry_delay: 0.5m\n", 3600, 30),
    ("", 300, 60),  # the defaults
])
def test_a_job_file_s_durations_take_units(tmp_path: Path, extra: str, answer_timeout: float,
                                           retry_delay: float) -> None:
    job = load(tmp_path, extra)
    assert (job.answer_timeout, job.retry_delay) == (answer_timeout, retry_delay)


@pytest.mark.parametrize(("extra", "problem"), [
    ("    answer_timeout: 5x\n", f"answer_timeout: {HOW}"),
    ("    retry_delay: 2w\n", f"retry_delay: {HOW}"),
    ("    retry_delay: 2d\n", "retry_delay: expected a duration from 0s to 24h, e.g. 90s or 5m"),
    ("    answer_timeout: 0\n", "answer_timeout: expected a duration from 1s to 24h, e.g. 90s"
                                " or 5m"),
])
def test_a_bad_duration_is_one_line_naming_the_key_and_how_to_write_one(
        tmp_path: Path, extra: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, extra)
    path = tmp_path / "qbackup.yaml"
    assert caught.value.problems == [f"{path}:6: jobs.daily.{problem}"]


def backup_args(*options: str) -> list[str]:
    return ["backup", "-t", "sys-backup", "-f", "laptop", "--passphrase-vm", "vault", *options]


@pytest.mark.parametrize(("given", "seconds"), [("2m", 120), ("90", 90), ("1h", 3600)])
def test_retry_delay_option_takes_units(given: str, seconds: float) -> None:
    args = build_parser().parse_args(backup_args("--retry-delay", given))
    assert config.backup_job(args, None).retry_delay == seconds


def test_a_bad_retry_delay_option_says_how_to_write_one() -> None:
    args = build_parser().parse_args(backup_args("--retry-delay", "2 minutes"))
    with pytest.raises(UsageError) as caught:
        config.backup_job(args, None)
    assert str(caught.value) == f"--retry-delay: {HOW}"
