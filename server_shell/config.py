"""The server's configuration: storage root, reserve, quota, the age at which
staged uploads count as abandoned, how long a put waits for data, syslog socket.

An INI file (configparser, no interpolation). A missing file means defaults.
`[storage]` sets the defaults for every account; `[account NAME]` overrides
them for one account; `[logging] socket` names the syslog socket.
"""

from __future__ import annotations

import configparser
import re
from dataclasses import dataclass

from .errors import ConfigError

DEFAULT_RESERVE = 1024**3  # keep 1 GiB free for the rest of the server
# dom0 commits seconds after its put ends; a staged upload a day old was abandoned.
DEFAULT_PENDING_MAX_AGE = 24 * 3600
# Shorter would let one put remove another client's upload before its commit.
MIN_PENDING_MAX_AGE = 3600
# A put whose client sends nothing for this long is abandoned: an idle
# session would otherwise hold the account's upload lock and memory forever.
DEFAULT_IDLE_TIMEOUT = 600
DEFAULT_LOG_SOCKET = "/dev/log"
STORAGE_KEYS = frozenset({"root", "reserve", "quota", "pending_max_age", "idle_timeout"})
LOGGING_KEYS = frozenset({"socket"})
SIZE_PATTERN = re.compile(r"(\d+)\s*([KMGT]?)i?B?", re.IGNORECASE)
SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
DURATION_PATTERN = re.compile(r"(\d+)\s*([smhd]?)", re.IGNORECASE)
DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
ACCOUNT_PLACEHOLDER = "{account}"


@dataclass(frozen=True)
class ShellConfig:
    """The settings that apply to one account. root None = the account's home."""

    root: str | None
    reserve: int
    quota: int | None
    log_socket: str
    pending_max_age: int = DEFAULT_PENDING_MAX_AGE  # seconds
    idle_timeout: int = DEFAULT_IDLE_TIMEOUT  # seconds


def parse_size(text: str) -> int:
    """Given a size such as `512M`, `1G`, `1GiB` or `4096`, return bytes;
    raise ValueError if it is not a whole number with an optional K/M/G/T suffix."""
    match = SIZE_PATTERN.fullmatch(text.strip())
    if not match:
        raise ValueError("not a size (use a number with an optional K, M, G or T suffix)")
    return int(match.group(1)) * SIZE_UNITS[match.group(2).upper()]


def parse_duration(text: str) -> int:
    """Given a duration such as `24h`, `90m`, `2d` or `86400`, return seconds;
    raise ValueError if it is not a whole number with an optional s/m/h/d suffix."""
    match = DURATION_PATTERN.fullmatch(text.strip())
    if not match:
        raise ValueError("not a duration (use a number with an optional s, m, h or d suffix)")
    return int(match.group(1)) * DURATION_UNITS[match.group(2).lower()]


def read_config_text(path: str) -> str:
    """Given the config path, return its text, or "" if the file does not exist;
    raise ConfigError if it exists but cannot be read."""
    try:
        with open(path, encoding="utf-8") as stream:
            return stream.read()
    except FileNotFoundError:
        return ""
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read {path}: {error.__class__.__name__}") from None


def parse_config(text: str, account: str, path: str = "config") -> ShellConfig:
    """Given the config TEXT and the account name, return that account's
    settings; raise ConfigError naming the first bad section/key found."""
    parser = configparser.ConfigParser(interpolation=None, default_section="\0none")
    try:
        parser.read_string(text, source=path)
    except configparser.Error as error:
        raise ConfigError(f"{path}: {error.message.splitlines()[0]}") from None
    for section in parser.sections():
        allowed = LOGGING_KEYS if section == "logging" else STORAGE_KEYS
        if section not in ("storage", "logging") and not section.startswith("account "):
            raise ConfigError(f"{path}: unknown section [{section}]")
        for key in parser[section]:
            if key not in allowed:
                raise ConfigError(f"{path}: unknown key '{key}' in [{section}]")
    settings: dict[str, str] = {}
    for section in ("storage", f"account {account}"):
        if parser.has_section(section):
            settings.update(parser[section])
    root = settings.get("root") or None
    if root is not None:
        root = root.replace(ACCOUNT_PLACEHOLDER, account)
        if not root.startswith("/"):
            raise ConfigError(f"{path}: root must be an absolute path")
    try:
        reserve = parse_size(settings["reserve"]) if "reserve" in settings else DEFAULT_RESERVE
        quota_text = settings.get("quota", "").strip()
        quota = parse_size(quota_text) if quota_text and quota_text != "none" else None
    except ValueError as error:
        raise ConfigError(f"{path}: reserve/quota for account {account}: {error}") from None
    pending_max_age = _pending_max_age(settings, account, path)
    idle_timeout = _idle_timeout(settings, account, path)
    log_socket = DEFAULT_LOG_SOCKET
    if parser.has_section("logging"):
        configured = parser["logging"].get("socket", "").strip()
        log_socket = configured or DEFAULT_LOG_SOCKET
    return ShellConfig(
        root=root,
        reserve=reserve,
        quota=quota,
        log_socket=log_socket,
        pending_max_age=pending_max_age,
        idle_timeout=idle_timeout,
    )


def _pending_max_age(settings: dict[str, str], account: str, path: str) -> int:
    """Given the merged storage settings, return pending_max_age in seconds;
    raise ConfigError if it is malformed or shorter than MIN_PENDING_MAX_AGE."""
    if "pending_max_age" not in settings:
        return DEFAULT_PENDING_MAX_AGE
    try:
        seconds = parse_duration(settings["pending_max_age"])
    except ValueError as error:
        raise ConfigError(f"{path}: pending_max_age for account {account}: {error}") from None
    # A put removes staged uploads older than this: too short, and it could
    # remove another backup's upload in the seconds before dom0 commits it.
    if seconds < MIN_PENDING_MAX_AGE:
        raise ConfigError(f"{path}: pending_max_age for account {account}: at least 1h")
    return seconds


def _idle_timeout(settings: dict[str, str], account: str, path: str) -> int:
    """Given the merged storage settings, return idle_timeout in seconds;
    raise ConfigError if it is malformed or zero."""
    if "idle_timeout" not in settings:
        return DEFAULT_IDLE_TIMEOUT
    try:
        seconds = parse_duration(settings["idle_timeout"])
    except ValueError as error:
        raise ConfigError(f"{path}: idle_timeout for account {account}: {error}") from None
    # Zero would abandon every put before its first byte could arrive.
    if seconds < 1:
        raise ConfigError(f"{path}: idle_timeout for account {account}: at least 1s")
    return seconds


def load_config(path: str, account: str) -> ShellConfig:
    """Given the config path and the account name, return that account's
    settings (defaults if the file is missing); raise ConfigError if invalid."""
    return parse_config(read_config_text(path), account, path)
