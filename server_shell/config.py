"""The server's configuration: storage root, reserve, quota, syslog socket.

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
DEFAULT_LOG_SOCKET = "/dev/log"
STORAGE_KEYS = frozenset({"root", "reserve", "quota"})
LOGGING_KEYS = frozenset({"socket"})
SIZE_PATTERN = re.compile(r"(\d+)\s*([KMGT]?)i?B?", re.IGNORECASE)
SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
ACCOUNT_PLACEHOLDER = "{account}"


@dataclass(frozen=True)
class ShellConfig:
    """The settings that apply to one account. root None = the account's home."""

    root: str | None
    reserve: int
    quota: int | None
    log_socket: str


def parse_size(text: str) -> int:
    """Given a size such as `512M`, `1G`, `1GiB` or `4096`, return bytes;
    raise ValueError if it is not a whole number with an optional K/M/G/T suffix."""
    match = SIZE_PATTERN.fullmatch(text.strip())
    if not match:
        raise ValueError("not a size (use a number with an optional K, M, G or T suffix)")
    return int(match.group(1)) * SIZE_UNITS[match.group(2).upper()]


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
    log_socket = DEFAULT_LOG_SOCKET
    if parser.has_section("logging"):
        configured = parser["logging"].get("socket", "").strip()
        log_socket = configured or DEFAULT_LOG_SOCKET
    return ShellConfig(root=root, reserve=reserve, quota=quota, log_socket=log_socket)


def load_config(path: str, account: str) -> ShellConfig:
    """Given the config path and the account name, return that account's
    settings (defaults if the file is missing); raise ConfigError if invalid."""
    return parse_config(read_config_text(path), account, path)
