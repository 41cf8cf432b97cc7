"""The job settings, each declared once in `SETTINGS`: its type, default,
range and meaning, and the `qbackup backup` option that sets it.

Everything else derives from the table: `check_values` checks a job's values
wherever they came from (dom0/config.py reads them from the job file, the
command line and the environment), `Job`'s defaults are the table's, the
options' `--help` and dom0/README.md's table show `describe` (held by
tests/dom0/test_docs.py), and tests/dom0/test_settings_table.py holds
dom0/qbackup.yaml.example to the table.

A setting's type is a function: given the setting and a raw value (its
default when the key is left out), it returns the value converted and adds a
Problem, naming the setting, for each thing wrong with it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dom0.compression import RESTORABLE_FILTERS
from qbackup_protocol import carrier_service, names, wire

# Qubes' own rule for VM names; anything else cannot be a VM.
VM_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,30}")
# One prefix segment: starts alphanumeric (never '.', '-' or '_', so never a
# hidden file, an option or '..'); the rest adds only '.', '_', '-'. Stricter
# than the protocol's name rules, which every full name must meet as well.
PREFIX_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# No release restores lz4, so a job asking for it is refused before any backup
# is made (dom0/compression.py holds the filters that restore, and why).
NEVER_RESTORABLE = {"lz4": "no Qubes release can restore lz4 backups"}
HOOK_EVENTS = ("on_start", "on_success", "on_failure")
HOOK_KEYS = (*HOOK_EVENTS, "ping_url", "ping_vm")
URL = re.compile(r"https?://[!-~]{1,1000}")
MAX_HOOK_WORDS = 64


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a job: the setting it is about (None: the job as a
    whole) and what is wrong and what to do. TEXT may name other settings as
    `$key`; they are filled in with the names the reader used."""

    key: str | None
    text: str


@dataclass(frozen=True)
class Hooks:
    """A job's monitoring hooks: commands (argv lists, run in dom0 without a
    shell) per event, and a Healthchecks-style URL pinged from a networked VM."""

    commands: dict[str, list[str]] = field(default_factory=dict)
    ping_url: str | None = None
    ping_vm: str | None = None  # None: the job's carrier


@dataclass(frozen=True)
class Range:
    """The values a number may take: LOW to HIGH, both included, in UNIT
    (e.g. 'h'; 's': seconds, shown as durations like 5m; '': a plain number)."""

    low: int
    high: int
    unit: str = ""

    def show(self, value: float) -> str:
        """Given a value in the range's unit, return it as a reader writes it."""
        return names.show_age(value) if self.unit == "s" else f"{value}{self.unit}"

    def __str__(self) -> str:
        return f"{self.show(self.low)} to {self.show(self.high)}"


Check = Callable[["Setting", Any, list[Problem]], Any]


@dataclass(frozen=True)
class Setting:
    """One job setting: its KEY; its TYPE (the function that checks and
    converts a value); what it MEANS; its DEFAULT when left out (None:
    nothing), unless it is REQUIRED; the RANGE of a number or the CHOICES of a
    name; and the `qbackup backup` OPTION that sets it (None: only the job
    file can)."""

    key: str
    type: Check
    means: str
    default: Any = None
    required: bool = False
    range: Range | None = None
    choices: tuple[str, ...] = ()
    option: str | None = None


@dataclass(frozen=True)
class Checked:
    """A job's settings checked: each one's value, and every problem found."""

    values: dict[str, Any]
    problems: list[Problem]


def is_vm_name(value: object) -> bool:
    """Given anything, return whether it can be a Qubes VM name."""
    return isinstance(value, str) and VM_NAME.fullmatch(value) is not None


def prefix_problem(prefix: object) -> str | None:
    """Given a backup name PREFIX, return what is wrong with it, or None."""
    if not isinstance(prefix, str) or not prefix:
        return f"required: {SETTINGS['prefix'].means}"
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


# --- the types of settings -------------------------------------------------------
def vm_name(setting: Setting, value: Any, problems: list[Problem]) -> str | None:
    """A VM name (null: none)."""
    if value is not None and not is_vm_name(value):
        problems.append(Problem(setting.key, "not a VM name"))
        return None
    return value


def vm_names(setting: Setting, value: Any, problems: list[Problem]) -> list[str] | None:
    """A list of VM names (null: the default)."""
    if value is None:
        return None if setting.default is None else list(setting.default)
    if not isinstance(value, list | tuple) or not all(is_vm_name(item) for item in value):
        problems.append(Problem(setting.key, "expected a list of VM names"))
        return None
    return list(value)


def vm_selection(setting: Setting, value: Any, problems: list[Problem]) -> list[str] | None:
    """The VMs to back up (null: every VM with include_in_backups), never none."""
    vms = vm_names(setting, value, problems)
    if vms == []:
        # Qubes reads an empty include as "no VMs": the backup would hold
        # nothing but qubes.xml while the log names the include_in_backups VMs.
        problems.append(Problem(setting.key, "an empty list backs up no VM: name VMs, or leave"
                                             " vms out for every VM with include_in_backups"))
    return vms


def destination_names(setting: Setting, value: Any,
                      problems: list[Problem]) -> tuple[str, ...] | None:
    """A list of the carrier's destinations (null: every one the carrier has)."""
    if value is None:
        return None
    try:
        if not isinstance(value, list | tuple):
            raise wire.ProtocolError("expected a list")
        return carrier_service.check_destinations(value)
    except wire.ProtocolError as error:
        problems.append(Problem(setting.key, f"expected a list of destination names, e.g."
                                             f" [home, offsite]: {error}"))
        return None


def file_path(setting: Setting, value: Any, problems: list[Problem]) -> Path | None:
    """A file's path, '~' expanded (null: none)."""
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        problems.append(Problem(setting.key, "expected a path"))
        return None
    return Path(os.path.expanduser(value))


def backup_prefix(setting: Setting, value: Any, problems: list[Problem]) -> str:
    """A backup name prefix (prefix_problem says what is refused)."""
    wrong = prefix_problem(value)
    if wrong:
        problems.append(Problem(setting.key, wrong))
    return value


def compression_filter(setting: Setting, value: Any, problems: list[Problem]) -> bool | str:
    """True, false or one of the setting's choices of filter."""
    if isinstance(value, str) and value in NEVER_RESTORABLE:
        problems.append(Problem(setting.key, f"{value}: {NEVER_RESTORABLE[value]}; use gzip,"
                                             " bzip2 or xz"))
    elif not isinstance(value, bool) and value not in setting.choices:
        problems.append(Problem(setting.key, "expected true, false or one of "
                                + ", ".join(setting.choices)))
    return value


def boolean(setting: Setting, value: Any, problems: list[Problem]) -> bool:
    """True or false."""
    if not isinstance(value, bool):
        problems.append(Problem(setting.key, "expected true or false"))
        return False
    return value


def in_range(setting: Setting, value: Any) -> bool:
    """Given a setting and a value, return whether it is a number in the setting's range."""
    return isinstance(value, int | float) and not isinstance(value, bool) and (
        setting.range is None or setting.range.low <= value <= setting.range.high)


def integer(setting: Setting, value: Any, problems: list[Problem]) -> int:
    """An integer in the setting's range."""
    if not isinstance(value, int) or not in_range(setting, value):
        problems.append(Problem(setting.key, f"expected an integer from {setting.range}"))
        return 0
    return value


def duration(setting: Setting, value: Any, problems: list[Problem]) -> float:
    """A duration, in seconds: a number and a unit (`90s`, `5m`) or a bare
    number of seconds (as job files always wrote it), in the setting's range."""
    try:
        seconds = names.parse_duration(value, "s") if isinstance(value, str) else value
    except ValueError as error:
        problems.append(Problem(setting.key, str(error)))
        return 0
    if not in_range(setting, seconds):
        problems.append(Problem(setting.key, f"expected a duration from {setting.range}, e.g."
                                             " 90s or 5m"))
        return 0
    return float(seconds)


def age(setting: Setting, value: Any, problems: list[Problem]) -> float | None:
    """An age, in seconds: a number and a unit (`36h`, `8d`) or a bare number
    of hours, in the setting's range of hours (null: none)."""
    if value is None:
        return None
    try:
        hours = names.parse_age(value) / 3600 if isinstance(value, str) else value
    except ValueError as error:
        problems.append(Problem(setting.key, str(error)))
        return None
    if not in_range(setting, hours):
        problems.append(Problem(setting.key, f"expected an age from {setting.range}, e.g. 8d"))
        return None
    return hours * 3600


def retention_policy(setting: Setting, value: Any,
                     problems: list[Problem]) -> names.RetentionPolicy | None:
    """A count per retention period (null: no policy)."""
    if value is None:
        return None
    if not isinstance(value, dict):
        problems.append(Problem(setting.key, "expected a mapping like {daily: 7, weekly: 4,"
                                             " monthly: 12}"))
        return None
    periods = names.RETENTION_PERIODS
    found = [Problem(f"{setting.key}.{key}", f"unknown rule (known: {', '.join(periods)})")
             for key in value if key not in periods]
    for period in periods:
        count = value.get(period, 0)
        if not isinstance(count, int) or isinstance(count, bool) \
                or not 0 <= count <= names.MAX_KEEP:
            found.append(Problem(f"{setting.key}.{period}", f"expected an integer from 0 to"
                                                            f" {names.MAX_KEEP}"))
    if found:
        problems.extend(found)
        return None
    try:
        return names.RetentionPolicy(**{period: value.get(period, 0) for period in periods})
    except names.InvalidPolicy:
        problems.append(Problem(setting.key, "keeps nothing: give at least one count above 0,"
                                             " or leave keep out to forbid any prune"))
        return None


def monitoring_hooks(setting: Setting, value: Any, problems: list[Problem]) -> Hooks:
    """Commands per event and a URL to ping (null: none)."""
    if value is None:
        return Hooks()
    if not isinstance(value, dict):
        problems.append(Problem(setting.key, "expected a mapping of " + ", ".join(HOOK_KEYS)))
        return Hooks()
    found = [Problem(f"{setting.key}.{key}", f"unknown hook (known: {', '.join(HOOK_KEYS)})")
             for key in value if key not in HOOK_KEYS]
    commands: dict[str, list[str]] = {}
    for event in HOOK_EVENTS:
        command = value.get(event)
        if command is None:
            continue
        if not isinstance(command, list) or not 0 < len(command) <= MAX_HOOK_WORDS or not all(
                isinstance(word, str) and word and "\0" not in word for word in command):
            found.append(Problem(f"{setting.key}.{event}", "expected a command as a list of"
                                 " words, e.g. [/usr/local/bin/report, failed]"))
        else:
            commands[event] = list(command)
    url = value.get("ping_url")
    if url is not None and not (isinstance(url, str) and URL.fullmatch(url)):
        found.append(Problem(f"{setting.key}.ping_url", "expected an http:// or https:// URL"
                                                        " without spaces"))
    ping_vm = value.get("ping_vm")
    if ping_vm is not None and not is_vm_name(ping_vm):
        found.append(Problem(f"{setting.key}.ping_vm", "expected the name of a networked VM"))
    problems.extend(found)
    return Hooks(commands=commands, ping_url=url, ping_vm=ping_vm)


# --- the table -------------------------------------------------------------------
SETTINGS: dict[str, Setting] = {setting.key: setting for setting in (
    Setting("carrier", vm_name, "the carrier VM's name", required=True,
            option="-t/--carrier"),
    Setting("prefix", backup_prefix, "backup names are PREFIX-YYYYmmddTHHMMSSZ",
            required=True, option="-f/--prefix"),
    Setting("destinations", destination_names, "the carrier's destinations (servers in its"
            " carrier.yaml) to store each backup on, from one pass; omit for all it has"),
    Setting("passphrase_file", file_path, "path of the passphrase file, mode 0600",
            option="-p/--passphrase-file"),
    Setting("passphrase_vm", vm_name, "VM answering qubes.BackupPassphrase (instead of a"
            " file)", option="--passphrase-vm"),
    Setting("vms", vm_selection, "list of VMs to back up; omit for every VM with"
            " include_in_backups", option="the VM arguments"),
    Setting("exclude", vm_names, "list of VMs to skip", default=(), option="--exclude"),
    Setting("compression", compression_filter, "true, false or a filter program",
            default=True, choices=tuple(sorted(RESTORABLE_FILTERS)), option="--compression"),
    Setting("keep_carrier", boolean, "true: leave the carrier VM running afterwards",
            default=False, option="-x/--keep-carrier"),
    Setting("retries", integer, "extra attempts after a temporary or engine failure",
            default=0, range=Range(0, 10), option="--retries"),
    Setting("retry_delay", duration, "time between attempts", default=60,
            range=Range(0, 86400, "s"), option="--retry-delay"),
    Setting("verify", boolean, "true: qvm-backup-restore --verify-only right after",
            default=False, option="--verify"),
    Setting("drill_max_age", age, "status fails when the job's last restore drill is older"
            " than this AGE (or missing); omit to not require drills",
            range=Range(1, 87600, "h")),
    Setting("answer_timeout", duration, "time to wait for each answer through the"
            " carrier; check gets more per GiB", default=300, range=Range(1, 86400, "s")),
    Setting("keep", retention_policy, "retention policy the server's prune applies: {"
            + ", ".join(f"{period}: N" for period in names.RETENTION_PERIODS) + "}"),
    Setting("hooks", monitoring_hooks, "monitoring: " + "/".join(HOOK_EVENTS)
            + " commands (lists of words), ping_url and ping_vm"),
)}
# The one rule about two settings together.
ONE_PASSPHRASE = Problem(None, "give exactly one of $passphrase_file and $passphrase_vm")


def default(key: str) -> Any:
    """Given a setting's KEY, return its default (for `Job`'s fields)."""
    return SETTINGS[key].default


def facts(setting: Setting) -> str:
    """Given a setting, return what the table says of it besides its meaning,
    e.g. 'required' or '1 to 5; default 2' ('' if nothing)."""
    found = ["required"] if setting.required else []
    if setting.choices:
        found.append("one of " + ", ".join(setting.choices))
    if setting.range:
        found.append(str(setting.range))
    if setting.range and setting.range.unit == "s":
        found.append("a bare number is seconds")
    if isinstance(setting.default, bool):
        found.append(f"default {str(setting.default).lower()}")  # as YAML writes it
    elif setting.range and setting.default is not None:
        found.append(f"default {setting.range.show(setting.default)}")
    elif isinstance(setting.default, int | str):
        found.append(f"default {setting.default}")
    return "; ".join(found)


def describe(setting: Setting) -> str:
    """Given a setting, return its meaning and facts, as dom0/README.md's
    table and the options' --help show them."""
    known = facts(setting)
    return f"{setting.means} ({known})" if known else setting.means


def one_passphrase(passphrase_file: object, passphrase_vm: object) -> bool:
    """Given the two passphrase sources (None: not given), return whether
    exactly one is given."""
    return (passphrase_file is None) != (passphrase_vm is None)


def check_value(key: str, value: Any) -> list[Problem]:
    """Given a setting's KEY and a raw VALUE, return what is wrong with it."""
    problems: list[Problem] = []
    SETTINGS[key].type(SETTINGS[key], value, problems)
    return problems


def check_values(raw: dict[str, Any]) -> Checked:
    """Given a job's merged raw settings, return each setting's value (its
    default where left out) and every problem found, each naming its setting."""
    problems = [Problem(key, "unknown setting (known: " + ", ".join(SETTINGS) + ")")
                for key in sorted(set(raw) - set(SETTINGS), key=str)]
    values: dict[str, Any] = {}
    for key, setting in SETTINGS.items():
        value = raw.get(key, setting.default)
        if value is None and setting.required:
            problems.append(Problem(key, f"required: {setting.means}"))
        else:
            values[key] = setting.type(setting, value, problems)
    if not one_passphrase(raw.get("passphrase_file"), raw.get("passphrase_vm")):
        problems.append(ONE_PASSPHRASE)
    return Checked(values, problems)
