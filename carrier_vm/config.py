"""Load and validate the carrier's YAML configuration.

The file is ``~/.config/qbackup/carrier.yaml`` unless the environment names
another one in QBACKUP_CARRIER_CONFIG. The original tool's ``SSH_CONN=[user@]host``
environment variable still works: it supplies or overrides host and user.
Each key is declared once, in `SETTINGS` (its type, default and range);
carrier.yaml.example says what each one means. The file names one server
(``host:`` and friends at the top level: the destination ``default``) or
several under ``destinations:``, where top-level keys are defaults for every
destination and a destination's own keys override them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from carrier_vm.errors import ConfigError, UsageError
from qbackup_protocol.carrier_service import (
    DEFAULT_DESTINATION,
    MAX_DESTINATIONS,
    check_destination,
)
from qbackup_protocol.names import parse_duration, show_age
from qbackup_protocol.text import clean_text
from qbackup_protocol.wire import ProtocolError

CONFIG_ENV = "QBACKUP_CARRIER_CONFIG"
SSH_CONN_ENV = "SSH_CONN"
DEFAULT_CONFIG_PATH = "~/.config/qbackup/carrier.yaml"
MAX_CONFIG_BYTES = 64 * 1024
MAX_SHOWN = 80  # characters of the file's own text repeated in a message

# A host name, IPv4 or bracket-less IPv6 address: no spaces, no shell or
# ssh-option syntax, nothing that could be mistaken for an option ('-').
HOST_PATTERN = re.compile(r"[A-Za-z0-9_.:%][A-Za-z0-9_.:%-]{0,252}")
USER_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
CIPHER_PATTERN = re.compile(r"[a-z0-9@.-]{1,64}")
RATE_PATTERN = re.compile(r"([0-9]{1,12})([KMG]?)")
RATE_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}
DESTINATIONS_KEY = "destinations"


@dataclass(frozen=True)
class Setting:
    """One key of carrier.yaml: its type, as the function that checks a value
    (raising ValueError with what the value must be) and returns it
    converted; its DEFAULT when left out or null (None: ~/.ssh/config or
    asyncssh decides); and, for a number, its range LOW..HIGH (HIGH None: no
    upper bound) in UNIT (a duration's: seconds). SHARED: one value for
    every destination (top level only)."""

    type: Callable[[Setting, Any], Any]
    default: Any = None
    low: int | None = None
    high: int | None = None
    unit: str = ""
    shared: bool = False


def _host(setting: Setting, value: Any) -> str:
    if not isinstance(value, str) or not HOST_PATTERN.fullmatch(value):
        raise ValueError("must be a plain host name or address")
    return value


def _user(setting: Setting, value: Any) -> str:
    if not isinstance(value, str) or not USER_PATTERN.fullmatch(value):
        raise ValueError("must be an account name of [A-Za-z0-9_.-]")
    return value


def _path(setting: Setting, value: Any) -> Path:
    if not isinstance(value, str) or not value:
        raise ValueError("must be a file path")
    return Path(os.path.expanduser(value))


def _within(setting: Setting, value: float) -> bool:
    return (setting.low is None or setting.low <= value) and (
        setting.high is None or value <= setting.high)


def range_text(setting: Setting) -> str:
    """Given a numeric setting, return what its values must be, as messages
    and carrier.yaml.example say it."""
    if setting.type is _duration and setting.low is not None and setting.high is not None:
        return f"a duration from {show_age(setting.low)} to {show_age(setting.high)} (a bare" \
               " number is seconds)"
    what = f"a number of {setting.unit}" if setting.unit else "an integer"
    if setting.high is None:
        return f"{what}, at least {setting.low}"
    return f"{what} from {setting.low} to {setting.high}"


def _duration(setting: Setting, value: Any) -> float:
    # A bare number is seconds, as every carrier.yaml before units meant it.
    seconds = parse_duration(value, "s") if isinstance(value, str) else value
    if not isinstance(seconds, int | float) or isinstance(seconds, bool) \
            or not _within(setting, seconds):
        raise ValueError(f"must be {range_text(setting)}")
    return float(seconds)


def _integer(setting: Setting, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not _within(setting, value):
        raise ValueError(f"must be {range_text(setting)}")
    return value


def _rate(setting: Setting, value: Any) -> int:
    # 5M = 5 MiB/s; a bare number is bytes per second.
    match = RATE_PATTERN.fullmatch(value) if isinstance(value, str) else None
    if match:
        value = int(match.group(1)) * RATE_UNITS[match.group(2)]
    if not isinstance(value, int) or isinstance(value, bool) or not _within(setting, value):
        raise ValueError(f"must be {range_text(setting)} (or with K, M or G: 5M)")
    return value


def _ciphers(setting: Setting, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",")]
    if (
        not isinstance(value, list | tuple)
        or not value
        or not all(isinstance(item, str) and CIPHER_PATTERN.fullmatch(item) for item in value)
    ):
        raise ValueError("must be a non-empty list of SSH cipher names")
    return tuple(value)


# The one table of carrier.yaml's keys; carrier.yaml.example says what each
# means, and tests/carrier_vm/test_settings_table.py holds it to this table.
SETTINGS: dict[str, Setting] = {
    "host": Setting(_host),
    "port": Setting(_integer, low=1, high=65535),
    "user": Setting(_user),
    "identity_file": Setting(_path),
    # Host key checking can never be switched off: null is refused, and an
    # empty path is not a path.
    "known_hosts": Setting(_path, default="~/.ssh/known_hosts"),
    "ssh_config": Setting(_path, default="~/.ssh/config"),
    "connect_timeout": Setting(_duration, default=30, low=1, high=600),
    "keepalive_interval": Setting(_duration, default=15, low=1, high=600),
    "keepalive_count_max": Setting(_integer, default=3, low=1, high=100),
    "reply_timeout": Setting(_duration, default=3600, low=1, high=7 * 24 * 3600),
    "progress_timeout": Setting(_duration, default=300, low=1, high=24 * 3600),
    "resume_window": Setting(_duration, default=900, low=0, high=7 * 24 * 3600),
    # Unacknowledged data kept for resuming: at least two frames (one being
    # sent, one being read); at most 1 GiB (it is memory). One buffer feeds
    # every destination.
    "resume_buffer": Setting(_integer, default=32 * 1024 * 1024, low=2 * 1024 * 1024,
                             high=1024**3, unit="bytes", shared=True),
    "rate_limit": Setting(_rate, low=1024, unit="bytes per second"),
    # AES-GCM first: these CPUs have AES-NI and asyncssh's default (chacha20)
    # costs ~40% of the throughput on such CPUs (measured; see docs/PERFORMANCE.md).
    "ciphers": Setting(_ciphers, default=(
        "aes128-gcm@openssh.com",
        "aes256-gcm@openssh.com",
        "aes128-ctr",
        "chacha20-poly1305@openssh.com",
    )),
}
DEFAULT_CIPHERS: tuple[str, ...] = SETTINGS["ciphers"].default


def default(key: str) -> Any:
    """Given a key, return its default, checked and converted (for CarrierConfig)."""
    setting = SETTINGS[key]
    return setting.type(setting, setting.default)


@dataclass(frozen=True)
class CarrierConfig:
    """Validated carrier settings, a field per key of `SETTINGS`, defaults
    from there. None means "let ~/.ssh/config or asyncssh decide"; a config
    made in code reads no OpenSSH config unless it names one."""

    host: str
    known_hosts: Path
    port: int | None = None
    user: str | None = None
    identity_file: Path | None = None
    ssh_config: Path | None = None
    connect_timeout: float = default("connect_timeout")
    keepalive_interval: float = default("keepalive_interval")
    keepalive_count_max: int = default("keepalive_count_max")
    reply_timeout: float = default("reply_timeout")
    progress_timeout: float = default("progress_timeout")
    resume_window: float = default("resume_window")
    resume_buffer: int = default("resume_buffer")
    rate_limit: int | None = None
    ciphers: tuple[str, ...] = DEFAULT_CIPHERS
    source: str = ""
    # Where host was set when not in SOURCE (SSH_CONN), for messages.
    host_origin: str = ""
    destination: str = DEFAULT_DESTINATION


@dataclass(frozen=True)
class Destinations:
    """carrier.yaml's destinations, in its order, each as its CarrierConfig."""

    configs: tuple[CarrierConfig, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(config.destination for config in self.configs)

    def pick(self, names: tuple[str, ...] | None) -> tuple[CarrierConfig, ...]:
        """Given destination NAMES (None: every one), return their configs in
        the order given; raise UsageError for a name carrier.yaml lacks."""
        if names is None:
            return self.configs
        by_name = {config.destination: config for config in self.configs}
        for name in names:
            if name not in by_name:
                raise UsageError(f"no destination '{name}' in {self.configs[0].source} "
                                 f"(it has: {', '.join(self.names)})")
        return tuple(by_name[name] for name in names)

    def one(self, name: str | None) -> CarrierConfig:
        """Given a destination NAME (None: the first), return its config;
        raise UsageError for a name carrier.yaml lacks."""
        return self.pick(None if name is None else (name,))[0]


@dataclass(frozen=True)
class ConfigFile:
    """carrier.yaml read and parsed: its top-level mapping (empty when the
    file does not exist), the line of each key, and of each key given again."""

    values: dict[str, Any] = field(default_factory=dict)
    lines: dict[str, int] = field(default_factory=dict)
    again: dict[str, int] = field(default_factory=dict)
    exists: bool = True


def config_path(environ: Mapping[str, str]) -> Path:
    """Given the environment, return the path of the config file to read."""
    return Path(os.path.expanduser(environ.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH))


def read_config_file(path: Path) -> ConfigFile:
    """Given the config file PATH, return it parsed (empty if it does not
    exist); raise ConfigError if it is unreadable, not YAML (with line and
    column) or not a mapping."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        return ConfigFile(exists=False)
    except OSError as error:
        raise ConfigError(f"{path}: cannot read: {error.strerror}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES} bytes")
    try:
        node = yaml.compose(raw, Loader=yaml.SafeLoader)
        value = yaml.safe_load(raw)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = clean_text(str(error.problem or error.context), MAX_SHOWN)
        raise ConfigError(f"{where}: YAML syntax error: {problem}") from None
    except (yaml.YAMLError, RecursionError):
        raise ConfigError(f"{path}: not valid YAML") from None
    if value is None:
        return ConfigFile()
    if not isinstance(value, dict) or not isinstance(node, yaml.MappingNode):
        raise ConfigError(f"{path}: the top level must be a mapping of keys to values")
    lines: dict[str, int] = {}
    again: dict[str, int] = {}
    note_lines(node, "", lines, again)
    return ConfigFile(values=value, lines=lines, again=again)


def note_lines(node: yaml.MappingNode, prefix: str, lines: dict[str, int],
               again: dict[str, int]) -> None:
    """Given a mapping NODE whose keys are named PREFIX + key, record the line
    of each key in LINES (again: in AGAIN), and so for the destinations
    and each destination's mapping."""
    for key_node, value_node in node.value:
        key = prefix + str(key_node.value)
        if key in lines:
            again[key] = key_node.start_mark.line + 1
            continue  # its own keys are not given twice: it is
        lines[key] = key_node.start_mark.line + 1
        nested = key == DESTINATIONS_KEY or prefix == f"{DESTINATIONS_KEY}."
        if nested and isinstance(value_node, yaml.MappingNode):
            note_lines(value_node, f"{key}.", lines, again)


def load_destinations(environ: Mapping[str, str] | None = None) -> Destinations:
    """Given the environment (os.environ by default), return the validated
    destinations; raise ConfigError naming, for every problem, the file, the
    line, the key and the problem."""
    environ = os.environ if environ is None else environ
    path = config_path(environ)
    read = read_config_file(path)
    ssh_conn = environ.get(SSH_CONN_ENV)
    if not read.exists and environ.get(CONFIG_ENV):
        raise ConfigError(f"{path}: no such file (named by {CONFIG_ENV})")
    if not read.exists and not ssh_conn:
        raise ConfigError(f"{path}: no such file: copy carrier.yaml.example there and set "
                          f"host (or set {SSH_CONN_ENV}=[user@]host)")
    return validate_destinations(read.values, str(path), ssh_conn, read)


def load_config(environ: Mapping[str, str] | None = None) -> CarrierConfig:
    """Given the environment, return the first destination's config (see
    load_destinations)."""
    return load_destinations(environ).configs[0]


@dataclass(frozen=True)
class ConfigProblem:
    """One problem of a config, at LINE of its file (0: not from a line)."""

    line: int
    text: str


class Problems:
    """The problems found in one config file SOURCE, each with its line."""

    def __init__(self, source: str, read: ConfigFile | None) -> None:
        self.source = source
        self.lines = read.lines if read else {}
        self.found: list[ConfigProblem] = [
            self.at(key, f"given twice (first on line {self.lines[key]}): keep one", line)
            for key, line in (read.again.items() if read else ())
        ]

    def at(self, key: str, text: str, line: int | None = None) -> ConfigProblem:
        line = line or self.lines.get(key, 0)
        return ConfigProblem(line, f"{self.source}{f':{line}' if line else ''}: {key}: {text}")

    def add(self, key: str, text: str, line: int | None = None) -> None:
        self.found.append(self.at(key, text, line))

    def raise_any(self) -> None:
        """Raise ConfigError listing every problem, by line (those of no
        line -- the environment, a missing key -- last)."""
        if self.found:
            self.found.sort(key=lambda found: (found.line == 0, found.line))
            raise ConfigError("; ".join(found.text for found in self.found))


def check_settings(values: dict[str, Any], allowed: frozenset[str], prefix: str,
                   problems: Problems) -> dict[str, Any]:
    """Given raw VALUES whose keys are named PREFIX + key and the keys ALLOWED
    there, return those given (not null), checked and converted; add a
    problem for each unknown key and bad value."""
    for key in sorted(set(values) - allowed, key=str):
        shown = clean_text(str(key), MAX_SHOWN)
        where = prefix + shown
        if key in SETTINGS:
            problems.add(where, "one value for every destination: set it at the top level")
        else:
            problems.add(where, "unknown key (see carrier.yaml.example)",
                         problems.lines.get(prefix + str(key)))
    if "known_hosts" in values and values["known_hosts"] is None:
        # null would mean "no host key checking" to asyncssh: never allowed.
        problems.add(prefix + "known_hosts", "may not be null (host keys are always verified)")
    checked: dict[str, Any] = {}
    for key in sorted(allowed & set(SETTINGS)):
        setting = SETTINGS[key]
        if values.get(key) is not None:
            try:
                checked[key] = setting.type(setting, values[key])
            except ValueError as error:
                problems.add(prefix + key, str(error))
    if "ssh_config" in values and values["ssh_config"] is None:
        checked["ssh_config"] = None  # null: read no OpenSSH client config at all
    return checked


def defaults() -> dict[str, Any]:
    """Return every setting's default that is not None, checked and converted."""
    return {key: default(key) for key, setting in SETTINGS.items()
            if setting.default is not None}


def validate_config(values: dict[str, Any], source: str, ssh_conn: str | None,
                    read: ConfigFile | None = None) -> CarrierConfig:
    """Given the raw mapping from SOURCE, the SSH_CONN value and, when VALUES
    came from a file, the file as read, return the first destination's
    CarrierConfig (see validate_destinations)."""
    return validate_destinations(values, source, ssh_conn, read).configs[0]


def validate_destinations(values: dict[str, Any], source: str, ssh_conn: str | None,
                          read: ConfigFile | None = None) -> Destinations:
    """Given the raw mapping from SOURCE, the SSH_CONN value and, when VALUES
    came from a file, the file as read (for the line of each key), return
    the Destinations: the one named `default` of a file without
    `destinations:`, else each destination's keys over the top-level ones;
    raise ConfigError listing every problem found in the order of the file,
    each as `SOURCE:LINE: KEY: problem`."""
    problems = Problems(source, read)
    everything = frozenset(SETTINGS)
    if DESTINATIONS_KEY not in values:
        checked = {**defaults(), **check_settings(values, everything, "", problems)}
        if ssh_conn:
            take_ssh_conn(ssh_conn, checked, problems)
        if "host" not in checked:
            problems.add("host", f"required (or set {SSH_CONN_ENV}=[user@]host)")
        problems.raise_any()
        return Destinations((CarrierConfig(source=source, **checked),))
    top = {key: value for key, value in values.items() if key != DESTINATIONS_KEY}
    common = {**defaults(), **check_settings(top, everything, "", problems)}
    if "host" in top:
        problems.add("host", f"not with {DESTINATIONS_KEY}: give each destination its host")
    if ssh_conn:
        problems.found.append(ConfigProblem(
            0, f"{SSH_CONN_ENV}: cannot be used with {DESTINATIONS_KEY} in {source}"))
    own = per_destination(values[DESTINATIONS_KEY], problems)
    problems.raise_any()
    return Destinations(tuple(
        CarrierConfig(source=source, destination=name, **{**common, **checked})
        for name, checked in own.items()
    ))


def per_destination(mapping: Any, problems: Problems) -> dict[str, dict[str, Any]]:
    """Given the raw value of `destinations:`, return each destination's own
    keys, checked, in the file's order; add a problem for anything wrong."""
    if not isinstance(mapping, dict) or not 1 <= len(mapping) <= MAX_DESTINATIONS:
        problems.add(DESTINATIONS_KEY, f"must map 1 to {MAX_DESTINATIONS} destination names "
                                       "to their settings")
        return {}
    own_keys = frozenset(key for key, setting in SETTINGS.items() if not setting.shared)
    checked: dict[str, dict[str, Any]] = {}
    for name, settings in mapping.items():
        prefix = f"{DESTINATIONS_KEY}.{clean_text(str(name), MAX_SHOWN)}"
        try:
            # Threat: a name that is a path or shell syntax: it becomes a
            # directory in this VM and a word of dom0's command lines.
            check_destination(name)
        except ProtocolError as error:
            problems.add(prefix, str(error))
            continue
        if not isinstance(settings, dict):
            problems.add(prefix, "must be a mapping of settings ({host: ...})")
            continue
        checked[name] = check_settings(settings, own_keys, f"{prefix}.", problems)
        if "host" not in checked[name] and settings.get("host") is None:
            problems.add(f"{prefix}.host", "required")
    return checked


def take_ssh_conn(ssh_conn: str, checked: dict[str, Any], problems: Problems) -> None:
    """Given SSH_CONN's value, set host (and user) in CHECKED from it; add a
    problem if it is malformed."""
    try:
        user, host = parse_ssh_conn(ssh_conn)
    except ValueError as error:
        problems.found.append(ConfigProblem(0, f"{SSH_CONN_ENV}: {error}"))
        return
    checked["host"] = host
    checked["host_origin"] = SSH_CONN_ENV
    if user is not None:
        checked["user"] = user


def parse_ssh_conn(text: str) -> tuple[str | None, str]:
    """Given SSH_CONN's value ``[user@]host``, return (user or None, host);
    raise ValueError if either part is malformed."""
    user, at, host = text.rpartition("@")
    if at and not USER_PATTERN.fullmatch(user):
        raise ValueError("user part must be [A-Za-z0-9_.-]")
    if not HOST_PATTERN.fullmatch(host):
        raise ValueError("expected [user@]host with a plain host name or address")
    return (user or None), host
