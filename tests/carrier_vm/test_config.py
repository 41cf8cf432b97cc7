"""The carrier's YAML config: accepted values, refused values, SSH_CONN."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from carrier_vm.config import DEFAULT_CIPHERS, load_config, validate_config
from carrier_vm.errors import ConfigError
from carrier_vm.ssh import build_connect_options

BASE = {"host": "backup.example.org"}


def test_defaults_pin_known_hosts_and_prefer_aes_gcm() -> None:
    config = validate_config(dict(BASE), "test.yaml", None)
    assert config.known_hosts == Path("~/.ssh/known_hosts").expanduser()
    assert config.ciphers == DEFAULT_CIPHERS and config.ciphers[0] == "aes128-gcm@openssh.com"
    # Dead network noticed within about a minute.
    assert config.keepalive_interval * (config.keepalive_count_max + 1) <= 60
    options = build_connect_options(config)
    assert options["known_hosts"] == str(config.known_hosts)
    assert options["compression_algs"] is None
    assert options["password_auth"] is False and options["kbdint_auth"] is False
    assert "port" not in options and "username" not in options  # left to ~/.ssh/config


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("port", 2222, 2222),
        ("user", "backup-laptop", "backup-laptop"),
        ("known_hosts", "/etc/qbackup/known_hosts", Path("/etc/qbackup/known_hosts")),
        ("connect_timeout", 10, 10.0),
        ("keepalive_interval", 5.5, 5.5),
        ("keepalive_count_max", 2, 2),
        ("rate_limit", 1_000_000, 1_000_000),
        ("ciphers", "aes256-gcm@openssh.com, aes128-ctr", ("aes256-gcm@openssh.com", "aes128-ctr")),
        ("ssh_config", None, None),
    ],
)
def test_config_accepts(key: str, value: Any, expected: Any) -> None:
    config = validate_config({**BASE, key: value}, "test.yaml", None)
    assert getattr(config, key) == expected


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({}, ": host: required"),
        ({"host": "-oProxyCommand=x"}, ": host:"),
        ({**BASE, "host": "a b"}, ": host:"),
        ({**BASE, "port": 0}, ": port:"),
        ({**BASE, "port": "22"}, ": port:"),
        ({**BASE, "port": True}, ": port:"),
        ({**BASE, "user": "root;ls"}, ": user:"),
        ({**BASE, "known_hosts": None}, ": known_hosts: may not be null"),
        ({**BASE, "known_hosts": ""}, ": known_hosts:"),
        ({**BASE, "connect_timeout": 0}, ": connect_timeout:"),
        ({**BASE, "keepalive_count_max": 0}, ": keepalive_count_max:"),
        ({**BASE, "rate_limit": 10}, ": rate_limit:"),
        ({**BASE, "ciphers": []}, ": ciphers:"),
        ({**BASE, "hots": "typo"}, ": hots: unknown key"),
    ],
)
def test_config_refuses_naming_file_and_key(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        validate_config(values, "/home/u/carrier.yaml", None)
    assert str(caught.value).startswith("/home/u/carrier.yaml: ")
    assert message in str(caught.value)


def test_config_reports_every_problem_at_once() -> None:
    with pytest.raises(ConfigError) as caught:
        validate_config({**BASE, "port": 0, "rate_limit": 1}, "c.yaml", None)
    assert ": port:" in str(caught.value) and ": rate_limit:" in str(caught.value)


@pytest.mark.parametrize(
    ("ssh_conn", "user", "host"),
    [("backup@server.lan", "backup", "server.lan"), ("10.0.0.5", "configured", "10.0.0.5")],
)
def test_ssh_conn_overrides_host_and_user(ssh_conn: str, user: str, host: str) -> None:
    config = validate_config({"host": "old", "user": "configured"}, "c.yaml", ssh_conn)
    assert (config.user, config.host) == (user, host)


@pytest.mark.parametrize("ssh_conn", ["user@", "@host", "u@h -oProxyCommand=x", "a b@host"])
def test_ssh_conn_refuses_malformed_values(ssh_conn: str) -> None:
    with pytest.raises(ConfigError, match="SSH_CONN"):
        validate_config({}, "c.yaml", ssh_conn)


def test_config_file_from_environment(tmp_path: Path) -> None:
    path = tmp_path / "carrier.yaml"
    path.write_text("host: h.example\nport: 2022\n")
    config = load_config({"QBACKUP_CARRIER_CONFIG": str(path)})
    assert (config.host, config.port, config.source) == ("h.example", 2022, str(path))


@pytest.mark.parametrize("text", ["host: [unclosed\n", "- a list\n"])
def test_broken_config_file_is_a_config_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "carrier.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=str(path)):
        load_config({"QBACKUP_CARRIER_CONFIG": str(path)})


def test_example_config_is_valid() -> None:
    # Each key's line and comment: test_settings_table.py.
    example = Path(__file__).resolve().parents[2] / "carrier_vm" / "carrier.yaml.example"
    validate_config(yaml.safe_load(example.read_text()), str(example), None)
