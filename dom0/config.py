"""Backup jobs: load /etc/qbackup/qbackup.yaml (or ~/.config/...), validate, merge flags.

Example file::

    jobs:
      daily:
        carrier: sys-backup          # the carrier VM (required)
        prefix: laptop/daily         # backup names: PREFIX-YYYYmmddTHHMMSSZ (required)
        passphrase_file: /home/user/.config/qbackup/passphrase   # 0600, or:
        # passphrase_vm: vault       # Qubes asks qubes.BackupPassphrase+PROFILE there
        vms: [work, personal]        # omit or null: every VM with include_in_backups
        exclude: [untrusted]
        compression: true            # true/false or gzip, bzip2, zstd, xz
        keep_carrier: false          # leave the carrier running afterwards
        retries: 2                   # extra attempts after a failed or unreachable run
        retry_delay: 300             # seconds between attempts
        verify: true                 # qvm-backup-restore --verify-only right after

Every problem is collected and reported at once, each naming the file, the key
and what is wrong (like borgmatic).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from dom0.errors import ConfigError, UsageError
from dom0.names import check_prefix

SYSTEM_CONFIG = Path("/etc/qbackup/qbackup.yaml")
USER_CONFIG = Path("~/.config/qbackup/qbackup.yaml")
MAX_CONFIG_BYTES = 1024 * 1024
# Qubes' own rule for VM names; anything else cannot be a VM.
VM_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,30}")
JOB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,39}")
COMPRESSION_FILTERS = frozenset({"gzip", "bzip2", "zstd", "xz", "pigz", "lz4"})
JOB_KEYS = {
    "carrier": "the carrier VM name",
    "prefix": "backup name prefix",
    "passphrase_file": "path of a 0600 passphrase file",
    "passphrase_vm": "VM that answers qubes.BackupPassphrase",
    "vms": "list of VM names (or null)",
    "exclude": "list of VM names",
    "compression": "true/false or a filter name",
    "keep_carrier": "true/false",
    "retries": "integer 0..10",
    "retry_delay": "seconds 0..86400",
    "verify": "true/false",
}


@dataclass(frozen=True)
class Job:
    """One fully resolved backup job."""

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


def is_vm_name(value: object) -> bool:
    """Given anything, return whether it can be a Qubes VM name."""
    return isinstance(value, str) and VM_NAME.fullmatch(value) is not None


def default_config_path() -> Path | None:
    """Return the config file in use when no --config is given, or None."""
    user = USER_CONFIG.expanduser()
    for candidate in (user, SYSTEM_CONFIG):
        if candidate.exists():
            return candidate
    return None


def read_config(path: Path) -> dict[str, Any]:
    """Given a config PATH, return its top-level mapping; raise ConfigError if
    it is unreadable, too big, not YAML or not a mapping with `jobs`."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as error:
        raise ConfigError(f"{path}: cannot read: {error.strerror}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES} bytes")
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(data, dict) or not isinstance(data.get("jobs"), dict):
        raise ConfigError(f"{path}: expected a mapping with a 'jobs' mapping at the top")
    unknown = sorted(str(key) for key in data if key != "jobs")
    if unknown:
        raise ConfigError(f"{path}: at '{unknown[0]}': unknown key (only 'jobs' is allowed)")
    return data


def _check_vm_list(value: Any, where: str, problems: list[str]) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(is_vm_name(item) for item in value):
        problems.append(f"at '{where}': expected a list of VM names")
        return None
    return list(value)


def _check_bool(value: Any, where: str, problems: list[str]) -> bool:
    if not isinstance(value, bool):
        problems.append(f"at '{where}': expected true or false")
        return False
    return value


def _check_int(value: Any, where: str, low: int, high: int, problems: list[str]) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        problems.append(f"at '{where}': expected an integer from {low} to {high}")
        return low
    return value


def validate_job(name: str, raw: Any, problems: list[str]) -> Job | None:
    """Given a job NAME and its raw mapping, return a Job, appending each problem
    (as "at 'jobs.NAME.KEY': ...") to PROBLEMS; None if it cannot be built."""
    where = f"jobs.{name}"
    if not JOB_NAME.fullmatch(name):
        problems.append(f"at '{where}': job names use letters, digits, '_' and '-'")
    if not isinstance(raw, dict):
        problems.append(f"at '{where}': expected a mapping of job settings")
        return None
    before = len(problems)
    for key in sorted(set(raw) - set(JOB_KEYS)):
        problems.append(f"at '{where}.{key}': unknown key (known: {', '.join(JOB_KEYS)})")
    carrier: Any = raw.get("carrier")
    if not is_vm_name(carrier):
        problems.append(f"at '{where}.carrier': required, expected {JOB_KEYS['carrier']}")
    prefix: Any = raw.get("prefix")
    try:
        check_prefix(prefix)
    except UsageError as error:
        problems.append(f"at '{where}.prefix': {error}")
    passphrase_file = raw.get("passphrase_file")
    passphrase_vm = raw.get("passphrase_vm")
    if (passphrase_file is None) == (passphrase_vm is None):
        problems.append(f"at '{where}': give exactly one of passphrase_file, passphrase_vm")
    if passphrase_file is not None and not (isinstance(passphrase_file, str) and passphrase_file):
        problems.append(f"at '{where}.passphrase_file': expected a path")
    if passphrase_vm is not None and not is_vm_name(passphrase_vm):
        problems.append(f"at '{where}.passphrase_vm': expected a VM name")
    compression = raw.get("compression", True)
    if not isinstance(compression, bool) and compression not in COMPRESSION_FILTERS:
        problems.append(
            f"at '{where}.compression': expected true, false or one of "
            f"{', '.join(sorted(COMPRESSION_FILTERS))}"
        )
    vms = _check_vm_list(raw.get("vms"), f"{where}.vms", problems)
    exclude = _check_vm_list(raw.get("exclude", []), f"{where}.exclude", problems) or []
    keep = _check_bool(raw.get("keep_carrier", False), f"{where}.keep_carrier", problems)
    verify = _check_bool(raw.get("verify", False), f"{where}.verify", problems)
    retries = _check_int(raw.get("retries", 0), f"{where}.retries", 0, 10, problems)
    delay = _check_int(raw.get("retry_delay", 60), f"{where}.retry_delay", 0, 86400, problems)
    if len(problems) != before:
        return None
    return Job(
        name=name,
        carrier=carrier,
        prefix=prefix,
        passphrase_file=Path(os.path.expanduser(passphrase_file)) if passphrase_file else None,
        passphrase_vm=passphrase_vm,
        vms=vms,
        exclude=exclude,
        compression=compression,
        keep_carrier=keep,
        retries=retries,
        retry_delay=delay,
        verify=verify,
    )


def load_jobs(path: Path) -> dict[str, Job]:
    """Given a config PATH, return every job by name; raise ConfigError listing
    every problem found, each prefixed with the file."""
    data = read_config(path)
    problems: list[str] = []
    jobs: dict[str, Job] = {}
    for name, raw in data["jobs"].items():
        job = validate_job(str(name), raw, problems)
        if job is not None:
            jobs[str(name)] = job
    if problems:
        raise ConfigError([f"{path}: {problem}" for problem in problems])
    return jobs


def find_job(path: Path | None, name: str) -> Job:
    """Given the config PATH (None: the default one) and a job NAME, return the
    job; raise ConfigError if there is no config or no such job."""
    path = path or default_config_path()
    if path is None:
        raise ConfigError(
            f"no configuration: create {USER_CONFIG} or {SYSTEM_CONFIG}, or give --config"
        )
    jobs = load_jobs(path)
    if name not in jobs:
        known = ", ".join(sorted(jobs)) or "none"
        raise ConfigError(f"{path}: no job named '{name}' (jobs: {known})")
    return jobs[name]


def override(job: Job, **changes: Any) -> Job:
    """Given a job and flag values (None = not given), return the job with the
    given ones applied."""
    return replace(job, **{key: value for key, value in changes.items() if value is not None})
