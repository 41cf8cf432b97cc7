"""Where a job's settings come from: the job file, the command line and the
environment; and where list/check/verify/restore go.

A job's settings come from `jobs.NAME` in the job file (`--config`, else
~/.config/qbackup/qbackup.yaml, else /etc/qbackup/qbackup.yaml) with the
options given to `qbackup backup` on top, or, without a job, from the
options and the original tool's environment (QBKP_DEST_VM, QBKP_PASS_FILE).
Whatever their source, the merged settings are checked ONCE, against
dom0/settings.py's table, by `build_job`, which returns every problem, each
naming its setting. Each problem is then shown where its value came from:
`FILE:LINE: jobs.NAME.KEY:` for the file (a message about the file never
mentions command-line options) or the option's name for the command line.
"""

from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from string import Template
from typing import Any

import yaml

from dom0.errors import ConfigError, UsageError
from dom0.settings import (
    ONE_PASSPHRASE,
    SETTINGS,
    Hooks,
    Problem,
    check_value,
    check_values,
    default,
    one_passphrase,
)
from qbackup_protocol import carrier_service, names
from qbackup_protocol.wire import ProtocolError

SYSTEM_CONFIG = Path("/etc/qbackup/qbackup.yaml")
USER_CONFIG = Path("~/.config/qbackup/qbackup.yaml")
MAX_CONFIG_BYTES = 1024 * 1024
ENV_CARRIER = "QBKP_DEST_VM"
ENV_PASSFILE = "QBKP_PASS_FILE"
JOB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,39}")


@dataclass(frozen=True)
class Job:
    """One fully resolved backup job (name '' for a job from the command
    line): a field per setting of dom0/settings.py, its default from there."""

    name: str
    carrier: str
    prefix: str
    destinations: tuple[str, ...] | None = None  # None: every one the carrier has
    passphrase_file: Path | None = None
    passphrase_vm: str | None = None
    vms: list[str] | None = None
    exclude: list[str] = field(default_factory=list)
    compression: bool | str = default("compression")
    keep_carrier: bool = default("keep_carrier")
    retries: int = default("retries")
    retry_delay: float = default("retry_delay")
    verify: bool = default("verify")
    drill_max_age: float | None = None  # seconds
    answer_timeout: float = default("answer_timeout")
    keep: names.RetentionPolicy | None = None
    hooks: Hooks = field(default_factory=Hooks)


@dataclass(frozen=True)
class PassphraseSource:
    """Where the backup passphrase comes from: a file, or a VM's service."""

    file: Path | None = None
    vm: str | None = None


@dataclass(frozen=True)
class ConfigFile:
    """A job file read and parsed: its raw jobs, the line of every key (of
    the value in force: YAML keeps the last of a key given twice) and, per
    job, its keys given twice, as problems."""

    path: Path
    jobs: dict[str, Any]
    lines: dict[tuple[str, ...], int]
    twice: dict[str, list[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class GivenTwice:
    """A key given again in the same mapping: its path, this line, the first line."""

    path: tuple[str, ...]
    line: int
    first: int

    def problem(self, path: Path) -> str:
        """Given the job file's PATH, return the problem as `FILE:LINE: KEY: text`."""
        return f"{path}:{self.line}: {'.'.join(self.path)}: given twice (first on line" \
               f" {self.first}): keep one"


def build_job(name: str, values: dict[str, Any]) -> tuple[Job | None, list[Problem]]:
    """Given a job NAME ('' for the command line) and its merged raw settings,
    return (the Job, []) or (None, every problem found)."""
    checked = check_values(values)
    if checked.problems:
        return None, checked.problems
    return Job(name=name, **checked.values), []


# --- the job file --------------------------------------------------------------
def default_config_path() -> Path | None:
    """Return the config file in use when no --config is given, or None."""
    for candidate in (USER_CONFIG.expanduser(), SYSTEM_CONFIG):
        if candidate.exists():
            return candidate
    return None


def _key_lines(node: yaml.Node, path: tuple[str, ...], lines: dict[tuple[str, ...], int],
               twice: list[GivenTwice]) -> None:
    """Given a composed YAML NODE at PATH, record the line of every mapping key
    down to jobs.NAME.KEY.SUBKEY, and each key given twice."""
    if not isinstance(node, yaml.MappingNode) or len(path) > 3:
        return
    for key_node, value_node in node.value:
        here = (*path, str(key_node.value))
        line = key_node.start_mark.line + 1
        if here in lines:
            first = next((given.first for given in twice if given.path == here), lines[here])
            twice.append(GivenTwice(here, line, first))
            # YAML keeps the last value: a problem with it must name its lines.
            for key in [key for key in lines if key[:len(here)] == here]:
                del lines[key]
        lines[here] = line
        _key_lines(value_node, here, lines, twice)


def read_config(path: Path) -> ConfigFile:
    """Given a job file PATH, return it parsed; raise ConfigError (every
    problem, each with file and line: the jobs' too) if it is unreadable, too
    big, not YAML, or not a mapping holding only a `jobs` mapping given once.
    A job's own keys given twice are that job's problems (file_job)."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as error:
        raise ConfigError(f"{path}: cannot read: {error.strerror}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES} bytes")
    try:
        node = yaml.compose(raw, Loader=yaml.SafeLoader)
        data = yaml.safe_load(raw)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else f"{path}"
        raise ConfigError(f"{where}: YAML syntax error: {error.problem or error.context}")\
            from None
    except (yaml.YAMLError, RecursionError):
        raise ConfigError(f"{path}: not valid YAML") from None
    lines: dict[tuple[str, ...], int] = {}
    twice: list[GivenTwice] = []
    if node is not None:
        _key_lines(node, (), lines, twice)
    if not isinstance(data, dict) or not isinstance(data.get("jobs"), dict):
        raise ConfigError(f"{path}: expected a mapping with a 'jobs' mapping at the top, like"
                          " the example file")
    problems = [f"{path}:{lines.get((str(key),), 1)}: {key}: unknown key (only 'jobs' is"
                " allowed at the top)" for key in data if key != "jobs"]
    problems += [given.problem(path) for given in twice if len(given.path) < 2]
    jobs_twice: dict[str, list[str]] = {}
    for given in twice:
        if len(given.path) >= 2:
            jobs_twice.setdefault(given.path[1], []).append(given.problem(path))
    config = ConfigFile(path=path, jobs={str(name): job for name, job in data["jobs"].items()},
                        lines=lines, twice=jobs_twice)
    if problems:  # the file is refused as a whole: say everything wrong in it
        broken = all_jobs(config).broken
        raise ConfigError(problems + [problem for name in config.jobs
                                      for problem in broken.get(name, [])])
    return config


def open_config(path: Path | None) -> ConfigFile:
    """Given --config (None: the default file), return the job file; raise
    ConfigError if there is none."""
    path = path or default_config_path()
    if path is None:
        raise ConfigError(f"no job file: create {USER_CONFIG} or {SYSTEM_CONFIG}"
                          " (see the example file)")
    return read_config(path)


def file_problem(config: ConfigFile, job: str, problem: Problem) -> str:
    """Given a problem of a job in CONFIG, return it as `FILE:LINE: KEY: text`."""
    key_path = ("jobs", job) if problem.key is None else ("jobs", job, *problem.key.split("."))
    line = config.lines.get(key_path) or config.lines.get(key_path[:3]) \
        or config.lines.get(("jobs", job), 1)
    text = Template(problem.text).safe_substitute({key: key for key in SETTINGS})
    return f"{config.path}:{line}: {'.'.join(key_path)}: {text}"


def require_job(config: ConfigFile, name: str) -> None:
    """Given the job file and a job NAME, return if the file has that job;
    raise ConfigError naming the jobs it has otherwise."""
    if name not in config.jobs:
        known = ", ".join(sorted(config.jobs)) or "none"
        raise ConfigError(f"{config.path}: no job named '{name}' (jobs: {known})")


def file_job(config: ConfigFile, name: str, overrides: dict[str, Any] | None = None) -> Job:
    """Given the job file, a job NAME and option values that replace the
    file's, return the job; raise ConfigError naming every problem where its
    value came from."""
    require_job(config, name)
    overrides = overrides or {}
    raw = config.jobs[name]
    problems: list[str] = []
    if not JOB_NAME.fullmatch(name):
        problems.append(file_problem(config, name, Problem(
            None, "job names use letters, digits, '_' and '-' (at most 40)")))
    problems += config.twice.get(name, [])
    if not isinstance(raw, dict):
        raise ConfigError([*problems, file_problem(config, name, Problem(
            None, "expected a mapping of job settings"))])
    values = dict(raw)
    if "passphrase_file" in overrides or "passphrase_vm" in overrides:
        # A passphrase option replaces the job's, whichever kind it was.
        values.pop("passphrase_file", None)
        values.pop("passphrase_vm", None)
    values.update(overrides)
    job, found = build_job(name, values)
    for problem in found:
        if problem.key in overrides:
            problems.append(option_problem(problem))  # the option's value was wrong
        else:
            problems.append(file_problem(config, name, problem))
    if problems or job is None:
        raise ConfigError(problems)
    return job


@dataclass(frozen=True)
class Jobs:
    """A job file's jobs: the valid ones by name, and the problems of each other one."""

    valid: dict[str, Job]
    broken: dict[str, list[str]]


def all_jobs(config: ConfigFile) -> Jobs:
    """Given the job file, return its valid jobs and the problems of the others."""
    jobs = Jobs({}, {})
    for name in config.jobs:
        try:
            jobs.valid[name] = file_job(config, name)
        except ConfigError as error:
            jobs.broken[name] = error.problems
    return jobs


# --- the command line ------------------------------------------------------------
def option_label(key: str) -> str:
    """Given a setting KEY, return how the command line sets it."""
    option = SETTINGS[key.split(".")[0]].option or key
    environment = {"carrier": ENV_CARRIER, "passphrase_file": ENV_PASSFILE}.get(key)
    return f"{option} (or ${environment})" if environment else option


def option_problem(problem: Problem) -> str:
    """Given a problem of a job given on the command line, return it naming options."""
    text = Template(problem.text).safe_substitute({key: option_label(key) for key in SETTINGS})
    return text if problem.key is None else f"{option_label(problem.key)}: {text}"


def option_values(args: argparse.Namespace) -> dict[str, Any]:
    """Given `qbackup backup` arguments, return the settings they give, in the
    job file's types."""
    values = {key: getattr(args, key) for key, setting in SETTINGS.items() if setting.option}
    values["vms"] = args.vms or None  # no VM arguments: the job's VMs
    if args.passphrase_file:
        values["passphrase_file"] = str(args.passphrase_file)
    if args.compression is not None:
        lowered = args.compression.lower()
        values["compression"] = {"true": True, "false": False}.get(lowered, lowered)
    return {key: value for key, value in values.items() if value is not None}


def backup_job(args: argparse.Namespace, config_path: Path | None) -> Job:
    """Given `qbackup backup` arguments, return the job they describe: a file
    job with the options on top, or one from the options and the environment;
    raise ConfigError/UsageError naming every problem."""
    values = option_values(args)
    if args.job:
        return file_job(open_config(config_path), args.job, values)
    if "passphrase_file" not in values and "passphrase_vm" not in values \
            and os.environ.get(ENV_PASSFILE):
        values["passphrase_file"] = os.environ[ENV_PASSFILE]
    if "carrier" not in values and os.environ.get(ENV_CARRIER):
        values["carrier"] = os.environ[ENV_CARRIER]
    job, problems = build_job("", values)
    if problems or job is None:
        raise UsageError("; ".join(option_problem(problem) for problem in problems))
    return job


# --- where list/check/verify/restore go ---------------------------------------------
@dataclass(frozen=True)
class Target:
    """Where list/check/verify/restore go: the carrier, the passphrase source,
    and how long to wait for each answer through the carrier."""

    carrier: str
    passphrase: PassphraseSource
    answer_timeout: float
    # --destination D (None: not given), and the job's destinations in order
    # (None: no job, or every one the carrier has).
    destination: str | None = None
    destinations: tuple[str, ...] | None = None


def carrier_and_passphrase(args: argparse.Namespace, config_path: Path | None) -> Target:
    """Given list/check/verify/restore arguments, return the Target: carrier and
    passphrase source from the options, then the job, then the environment;
    raise UsageError if there is no carrier or a setting's type refuses one."""
    job = file_job(open_config(config_path), args.job) if args.job else None
    carrier = args.carrier or (job.carrier if job else None) or os.environ.get(ENV_CARRIER)
    if not carrier:
        raise UsageError(f"give the carrier VM with -t VM, --job NAME or ${ENV_CARRIER}")
    passfile = getattr(args, "passphrase_file", None)
    passvm = getattr(args, "passphrase_vm", None)
    if passfile is None and passvm is None and job is not None:
        passfile = job.passphrase_file
        passvm = job.passphrase_vm
    if passfile is None and passvm is None and os.environ.get(ENV_PASSFILE):
        passfile = Path(os.environ[ENV_PASSFILE])
    # The job's values are checked already; an option's or the environment's
    # only here, by the same types.
    destination = getattr(args, "destination", None)
    if destination is not None:
        try:
            carrier_service.check_destination(destination)
        except ProtocolError as error:
            raise UsageError(f"--destination: {error}") from None
    problems = check_value("carrier", carrier) + check_value("passphrase_vm", passvm)
    if problems:
        raise UsageError("; ".join(option_problem(problem) for problem in problems))
    return Target(carrier, PassphraseSource(file=passfile, vm=passvm),
                  job.answer_timeout if job else default("answer_timeout"), destination,
                  job.destinations if job else None)


def need_passphrase(source: PassphraseSource) -> PassphraseSource:
    """Given a passphrase source, return it; raise UsageError if it is empty or double."""
    if not one_passphrase(source.file, source.vm):
        raise UsageError(f"{option_problem(ONE_PASSPHRASE)}, or --job NAME")
    return source
