"""Config parsing: sizes, defaults, per-account overrides, refusals (exit 78)."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import pytest

from qbackup_protocol.wire import ShellExit
from server_shell.config import (
    KEYS,
    ConfigError,
    ShellConfig,
    load_config,
    parse_config,
    parse_size,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "server_shell" / "qbackup-shell.conf.example"
DEFAULT_PENDING_MAX_AGE = 24 * 3600
DEFAULT_RESERVE = 1024**3


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("0", 0),
        ("4096", 4096),
        ("1K", 1024),
        ("512M", 512 * 1024**2),
        ("1G", 1024**3),
        ("2T", 2 * 1024**4),
        ("1g", 1024**3),
        ("1GiB", 1024**3),
        (" 3 M ", 3 * 1024**2),
    ],
)
def test_parse_size_accepts(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "G", "-1G", "1.5G", "1P", "1 G G", "ten"])
def test_parse_size_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("", DEFAULT_PENDING_MAX_AGE),
        ("[storage]\npending_max_age = 2h\n", 7200),
        ("[storage]\npending_max_age = 3d\n", 3 * 86400),
        ("[storage]\npending_max_age = 90m\n", 5400),
        ("[storage]\npending_max_age = 3600\n", 3600),
        ("[storage]\npending_max_age = 2h\n[account alice]\npending_max_age = 7d\n", 7 * 86400),
    ],
)
def test_pending_max_age_accepts(text: str, seconds: int) -> None:
    assert parse_config(text, "alice").pending_max_age == seconds


def test_missing_file_means_defaults(tmp_path: Path) -> None:
    assert load_config(str(tmp_path / "absent.conf"), "alice") == ShellConfig(
        root=None, reserve=DEFAULT_RESERVE, quota=None, log_socket="/dev/log",
        max_inodes=100_000, max_sessions=4, pending_max_age=DEFAULT_PENDING_MAX_AGE,
        partial_max_age=3600, idle_timeout=600, sync_interval=16 * 1024**2,
    )


def test_every_key_s_default_is_its_setting_s_default_read_as_the_file_would() -> None:
    defaults = ShellConfig()
    assert {key: getattr(defaults, key) for key in KEYS} == {
        key: declared.value("") for key, declared in KEYS.items()
    }
    assert set(KEYS) == {entry.name for entry in fields(ShellConfig)} - {"root", "log_socket"}


def example_blocks() -> dict[str, str]:
    """Return {key: the comment block above its `#key = ` line} of the config example."""
    blocks: dict[str, str] = {}
    comments: list[str] = []
    for line in EXAMPLE.read_text().splitlines():
        key = re.fullmatch(r"#(\w+) = .*", line)
        if key:
            blocks.setdefault(key[1], " ".join(comments))
        elif line.startswith("# "):
            comments.append(line[2:])
            continue
        comments = []
    return blocks


@pytest.mark.parametrize("key", sorted(KEYS))
def test_the_config_example_states_each_key_s_default_and_floor(key: str) -> None:
    # An example that drifted from the code would mislead every admin who reads it.
    declared = KEYS[key]
    block = example_blocks()[key]
    assert re.search(rf"Default: {re.escape(declared.default)}\b", block), block
    if declared.parse(declared.floor) > 0:
        assert re.search(rf"at least {re.escape(declared.floor)}\b", block, re.I), block


@pytest.mark.parametrize(
    ("text", "field", "value"),
    [
        ("[storage]\nmax_sessions = 2\n", "max_sessions", 2),
        ("[storage]\nmax_inodes = 500\n", "max_inodes", 500),
        ("[storage]\npartial_max_age = 15m\n", "partial_max_age", 900),
        ("[storage]\nsync_interval = 8M\n", "sync_interval", 8 * 1024**2),
        ("[storage]\nidle_timeout = 30s\n", "idle_timeout", 30),
    ],
)
def test_new_keys_are_read(text: str, field: str, value: int) -> None:
    assert getattr(parse_config(text, "alice"), field) == value


def test_account_section_overrides_storage() -> None:
    text = (
        "[storage]\nroot = /srv/{account}\nreserve = 2G\nquota = 10G\n"
        "[account bob]\nreserve = 5M\nquota = none\n[logging]\nsocket = /run/log.sock\n"
    )
    assert parse_config(text, "alice") == ShellConfig(
        root="/srv/alice", reserve=2 * 1024**3, quota=10 * 1024**3, log_socket="/run/log.sock"
    )
    assert parse_config(text, "bob") == ShellConfig(
        root="/srv/bob", reserve=5 * 1024**2, quota=None, log_socket="/run/log.sock"
    )


@pytest.mark.parametrize(
    "text",
    [
        "[storage]\nreserve = lots\n",
        "[storage]\nquota = -1\n",
        "[storage]\nroot = relative/path\n",
        "[storage]\nrot = /srv\n",  # a typo must not silently mean "default"
        "[logging]\nlevel = debug\n",
        "[unknown]\nx = 1\n",
        "not an ini file\n",
        "[storage]\nreserve = 1G\n[storage]\nreserve = 2G\n",
        "[storage]\npending_max_age = soon\n",
        "[storage]\npending_max_age = 1.5h\n",
        # Shorter than an hour, one put could remove another's upload before
        # dom0 commits it: refused, not obeyed.
        "[storage]\npending_max_age = 0\n",
        "[storage]\npending_max_age = 59m\n",
        "[storage]\nmax_sessions = 0\n",
        "[storage]\nmax_inodes = many\n",
        "[storage]\npartial_max_age = 59s\n",
        "[storage]\nsync_interval = 4K\n",
        "[storage]\nidle_timeout = 0\n",
    ],
)
def test_bad_config_is_refused(text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "alice")
    assert caught.value.exit_code == ShellExit.CONFIG
    assert "\n" not in str(caught.value)
