"""Load and validate the carrier's YAML configuration.

The file is ``~/.config/qbackup/carrier.yaml`` unless the environment names
another one in QBACKUP_CARRIER_CONFIG. The original tool's ``SSH_CONN=[user@]host``
environment variable still works: it supplies or overrides host and user.
Every key is documented in carrier.yaml.example.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from carrier_vm.errors import ConfigError

CONFIG_ENV = "QBACKUP_CARRIER_CONFIG"
SSH_CONN_ENV = "SSH_CONN"
DEFAULT_CONFIG_PATH = "~/.config/qbackup/carrier.yaml"
MAX_CONFIG_BYTES = 64 * 1024

# AES-GCM first: these CPUs have AES-NI and asyncssh's default (chacha20)
# costs ~40% of the throughput on such CPUs (measured; see docs/PERFORMANCE.md).
DEFAULT_CIPHERS = (
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "aes128-ctr",
    "chacha20-poly1305@openssh.com",
)

# A host name, IPv4 or bracket-less IPv6 address: no spaces, no shell or
# ssh-option syntax, nothing that could be mistaken for an option ('-').
HOST_PATTERN = re.compile(r"[A-Za-z0-9_.:%][A-Za-z0-9_.:%-]{0,252}")
USER_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
CIPHER_PATTERN = re.compile(r"[a-z0-9@.-]{1,64}")

# Unacknowledged data kept for resuming: at least two frames (one being
# sent, one being read); at most 1 GiB (it is memory).
MIN_RESUME_BUFFER = 2 * 1024 * 1024
MAX_RESUME_BUFFER = 1024**3

KNOWN_KEYS = frozenset(
    {
        "host",
        "port",
        "user",
        "identity_file",
        "known_hosts",
        "ssh_config",
        "connect_timeout",
        "keepalive_interval",
        "keepalive_count_max",
        "reply_timeout",
        "progress_timeout",
        "resume_window",
        "resume_buffer",
        "rate_limit",
        "ciphers",
    }
)


@dataclass(frozen=True)
class CarrierConfig:
    """Validated carrier settings. None means "let ~/.ssh/config or asyncssh decide"."""

    host: str
    known_hosts: Path
    port: int | None = None
    user: str | None = None
    identity_file: Path | None = None
    ssh_config: Path | None = None
    connect_timeout: float = 30.0
    keepalive_interval: float = 15.0
    keepalive_count_max: int = 3
    reply_timeout: float = 3600.0
    progress_timeout: float = 300.0
    resume_window: float = 900.0
    resume_buffer: int = 32 * 1024 * 1024
    rate_limit: int | None = None
    ciphers: tuple[str, ...] = field(default=DEFAULT_CIPHERS)
    source: str = ""


def config_path(environ: Mapping[str, str]) -> Path:
    """Given the environment, return the path of the config file to read."""
    return Path(os.path.expanduser(environ.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH))


def read_config_file(path: Path) -> dict[str, Any]:
    """Given the config file PATH, return its top-level mapping (empty if the
    file does not exist); raise ConfigError if it is unreadable or not a mapping."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        return {}
    except OSError as error:
        raise ConfigError(f"{path}: cannot read: {error.strerror}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES} bytes")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {str(error).splitlines()[0]}") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid YAML: nested too deeply") from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys to values")
    return value


def load_config(environ: Mapping[str, str] | None = None) -> CarrierConfig:
    """Given the environment (os.environ by default), return the validated
    config; raise ConfigError naming the file, the key and the problem."""
    environ = os.environ if environ is None else environ
    path = config_path(environ)
    values = read_config_file(path)
    return validate_config(values, str(path), environ.get(SSH_CONN_ENV))


def validate_config(values: dict[str, Any], source: str, ssh_conn: str | None) -> CarrierConfig:
    """Given the raw mapping from SOURCE and the SSH_CONN value, return the
    CarrierConfig; raise ConfigError listing every problem found."""
    problems: list[str] = []
    for key in sorted(set(values) - KNOWN_KEYS, key=str):
        problems.append(f"key '{key}': unknown key (see carrier.yaml.example)")
    checked: dict[str, Any] = {}
    if "known_hosts" in values and values["known_hosts"] is None:
        # null would mean "no host key checking" to asyncssh: never allowed.
        problems.append("key 'known_hosts': may not be null (host keys are always verified)")
    for key, check in _CHECKS.items():
        if key in values and values[key] is not None:
            try:
                checked[key] = check(values[key])
            except ValueError as error:
                problems.append(f"key '{key}': {error}")
    if ssh_conn:
        try:
            user, host = parse_ssh_conn(ssh_conn)
        except ValueError as error:
            problems.append(f"{SSH_CONN_ENV}: {error}")
        else:
            checked["host"] = host
            if user is not None:
                checked["user"] = user
    if "host" not in checked and not any(p.startswith("key 'host'") for p in problems):
        problems.append(f"key 'host': required (or set {SSH_CONN_ENV}=[user@]host)")
    if problems:
        raise ConfigError(f"{source}: " + "; ".join(problems))
    checked.setdefault("known_hosts", _expand_path("~/.ssh/known_hosts"))
    if "ssh_config" not in values:
        checked["ssh_config"] = _expand_path("~/.ssh/config")
    return CarrierConfig(source=source, **checked)


def parse_ssh_conn(text: str) -> tuple[str | None, str]:
    """Given SSH_CONN's value ``[user@]host``, return (user or None, host);
    raise ValueError if either part is malformed."""
    user, at, host = text.rpartition("@")
    if at and not USER_PATTERN.fullmatch(user):
        raise ValueError("user part must be [A-Za-z0-9_.-]")
    if not HOST_PATTERN.fullmatch(host):
        raise ValueError("expected [user@]host with a plain host name or address")
    return (user or None), host


def _check_host(value: Any) -> str:
    if not isinstance(value, str) or not HOST_PATTERN.fullmatch(value):
        raise ValueError("must be a plain host name or address")
    return value


def _check_user(value: Any) -> str:
    if not isinstance(value, str) or not USER_PATTERN.fullmatch(value):
        raise ValueError("must be an account name of [A-Za-z0-9_.-]")
    return value


def _check_port(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
        raise ValueError("must be an integer from 1 to 65535")
    return value


def _expand_path(value: Any) -> Path:
    if not isinstance(value, str) or not value:
        raise ValueError("must be a file path")
    return Path(os.path.expanduser(value))


def _check_known_hosts(value: Any) -> Path:
    # Host key checking can never be switched off: no null, no empty path.
    return _expand_path(value)


def _positive_number(low: float, high: float) -> Any:
    def check(value: Any) -> float:
        if (
            not isinstance(value, int | float)
            or isinstance(value, bool)
            or not low <= value <= high
        ):
            raise ValueError(f"must be a number of seconds from {low:g} to {high:g}")
        return float(value)

    return check


def _check_count(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 100:
        raise ValueError("must be an integer from 1 to 100")
    return value


def _check_rate(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1024:
        raise ValueError("must be an integer number of bytes per second, at least 1024")
    return value


def _check_buffer(value: Any) -> int:
    if (
        not isinstance(value, int)
        or isinstance(value, bool)
        or not MIN_RESUME_BUFFER <= value <= MAX_RESUME_BUFFER
    ):
        raise ValueError(
            f"must be a number of bytes from {MIN_RESUME_BUFFER} to {MAX_RESUME_BUFFER}"
        )
    return value


def _check_ciphers(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",")]
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(item, str) and CIPHER_PATTERN.fullmatch(item) for item in value)
    ):
        raise ValueError("must be a non-empty list of SSH cipher names")
    return tuple(value)


_CHECKS: dict[str, Any] = {
    "host": _check_host,
    "port": _check_port,
    "user": _check_user,
    "identity_file": _expand_path,
    "known_hosts": _check_known_hosts,
    "ssh_config": _expand_path,
    "connect_timeout": _positive_number(1, 600),
    "keepalive_interval": _positive_number(1, 600),
    "keepalive_count_max": _check_count,
    "reply_timeout": _positive_number(1, 7 * 24 * 3600),
    "progress_timeout": _positive_number(1, 24 * 3600),
    "resume_window": _positive_number(0, 7 * 24 * 3600),
    "resume_buffer": _check_buffer,
    "rate_limit": _check_rate,
    "ciphers": _check_ciphers,
}
