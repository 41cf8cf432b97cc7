"""What the carrier says about a broken carrier.yaml: every problem at once,
each as FILE:LINE: KEY: problem, YAML syntax errors with line and column, and
a file that is not there named with whoever named it."""

from __future__ import annotations

from pathlib import Path

import pytest

from carrier_vm.config import load_config
from carrier_vm.errors import ConfigError
from qbackup_protocol.carrier_service import CarrierExit
from tests.carrier_vm.conftest import Carrier, assert_one_safe_line

BROKEN = """\
host: backup.example.org
port: 0
user: backup
port: 2222
rate_limit: 10
hots: typo
known_hosts: null
"""


def refusal(path: Path, **environ: str) -> str:
    """Return the ConfigError's text for the config at PATH (and ENVIRON)."""
    with pytest.raises(ConfigError) as refused:
        load_config({"QBACKUP_CARRIER_CONFIG": str(path), **environ})
    return str(refused.value)


def test_every_problem_at_once_each_with_file_line_and_key(tmp_path: Path) -> None:
    path = tmp_path / "carrier.yaml"
    path.write_text(BROKEN)
    assert refusal(path) == "; ".join([
        # YAML keeps the second port (valid): the first would silently be lost.
        f"{path}:4: port: given twice (first on line 2): keep one",
        f"{path}:5: rate_limit: must be a number of bytes per second, at least 1024 "
        "(or with K, M or G: 5M)",
        f"{path}:6: hots: unknown key (see carrier.yaml.example)",
        f"{path}:7: known_hosts: may not be null (host keys are always verified)",
    ])


def test_problems_of_no_line_come_last(tmp_path: Path) -> None:
    path = tmp_path / "carrier.yaml"
    path.write_text("user: b\nport: x\n")
    assert refusal(path, SSH_CONN="a b") == "; ".join([
        f"{path}:2: port: must be an integer from 1 to 65535",
        "SSH_CONN: expected [user@]host with a plain host name or address",
        f"{path}: host: required (or set SSH_CONN=[user@]host)",
    ])


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("host: [unclosed\nport: 2\n", ":2:5: YAML syntax error: expected ',' or ']'"),
        ("host: a\n\tport: 2\n", ":2:1: YAML syntax error: found character"),
        ("host: a\nport: 2\n  user: b\n", ":3:7: YAML syntax error: mapping values"),
        ("host: !!python/object:os.system x\n", ":1:7: YAML syntax error: could not determine"),
    ],
)
def test_a_yaml_syntax_error_names_line_and_column(
    tmp_path: Path, text: str, where: str
) -> None:
    path = tmp_path / "carrier.yaml"
    path.write_text(text)
    assert refusal(path).startswith(f"{path}{where}")


def test_a_file_the_environment_names_must_exist(tmp_path: Path) -> None:
    # Even with SSH_CONN supplying the host: a file named but missing is a
    # typo, and its settings (known_hosts, identity_file) would be lost.
    path = tmp_path / "typo.yaml"
    assert refusal(path, SSH_CONN="backup@server.lan") == (
        f"{path}: no such file (named by QBACKUP_CARRIER_CONFIG)")


def test_without_the_default_file_ssh_conn_is_needed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    default = tmp_path / ".config" / "qbackup" / "carrier.yaml"
    with pytest.raises(ConfigError) as refused:
        load_config({})
    assert str(refused.value) == (
        f"{default}: no such file: copy carrier.yaml.example there and set host"
        " (or set SSH_CONN=[user@]host)")
    assert load_config({"SSH_CONN": "backup@server.lan"}).host == "server.lan"


@pytest.mark.offline  # refused before any contact
def test_the_carrier_prints_every_problem_on_one_line(carrier: Carrier) -> None:
    carrier.config.write_text(BROKEN)
    result = carrier.run("info")
    assert result.returncode == CarrierExit.CONFIG
    assert_one_safe_line(result.stderr)
    assert f"{carrier.config}:4: port: given twice".encode() in result.stderr
    assert f"{carrier.config}:7: known_hosts: may not be null".encode() in result.stderr
