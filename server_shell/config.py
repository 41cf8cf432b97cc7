"""The shell's errors (one root, each with its ShellExit code) and its config.

Every error a client can see is a ShellError whose message is ONE line the
shell wrote itself: never anything the client sent. main() alone turns them
into exit codes. No class also inherits a builtin exception: an OSError is
never mistaken for a ShellError, nor the other way round.

The config is an INI file (no interpolation); a missing file means defaults.
`[storage]` sets every account's defaults, `[account NAME]` overrides them,
`[logging] socket` names the syslog socket. Every key is in KEYS below, with
its parser and its floor; qbackup-shell.conf.example documents each.
"""

import configparser
import re
from collections.abc import Callable
from dataclasses import dataclass

from qbackup_protocol.wire import ShellExit


class ShellError(Exception):
    """An error shown to the client as one line, ending the session with exit_code."""

    exit_code, outcome = ShellExit.SOFTWARE, "error"


class Refused(ShellError):
    exit_code, outcome = ShellExit.USAGE, "refused"  # not a protocol command, or a bad name


class BadStream(ShellError):
    exit_code, outcome = ShellExit.DATA, "bad-stream"  # truncated, malformed or mismatching


class NotFound(ShellError):
    exit_code, outcome = ShellExit.NO_SUCH_BACKUP, "missing"  # no backup / nothing staged


class Unavailable(ShellError):
    exit_code, outcome = ShellExit.UNAVAILABLE, "unavailable"  # space, inodes, busy, sessions


class Exists(ShellError):
    exit_code, outcome = ShellExit.EXISTS, "exists"  # backups are never replaced


class StorageError(ShellError):
    exit_code, outcome = ShellExit.IO, "io-error"


class Interrupted(ShellError):
    """The session was cut: EOF before the end frame, a signal, the idle
    timeout, a hung-up client. One code for a lost client (an upload's partial
    is kept), and never a data error (a SIGPIPE during `list` says nothing
    about data)."""

    exit_code, outcome = ShellExit.IO, "interrupted"


class NotAllowed(ShellError):
    exit_code, outcome = ShellExit.NO_PERMISSION, "not-allowed"  # login, admin verbs, root


class ConfigError(ShellError):
    exit_code, outcome = ShellExit.CONFIG, "bad-config"


SIZE_PATTERN = re.compile(r"(\d+)\s*([KMGT]?)i?B?", re.IGNORECASE)
SIZE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
DURATION_PATTERN = re.compile(r"(\d+)\s*([smhd]?)", re.IGNORECASE)
DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_size(text: str) -> int:
    """Given `512M`, `1G`, `1GiB` or `4096`, return bytes; raise ValueError otherwise."""
    match = SIZE_PATTERN.fullmatch(text.strip())
    if not match:
        raise ValueError("not a size (a number with an optional K, M, G or T suffix)")
    return int(match.group(1)) * SIZE_UNITS[match.group(2).upper()]


def parse_duration(text: str) -> int:
    """Given `24h`, `90m`, `2d` or `86400`, return seconds; raise ValueError otherwise."""
    match = DURATION_PATTERN.fullmatch(text.strip())
    if not match:
        raise ValueError("not a duration (a number with an optional s, m, h or d suffix)")
    return int(match.group(1)) * DURATION_UNITS[match.group(2).lower()]


# key: (parser, default, floor, why the floor). The floors exist because:
# a staged upload younger than 1h may still be committed; a zero idle
# timeout would end every session at once; a session cap of 0 or an fdatasync
# interval below one frame would stop or crawl every upload.
KEYS: dict[str, tuple[Callable[[str], int], int | None, int, str]] = {
    "reserve": (parse_size, 1024**3, 0, "0"),
    "quota": (parse_size, None, 0, "0"),
    "max_inodes": (parse_size, 100_000, 10, "10"),
    "max_sessions": (parse_size, 4, 1, "1"),
    "pending_max_age": (parse_duration, 24 * 3600, 3600, "1h"),
    "partial_max_age": (parse_duration, 3600, 60, "60s"),
    "idle_timeout": (parse_duration, 600, 1, "1s"),
    "sync_interval": (parse_size, 16 * 1024**2, 1024**2, "1M"),
}
DEFAULT_LOG_SOCKET = "/dev/log"


@dataclass(frozen=True)
class ShellConfig:
    """One account's settings; sizes in bytes, durations in seconds; root None = home."""

    root: str | None = None
    reserve: int = 1024**3
    quota: int | None = None
    max_inodes: int = 100_000
    max_sessions: int = 4
    pending_max_age: int = 24 * 3600
    partial_max_age: int = 3600
    idle_timeout: int = 600
    sync_interval: int = 16 * 1024**2
    log_socket: str = DEFAULT_LOG_SOCKET


def parse_config(text: str, account: str, path: str = "config") -> ShellConfig:
    """Given the config TEXT and an account name, return that account's
    settings; raise ConfigError naming the first bad section or key."""
    parser = configparser.ConfigParser(interpolation=None, default_section="\0none")
    try:
        parser.read_string(text, source=path)
    except configparser.Error as error:
        raise ConfigError(f"{path}: {error.message.splitlines()[0]}") from None
    for section in parser.sections():
        if section not in ("storage", "logging") and not section.startswith("account "):
            raise ConfigError(f"{path}: unknown section [{section}]")
        allowed = {"socket"} if section == "logging" else {"root", *KEYS}
        for key in parser[section]:
            if key not in allowed:
                raise ConfigError(f"{path}: unknown key '{key}' in [{section}]")
    settings: dict[str, str] = {}
    for section in ("storage", f"account {account}"):
        if parser.has_section(section):
            settings.update(parser[section])
    values: dict[str, int | None] = {}
    for key, (parse, default, floor, floor_text) in KEYS.items():
        text_value = settings.get(key, "").strip()
        if not text_value or (key == "quota" and text_value == "none"):
            values[key] = default
            continue
        try:
            values[key] = parse(text_value)
        except ValueError as error:
            raise ConfigError(f"{path}: {key} for account {account}: {error}") from None
        if values[key] < floor:  # type: ignore[operator]
            raise ConfigError(f"{path}: {key} for account {account}: at least {floor_text}")
    root = (settings.get("root") or "").strip().replace("{account}", account) or None
    if root is not None and not root.startswith("/"):
        raise ConfigError(f"{path}: root must be an absolute path")
    return ShellConfig(root=root, log_socket=parser.get("logging", "socket", fallback="").strip()
                       or DEFAULT_LOG_SOCKET, **values)  # type: ignore[arg-type]


def load_config(path: str, account: str) -> ShellConfig:
    """Given the config path and an account, return its settings (defaults
    if the file is missing); raise ConfigError if it is unreadable or invalid."""
    try:
        with open(path, encoding="utf-8") as stream:
            text = stream.read()
    except FileNotFoundError:
        text = ""
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read {path}: {error.__class__.__name__}") from None
    return parse_config(text, account, path)
