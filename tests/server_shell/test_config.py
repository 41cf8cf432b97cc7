"""Config parsing: sizes, defaults, per-account overrides, refusals (exit 78)."""

from __future__ import annotations

from pathlib import Path

import pytest

from server_shell.config import (
    DEFAULT_PENDING_MAX_AGE,
    DEFAULT_RESERVE,
    ShellConfig,
    load_config,
    parse_config,
    parse_size,
)
from server_shell.errors import ConfigError


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
        root=None, reserve=DEFAULT_RESERVE, quota=None, log_socket="/dev/log"
    )


def test_account_section_overrides_storage() -> None:
    text = (
        "[storage]\nroot = /srv/{account}\nreserve = 2G\nquota = 10G\n"
        "[account bob]\nreserve = 5M\nquota = none\n[logging]\nsocket = /run/log.sock\n"
    )
    assert parse_config(text, "alice") == ShellConfig(
        "/srv/alice", 2 * 1024**3, 10 * 1024**3, "/run/log.sock"
    )
    assert parse_config(text, "bob") == ShellConfig("/srv/bob", 5 * 1024**2, None, "/run/log.sock")


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
    ],
)
def test_bad_config_is_refused(text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "alice")
    assert caught.value.exit_code == 78
    assert "\n" not in str(caught.value)
