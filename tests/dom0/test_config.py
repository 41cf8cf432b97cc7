"""The job file (dom0/config.py): a job loaded with its defaults filled in;
every problem at once, one per line, with file, line, key and what to do; a
broken file refused; an unknown job named with the known ones; refusals at
config time of what no Qubes release could restore or what would back up
nothing; retention and monitoring settings."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from dom0 import config
from dom0.errors import ConfigError, UsageError
from dom0.settings import SETTINGS
from qbackup_protocol.names import RetentionPolicy

GOOD = "    carrier: sys-backup\n    prefix: laptop\n    passphrase_vm: vault\n"


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "qbackup.yaml"
    path.write_text(text)
    return path


def problems_of(tmp_path: Path, text: str, job: str = "daily") -> list[str]:
    path = write_config(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        config.file_job(config.read_config(path), job)
    return caught.value.problems


def load(tmp_path: Path, extra: str) -> config.Job:
    path = write_config(tmp_path, "jobs:\n  daily:\n" + GOOD + extra)
    return config.file_job(config.read_config(path), "daily")


def test_config_loads_a_job_with_defaults(tmp_path: Path) -> None:
    path = write_config(tmp_path, "jobs:\n  daily:\n" + GOOD)
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


def test_every_unknown_key_is_reported_with_its_line(tmp_path: Path) -> None:
    found = problems_of(tmp_path, "jobs:\n  daily:\n" + GOOD + "    colour: blue\n"
                        "    keep: {daily: 7, hourly: 3}\n    size: 3\n")
    path = tmp_path / "qbackup.yaml"
    assert found == [
        f"{path}:6: jobs.daily.colour: unknown setting (known: {', '.join(SETTINGS)})",
        f"{path}:8: jobs.daily.size: unknown setting (known: {', '.join(SETTINGS)})",
        f"{path}:7: jobs.daily.keep.hourly: unknown rule (known: daily, weekly, monthly,"
        " yearly)",
    ]


def test_every_unknown_top_level_key_and_every_duplicate_is_reported(tmp_path: Path) -> None:
    path = write_config(
        tmp_path, "jobs:\n  daily:\n" + GOOD + "    prefix: other\nextra: 1\nmore: 2\n")
    with pytest.raises(ConfigError) as caught:
        config.read_config(path)
    assert caught.value.problems == [
        f"{path}:7: extra: unknown key (only 'jobs' is allowed at the top)",
        f"{path}:8: more: unknown key (only 'jobs' is allowed at the top)",
        f"{path}:6: jobs.daily.prefix: given twice (first on line 4): keep one",
    ]


def test_yaml_syntax_errors_give_line_and_column(tmp_path: Path) -> None:
    path = write_config(tmp_path, "jobs:\n  daily:\n    carrier: [sys-backup\n    prefix: x\n")
    with pytest.raises(ConfigError) as caught:
        config.read_config(path)
    assert caught.value.problems == [
        f"{path}:4:11: YAML syntax error: expected ',' or ']', but got ':'"]


def test_messages_about_the_file_never_mention_options(tmp_path: Path) -> None:
    found = problems_of(tmp_path, "jobs:\n  daily:\n    prefix: 'a b'\n    retries: x\n"
                                  "    compression: lz4\n    keep_carrier: 1\n")
    assert len(found) == 6
    for problem in found:
        assert " -" not in problem and "$QBKP" not in problem, problem


def test_command_line_problems_name_the_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QBKP_DEST_VM", raising=False)
    monkeypatch.delenv("QBKP_PASS_FILE", raising=False)
    args = argparse.Namespace(job=None, prefix="a b", carrier=None, passphrase_file=None,
                              passphrase_vm=None, vms=[], exclude=None, keep_carrier=None,
                              retries=None, retry_delay=None, verify=None, compression=None)
    with pytest.raises(UsageError) as caught:
        config.backup_job(args, None)
    assert str(caught.value).split("; ") == [
        "-t/--carrier (or $QBKP_DEST_VM): required: the carrier VM's name",
        "-f/--prefix: invalid prefix: use letters, digits, '.', '_', '-' (segments start with a"
        " letter or digit, '/' separates segments)",
        "give exactly one of -p/--passphrase-file (or $QBKP_PASS_FILE) and --passphrase-vm",
    ]


def test_an_option_overriding_a_file_job_is_named_as_the_option(tmp_path: Path) -> None:
    path = write_config(tmp_path, "jobs:\n  daily:\n" + GOOD)
    with pytest.raises(ConfigError) as caught:
        config.file_job(config.read_config(path), "daily", {"retries": 99})
    assert caught.value.problems == ["--retries: expected an integer from 0 to 10"]


def test_an_empty_vm_list_is_refused(tmp_path: Path) -> None:
    [problem] = problems_of(tmp_path, "jobs:\n  daily:\n" + GOOD + "    vms: []\n")
    assert problem.endswith("jobs.daily.vms: an empty list backs up no VM: name VMs, or leave"
                            " vms out for every VM with include_in_backups")


@pytest.mark.parametrize("filter_name", SETTINGS["compression"].choices)
def test_every_restorable_filter_is_accepted(tmp_path: Path, filter_name: str) -> None:
    assert load(tmp_path, f"    compression: {filter_name}\n").compression == filter_name


@pytest.mark.parametrize(("value", "ending"), [
    ("lz4", "compression: lz4: no Qubes release can restore lz4 backups; use gzip, bzip2 or"
            " xz"),
    ("brotli", "compression: expected true, false or one of bzip2, gzip, lzma, pbzip2, pigz,"
               " xz, zstd, zstdmt"),
])
def test_filters_no_release_can_restore_are_refused(tmp_path: Path, value: str,
                                                     ending: str) -> None:
    [problem] = problems_of(tmp_path, "jobs:\n  daily:\n" + GOOD + f"    compression: {value}\n")
    assert problem.endswith("jobs.daily." + ending)


def test_retention_policy_is_read(tmp_path: Path) -> None:
    job = load(tmp_path, "    keep: {daily: 7, weekly: 4, monthly: 12}\n")
    assert job.keep == RetentionPolicy(daily=7, weekly=4, monthly=12)


@pytest.mark.parametrize(("keep", "ending"), [
    ("{daily: 0}", "jobs.daily.keep: keeps nothing: give at least one count above 0, or leave"
                   " keep out to forbid any prune"),
    ("{daily: -1}", "jobs.daily.keep.daily: expected an integer from 0 to 100000"),
    ("7", "jobs.daily.keep: expected a mapping like {daily: 7, weekly: 4, monthly: 12}"),
])
def test_bad_retention_policies_are_refused(tmp_path: Path, keep: str, ending: str) -> None:
    [problem] = problems_of(tmp_path, "jobs:\n  daily:\n" + GOOD + f"    keep: {keep}\n")
    assert problem.endswith(ending)


def test_hooks_are_read(tmp_path: Path) -> None:
    job = load(tmp_path, "    hooks:\n      on_failure: [logger, failed]\n"
                         "      ping_url: https://hc-ping.com/abc\n      ping_vm: sys-net\n")
    assert job.hooks == config.Hooks({"on_failure": ["logger", "failed"]},
                                     "https://hc-ping.com/abc", "sys-net")


@pytest.mark.parametrize(("hooks", "ending"), [
    ("{on_start: 'logger started'}", "jobs.daily.hooks.on_start: expected a command as a list"
                                     " of words, e.g. [/usr/local/bin/report, failed]"),
    ("{ping_url: 'ftp://x'}", "jobs.daily.hooks.ping_url: expected an http:// or https:// URL"
                              " without spaces"),
    ("{on_end: [x]}", "jobs.daily.hooks.on_end: unknown hook (known: on_start, on_success,"
                      " on_failure, ping_url, ping_vm)"),
])
def test_bad_hooks_are_refused(tmp_path: Path, hooks: str, ending: str) -> None:
    [problem] = problems_of(tmp_path, "jobs:\n  daily:\n" + GOOD + f"    hooks: {hooks}\n")
    assert problem.endswith(ending)


def test_the_example_file_loads_as_it_is_shipped() -> None:
    example = Path(__file__).resolve().parents[2] / "dom0" / "qbackup.yaml.example"
    jobs = config.all_jobs(config.read_config(example))
    assert jobs.broken == {}
    assert jobs.valid["daily"].keep == RetentionPolicy(daily=7, weekly=4, monthly=12)
