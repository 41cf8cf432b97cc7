"""The shell's errors (one root, each with its ShellExit code) and its config.

Every error a client can see is a ShellError whose message is ONE line the
shell wrote itself: never anything the client sent. main() alone turns them
into exit codes. No class also inherits a builtin exception: an OSError is
never mistaken for a ShellError, nor the other way round.

The config is an INI file (no interpolation); a missing file means defaults.
`[storage]` sets every account's defaults, `[account NAME]` overrides them,
`[logging] socket` names the syslog socket. ShellConfig declares every key
once (parser, default, floor, help); qbackup-shell.conf.example documents
each, and a test holds it to ShellConfig.
"""

import configparser
import re
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

from qbackup_protocol.wire import ShellExit


class ShellError(Exception):
    """An error shown to the client as one line, ending the session with
    exit_code; outcome is the word the session's syslog line records. Each
    subclass names both in its class line."""

    exit_code = ShellExit.SOFTWARE
    outcome = "error"

    def __init_subclass__(cls, exit_code: ShellExit, outcome: str) -> None:
        super().__init_subclass__()
        cls.exit_code = exit_code
        cls.outcome = outcome


class Refused(ShellError, exit_code=ShellExit.USAGE, outcome="refused"):
    """Not a protocol command, or a bad name."""


class BadStream(ShellError, exit_code=ShellExit.DATA, outcome="bad-stream"):
    """A stream truncated, malformed or not matching its end frame; stored bytes that differ."""


class NotFound(ShellError, exit_code=ShellExit.NO_SUCH_BACKUP, outcome="missing"):
    """No such backup, nothing staged, nothing to resume."""


class Unavailable(ShellError, exit_code=ShellExit.UNAVAILABLE, outcome="unavailable"):
    """No space or inodes, another upload running, every session slot taken."""


class Exists(ShellError, exit_code=ShellExit.EXISTS, outcome="exists"):
    """The name is taken: backups are never replaced."""


class StorageError(ShellError, exit_code=ShellExit.IO, outcome="io-error"):
    """The storage failed in a way the client cannot fix."""


class SessionCut(ShellError, exit_code=ShellExit.IO, outcome="interrupted"):
    """The session was cut: EOF before the end frame, a signal, the idle
    timeout, a hung-up client. One code for a lost client (an upload's partial
    is kept), and never a data error (a SIGPIPE during `list` says nothing
    about data)."""


class NotAllowed(ShellError, exit_code=ShellExit.NO_PERMISSION, outcome="not-allowed"):
    """An interactive login, an admin verb, running as root."""


class ConfigError(ShellError, exit_code=ShellExit.CONFIG, outcome="bad-config"):
    """The server's config is unreadable or invalid."""


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


@dataclass(frozen=True)
class Setting:
    """How one key of [storage] and [account NAME] is read: its parser, its
    default and its floor as a config file writes them, and what it is for.
    Only a key whose default is "none" (no limit) may be set to "none"."""

    parse: Callable[[str], int]
    default: str
    floor: str
    help: str

    def value(self, text: str) -> int | None:
        """Given what the file says ("" = nothing), return the value; raise
        ValueError if it is not one of this key's values or is below the floor."""
        text = text.strip() or self.default
        if text == "none" and self.default == "none":
            return None
        value = self.parse(text)
        if value < self.parse(self.floor):
            raise ValueError(f"at least {self.floor}")
        return value


def setting(parse: Callable[[str], int], default: str, floor: str, help: str) -> Any:
    """Given a key's parser, default, floor and help, return its ShellConfig
    field: the default read as the file would be, the Setting as metadata."""
    declared = Setting(parse, default, floor, help)
    return field(default=declared.value(default), metadata={"setting": declared})


@dataclass(frozen=True)
class ShellConfig:
    """One account's settings; sizes in bytes, durations in seconds. Each key
    of [storage] and [account NAME] is declared here once, with its Setting;
    KEYS, the parser and qbackup-shell.conf.example follow it."""

    root: str | None = None  # None: the account's home
    reserve: int = setting(
        parse_size, "1G", "0",
        "free space a put never uses: refused up front, aborted before crossing it")
    quota: int | None = setting(parse_size, "none", "0", "most bytes one account may store")
    # Younger than an hour, a staged upload may still be committed: one put
    # must not remove another's upload before dom0 commits it.
    pending_max_age: int = setting(
        parse_duration, "24h", "1h",
        "age after which an upload that was never committed is removed")
    # Zero would end every session at once.
    idle_timeout: int = setting(
        parse_duration, "10m", "1s",
        "a session whose client sends (put, resume) or reads (get, list, check) nothing "
        "this long ends; an upload's data is kept for a resume")
    partial_max_age: int = setting(
        parse_duration, "1h", "60s",
        "how long an interrupted upload is kept for `resume` (keep it above the carriers' "
        "`resume_window`)")
    # Below one frame, every upload would crawl from fdatasync to fdatasync.
    sync_interval: int = setting(
        parse_size, "16M", "1M",
        "the shell makes what it received durable and acknowledges it every this many bytes "
        "(keep it below the carriers' `resume_buffer`)")
    # Zero would refuse every session.
    max_sessions: int = setting(
        parse_size, "4", "1", "sessions of one account at once; one more is refused")
    max_inodes: int = setting(
        parse_size, "100000", "10", "files and directories one account's storage may hold")
    log_socket: str = "/dev/log"  # [logging] socket

    @property
    def max_age(self) -> dict[str, int]:
        """Seconds an upload is kept, by kind: "pending" (staged) or "partial" (interrupted)."""
        return {"pending": self.pending_max_age, "partial": self.partial_max_age}


KEYS: dict[str, Setting] = {
    entry.name: entry.metadata["setting"] for entry in fields(ShellConfig)
    if "setting" in entry.metadata
}


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
    for key, declared in KEYS.items():
        try:
            values[key] = declared.value(settings.get(key, ""))
        except ValueError as error:
            raise ConfigError(f"{path}: {key} for account {account}: {error}") from None
    root = (settings.get("root") or "").strip().replace("{account}", account) or None
    if root is not None and not root.startswith("/"):
        raise ConfigError(f"{path}: root must be an absolute path")
    log_socket = parser.get("logging", "socket", fallback="").strip() or ShellConfig.log_socket
    return ShellConfig(root=root, log_socket=log_socket, **values)  # type: ignore[arg-type]


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
