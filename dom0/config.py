"""Backup jobs: the job file, the command line and the environment, validated once.

A job's settings come from `jobs.NAME` in the job file (`--config`, else
~/.config/qbackup/qbackup.yaml, else /etc/qbackup/qbackup.yaml) with the
options given to `qbackup backup` on top, or, without a job, from the
options and the original tool's environment (QBKP_DEST_VM, QBKP_PASS_FILE).
Whatever their source, the merged settings are validated ONCE by
`build_job`, which returns every problem, each naming its setting. Each
problem is then shown where its value came from: `FILE:LINE: jobs.NAME.KEY:`
for the file (a message about the file never mentions command-line options)
or the option's name for the command line.

`SETTINGS` is the one table of job keys (dom0/README.md's table is compared
with it by a test); dom0/qbackup.yaml.example shows each one.
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

from dom0.compression import RESTORABLE_FILTERS
from dom0.errors import ConfigError, UsageError
from qbackup_protocol import names, wire

SYSTEM_CONFIG = Path("/etc/qbackup/qbackup.yaml")
USER_CONFIG = Path("~/.config/qbackup/qbackup.yaml")
MAX_CONFIG_BYTES = 1024 * 1024
ENV_CARRIER = "QBKP_DEST_VM"
ENV_PASSFILE = "QBKP_PASS_FILE"
# Qubes' own rule for VM names; anything else cannot be a VM.
VM_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,30}")
JOB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,39}")
# One prefix segment: starts alphanumeric (never '.', '-' or '_', so never a
# hidden file, an option or '..'); the rest adds only '.', '_', '-'. Stricter
# than the protocol's name rules, which every full name must meet as well.
PREFIX_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# Compression filters a job may use: what qvm-backup-restore can undo on every
# supported release (dom0/compression.py holds the list and why). No release
# restores lz4, so a job asking for it is refused before any backup is made.
COMPRESSION_FILTERS = RESTORABLE_FILTERS
NEVER_RESTORABLE = {"lz4": "no Qubes release can restore lz4 backups"}
HOOK_EVENTS = ("on_start", "on_success", "on_failure")
HOOK_KEYS = (*HOOK_EVENTS, "ping_url", "ping_vm")
URL = re.compile(r"https?://[!-~]{1,1000}")
MAX_HOOK_WORDS = 64


@dataclass(frozen=True)
class Setting:
    """One job setting: what it holds, and the `qbackup backup` option that
    sets it (None: only the job file can)."""

    meaning: str
    option: str | None


SETTINGS: dict[str, Setting] = {
    "carrier": Setting("the carrier VM's name (required)", "-t/--carrier"),
    "prefix": Setting("backup names are PREFIX-YYYYmmddTHHMMSSZ (required)", "-f/--prefix"),
    "passphrase_file": Setting("path of the passphrase file, mode 0600", "-p/--passphrase-file"),
    "passphrase_vm": Setting("VM answering qubes.BackupPassphrase (instead of a file)",
                             "--passphrase-vm"),
    "vms": Setting("list of VMs to back up; omit for every VM with include_in_backups",
                   "the VM arguments"),
    "exclude": Setting("list of VMs to skip", "--exclude"),
    "compression": Setting("true, false or a filter program", "--compression"),
    "keep_carrier": Setting("true: leave the carrier VM running afterwards", "-x/--keep-carrier"),
    "retries": Setting("extra attempts after a temporary or engine failure, 0..10", "--retries"),
    "retry_delay": Setting("seconds between attempts, 0..86400", "--retry-delay"),
    "verify": Setting("true: qvm-backup-restore --verify-only right after", "--verify"),
    "drill_max_age": Setting("hours: status fails when the job's last restore drill is older"
                             " (or missing); omit to not require drills", None),
    "answer_timeout": Setting("seconds to wait for each answer through the carrier, 1..86400"
                              " (check: more per GiB)", None),
    "keep": Setting("retention policy the server's prune applies: {daily: N, weekly: N,"
                    " monthly: N, yearly: N}", None),
    "hooks": Setting("monitoring: on_start/on_success/on_failure commands (lists of words),"
                     " ping_url and ping_vm", None),
}


@dataclass(frozen=True)
class Job:
    """One fully resolved backup job (name '' for a job from the command line)."""

    name: str
    carrier: str
    prefix: str
    passphrase_file: Path | None = None
    passphrase_vm: str | None = None
    vms: list[str] | None = None
    exclude: list[str] = field(default_factory=list)
    compression: bool | str = True
    keep_carrier: bool = False
    retries: int = 0
    retry_delay: int = 60
    verify: bool = False
    answer_timeout: int = 300
    drill_max_age: float | None = None
    keep: names.RetentionPolicy | None = None
    hooks: Hooks = field(default_factory=lambda: Hooks())


@dataclass(frozen=True)
class Hooks:
    """A job's monitoring hooks: commands (argv lists, run in dom0 without a
    shell) per event, and a Healthchecks-style URL pinged from a networked VM."""

    commands: dict[str, list[str]] = field(default_factory=dict)
    ping_url: str | None = None
    ping_vm: str | None = None  # None: the job's carrier


@dataclass(frozen=True)
class PassphraseSource:
    """Where the backup passphrase comes from: a file, or a VM's service."""

    file: Path | None = None
    vm: str | None = None


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a job: the setting it is about (None: the job as a
    whole) and what is wrong and what to do. TEXT may name other settings as
    `$key`; they are filled in with the names the reader used."""

    key: str | None
    text: str


@dataclass(frozen=True)
class ConfigFile:
    """A job file read and parsed: its raw jobs and the line of every key."""

    path: Path
    jobs: dict[str, Any]
    lines: dict[tuple[str, ...], int]


def is_vm_name(value: object) -> bool:
    """Given anything, return whether it can be a Qubes VM name."""
    return isinstance(value, str) and VM_NAME.fullmatch(value) is not None


def prefix_problem(prefix: object) -> str | None:
    """Given a backup name PREFIX, return what is wrong with it, or None."""
    if not isinstance(prefix, str) or not prefix:
        return "required: " + SETTINGS["prefix"].meaning.removesuffix(" (required)")
    segments = prefix.split("/")
    # fullmatch, never match: '$' would let a trailing newline through, and a
    # newline in destination_path would end the line qubes.Backup reads.
    if not all(PREFIX_SEGMENT.fullmatch(segment) for segment in segments):
        return ("invalid prefix: use letters, digits, '.', '_', '-' (segments start with a"
                " letter or digit, '/' separates segments)")
    if len(segments) >= wire.MAX_NAME_DEPTH or \
            len(prefix) + names.TIMESTAMP_SUFFIX_LENGTH > wire.MAX_NAME_LENGTH:
        limit = wire.MAX_NAME_LENGTH - names.TIMESTAMP_SUFFIX_LENGTH
        return f"prefix too long: at most {limit} characters in {wire.MAX_NAME_DEPTH - 1}" \
               " segments"
    return None


# --- validation (the one place) ----------------------------------------------
def _vm_list(value: Any, key: str, problems: list[Problem]) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(is_vm_name(item) for item in value):
        problems.append(Problem(key, "expected a list of VM names"))
        return None
    return list(value)


def _boolean(value: Any, key: str, problems: list[Problem]) -> bool:
    if not isinstance(value, bool):
        problems.append(Problem(key, "expected true or false"))
        return False
    return value


def _integer(value: Any, key: str, low: int, high: int, problems: list[Problem]) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        problems.append(Problem(key, f"expected an integer from {low} to {high}"))
        return low
    return value


def _policy(value: Any, problems: list[Problem]) -> names.RetentionPolicy | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        problems.append(Problem("keep", "expected a mapping like {daily: 7, weekly: 4,"
                                        " monthly: 12}"))
        return None
    rules = names.RETENTION_PERIODS
    found = [Problem(f"keep.{key}", f"unknown rule (known: {', '.join(rules)})")
             for key in value if key not in rules]
    for key in rules:
        count = value.get(key, 0)
        if not isinstance(count, int) or isinstance(count, bool) \
                or not 0 <= count <= names.MAX_KEEP:
            found.append(Problem(f"keep.{key}", f"expected an integer from 0 to"
                                                f" {names.MAX_KEEP}"))
    if found:
        problems.extend(found)
        return None
    try:
        return names.RetentionPolicy(**{key: value.get(key, 0) for key in rules})
    except names.InvalidPolicy:
        problems.append(Problem("keep", "keeps nothing: give at least one count above 0, or"
                                        " leave keep out to forbid any prune"))
        return None


def _hooks(value: Any, problems: list[Problem]) -> Hooks:
    if value is None:
        return Hooks()
    if not isinstance(value, dict):
        problems.append(Problem("hooks", "expected a mapping of " + ", ".join(HOOK_KEYS)))
        return Hooks()
    found = [Problem(f"hooks.{key}", f"unknown hook (known: {', '.join(HOOK_KEYS)})")
             for key in value if key not in HOOK_KEYS]
    commands: dict[str, list[str]] = {}
    for event in HOOK_EVENTS:
        command = value.get(event)
        if command is None:
            continue
        if not isinstance(command, list) or not 0 < len(command) <= MAX_HOOK_WORDS or not all(
                isinstance(word, str) and word and "\0" not in word for word in command):
            found.append(Problem(f"hooks.{event}", "expected a command as a list of words,"
                                                   " e.g. [/usr/local/bin/report, failed]"))
        else:
            commands[event] = list(command)
    url = value.get("ping_url")
    if url is not None and not (isinstance(url, str) and URL.fullmatch(url)):
        found.append(Problem("hooks.ping_url", "expected an http:// or https:// URL without"
                                               " spaces"))
    ping_vm = value.get("ping_vm")
    if ping_vm is not None and not is_vm_name(ping_vm):
        found.append(Problem("hooks.ping_vm", "expected the name of a networked VM"))
    problems.extend(found)
    return Hooks(commands=commands, ping_url=url, ping_vm=ping_vm)


def build_job(name: str, values: dict[str, Any]) -> tuple[Job | None, list[Problem]]:
    """Given a job NAME ('' for the command line) and its merged raw settings,
    return (the Job, []) or (None, every problem found)."""
    problems = [Problem(key, "unknown setting (known: " + ", ".join(SETTINGS) + ")")
                for key in sorted(set(values) - set(SETTINGS), key=str)]
    carrier: Any = values.get("carrier")
    if not is_vm_name(carrier):
        problems.append(Problem("carrier", "required: the carrier VM's name"
                                if carrier is None else "not a VM name"))
    prefix: Any = values.get("prefix")
    wrong_prefix = prefix_problem(prefix)
    if wrong_prefix:
        problems.append(Problem("prefix", wrong_prefix))
    passphrase_file = values.get("passphrase_file")
    passphrase_vm = values.get("passphrase_vm")
    if (passphrase_file is None) == (passphrase_vm is None):
        problems.append(Problem(None, "give exactly one of $passphrase_file and"
                                      " $passphrase_vm"))
    if passphrase_file is not None and not (isinstance(passphrase_file, str) and passphrase_file):
        problems.append(Problem("passphrase_file", "expected a path"))
    if passphrase_vm is not None and not is_vm_name(passphrase_vm):
        problems.append(Problem("passphrase_vm", "expected a VM name"))
    compression = values.get("compression", True)
    if isinstance(compression, str) and compression in NEVER_RESTORABLE:
        problems.append(Problem("compression", f"{compression}: "
                                f"{NEVER_RESTORABLE[compression]}; use gzip, bzip2 or xz"))
    elif not isinstance(compression, bool) and compression not in COMPRESSION_FILTERS:
        problems.append(Problem("compression", "expected true, false or one of "
                                + ", ".join(sorted(COMPRESSION_FILTERS))))
    vms = _vm_list(values.get("vms"), "vms", problems)
    if vms == []:
        # Qubes reads an empty include as "no VMs": the backup would hold
        # nothing but qubes.xml while the log names the include_in_backups VMs.
        problems.append(Problem("vms", "an empty list backs up no VM: name VMs, or leave vms"
                                       " out for every VM with include_in_backups"))
    exclude = _vm_list(values.get("exclude", []), "exclude", problems) or []
    keep = _boolean(values.get("keep_carrier", False), "keep_carrier", problems)
    verify = _boolean(values.get("verify", False), "verify", problems)
    retries = _integer(values.get("retries", 0), "retries", 0, 10, problems)
    delay = _integer(values.get("retry_delay", 60), "retry_delay", 0, 86400, problems)
    answer = _integer(values.get("answer_timeout", 300), "answer_timeout", 1, 86400, problems)
    drill_max_age = values.get("drill_max_age")
    if drill_max_age is not None and (isinstance(drill_max_age, bool) or not isinstance(
            drill_max_age, int | float) or not 1 <= drill_max_age <= 87600):
        problems.append(Problem("drill_max_age", "expected hours from 1 to 87600, e.g. 192 for"
                                                 " eight days"))
        drill_max_age = None
    keep_policy = _policy(values.get("keep"), problems)
    hooks = _hooks(values.get("hooks"), problems)
    if problems:
        return None, problems
    return Job(
        name=name, carrier=carrier, prefix=prefix,
        passphrase_file=Path(os.path.expanduser(passphrase_file)) if passphrase_file else None,
        passphrase_vm=passphrase_vm, vms=vms, exclude=exclude, compression=compression,
        keep_carrier=keep, retries=retries, retry_delay=delay, verify=verify,
        answer_timeout=answer, drill_max_age=drill_max_age, keep=keep_policy, hooks=hooks,
    ), []


# --- the job file --------------------------------------------------------------
def default_config_path() -> Path | None:
    """Return the config file in use when no --config is given, or None."""
    for candidate in (USER_CONFIG.expanduser(), SYSTEM_CONFIG):
        if candidate.exists():
            return candidate
    return None


def _key_lines(node: yaml.Node, path: tuple[str, ...], lines: dict[tuple[str, ...], int],
               duplicates: list[tuple[int, str]]) -> None:
    """Given a composed YAML NODE at PATH, record the line of every mapping key
    down to jobs.NAME.KEY.SUBKEY, and each key given twice."""
    if not isinstance(node, yaml.MappingNode) or len(path) > 3:
        return
    for key_node, value_node in node.value:
        here = (*path, str(key_node.value))
        line = key_node.start_mark.line + 1
        if here in lines:
            duplicates.append((line, f"{'.'.join(here)}: given twice (first on line"
                                      f" {lines[here]}): keep one"))
            continue
        lines[here] = line
        _key_lines(value_node, here, lines, duplicates)


def read_config(path: Path) -> ConfigFile:
    """Given a job file PATH, return it parsed; raise ConfigError (every
    problem, each with file and line) if it is unreadable, too big, not YAML,
    or not a mapping holding only a `jobs` mapping."""
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
    duplicates: list[tuple[int, str]] = []
    if node is not None:
        _key_lines(node, (), lines, duplicates)
    if not isinstance(data, dict) or not isinstance(data.get("jobs"), dict):
        raise ConfigError(f"{path}: expected a mapping with a 'jobs' mapping at the top, like"
                          " the example file")
    problems = [f"{path}:{lines.get((str(key),), 1)}: {key}: unknown key (only 'jobs' is"
                " allowed at the top)" for key in data if key != "jobs"]
    problems += [f"{path}:{line}: {text}" for line, text in duplicates]
    if problems:
        raise ConfigError(problems)
    return ConfigFile(path=path, jobs={str(name): job for name, job in data["jobs"].items()},
                      lines=lines)


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


def file_job(config: ConfigFile, name: str, overrides: dict[str, Any] | None = None) -> Job:
    """Given the job file, a job NAME and option values that replace the
    file's, return the job; raise ConfigError naming every problem where its
    value came from."""
    if name not in config.jobs:
        known = ", ".join(sorted(config.jobs)) or "none"
        raise ConfigError(f"{config.path}: no job named '{name}' (jobs: {known})")
    overrides = overrides or {}
    raw = config.jobs[name]
    problems: list[str] = []
    if not JOB_NAME.fullmatch(name):
        problems.append(file_problem(config, name, Problem(
            None, "job names use letters, digits, '_' and '-' (at most 40)")))
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


def all_jobs(config: ConfigFile) -> tuple[dict[str, Job], dict[str, list[str]]]:
    """Given the job file, return (the valid jobs, the problems of each other job)."""
    jobs: dict[str, Job] = {}
    broken: dict[str, list[str]] = {}
    for name in config.jobs:
        try:
            jobs[name] = file_job(config, name)
        except ConfigError as error:
            broken[name] = error.problems
    return jobs, broken


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
    values: dict[str, Any] = {
        "prefix": args.prefix, "carrier": args.carrier,
        "passphrase_file": str(args.passphrase_file) if args.passphrase_file else None,
        "passphrase_vm": args.passphrase_vm, "vms": args.vms or None,
        "exclude": args.exclude, "keep_carrier": args.keep_carrier, "retries": args.retries,
        "retry_delay": args.retry_delay, "verify": args.verify,
    }
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


@dataclass(frozen=True)
class Target:
    """Where list/check/verify/restore go: the carrier, the passphrase source,
    and how long to wait for each answer through the carrier."""

    carrier: str
    passphrase: PassphraseSource
    answer_timeout: float


def carrier_and_passphrase(args: argparse.Namespace, config_path: Path | None) -> Target:
    """Given list/check/verify/restore arguments, return the Target: carrier and
    passphrase source from the options, then the job, then the environment."""
    job = file_job(open_config(config_path), args.job) if args.job else None
    carrier = args.carrier or (job.carrier if job else None) or os.environ.get(ENV_CARRIER)
    if not carrier or not is_vm_name(carrier):
        raise UsageError(f"give the carrier VM with -t VM, --job NAME or ${ENV_CARRIER}")
    passfile = getattr(args, "passphrase_file", None)
    passvm = getattr(args, "passphrase_vm", None)
    if passvm is not None and not is_vm_name(passvm):
        raise UsageError("--passphrase-vm: not a VM name")
    if passfile is None and passvm is None and job is not None:
        passfile, passvm = job.passphrase_file, job.passphrase_vm
    if passfile is None and passvm is None and os.environ.get(ENV_PASSFILE):
        passfile = Path(os.environ[ENV_PASSFILE])
    return Target(carrier, PassphraseSource(file=passfile, vm=passvm),
                  job.answer_timeout if job else 300)


def need_passphrase(source: PassphraseSource) -> PassphraseSource:
    """Given a passphrase source, return it; raise UsageError if it is empty or double."""
    if (source.file is None) == (source.vm is None):
        raise UsageError(f"give exactly one of -p FILE (or ${ENV_PASSFILE}), --passphrase-vm VM"
                         " or --job NAME")
    return source
