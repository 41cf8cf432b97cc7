"""carrier_vm/config.py's SETTINGS is the one place a key of carrier.yaml is
declared: CarrierConfig, carrier.yaml.example and the README's table of
timeouts follow it."""

from __future__ import annotations

import re
from dataclasses import fields, replace

import pytest
import yaml

from carrier_vm.config import SETTINGS, CarrierConfig, default, range_text, validate_config
from qbackup_protocol.names import parse_duration, show_age
from tests.carrier_vm.conftest import REPO

EXAMPLE = (REPO / "carrier_vm" / "carrier.yaml.example").read_text()
README = (REPO / "carrier_vm" / "README.md").read_text()
KEY_LINE = re.compile(r"(#?)([a-z_]+): (.*)")


def test_carrier_config_has_a_field_per_setting() -> None:
    # Where the values came from and which destination they are for, not settings.
    where = {"source", "host_origin", "destination"}
    assert {item.name for item in fields(CarrierConfig)} - where == set(SETTINGS)


def test_a_config_made_in_code_has_the_tables_defaults() -> None:
    read = validate_config({"host": "h", "ssh_config": None}, "carrier.yaml", None)
    assert CarrierConfig(host="h", known_hosts=read.known_hosts) == replace(read, source="")


def key_lines() -> dict[str, list[str]]:
    """Return each key line of the example: KEY -> [commented-out '#' or '', value]."""
    found: dict[str, list[str]] = {}
    for line in EXAMPLE.splitlines():
        match = KEY_LINE.fullmatch(line)
        if match:
            assert match.group(2) not in found, match.group(2)
            found[match.group(2)] = [match.group(1), match.group(3)]
    return found


def comment_block(key: str) -> str:
    """Return the comment lines just above KEY's line, joined into one line."""
    lines = EXAMPLE.splitlines()
    [index] = [number for number, line in enumerate(lines)
               if (match := KEY_LINE.fullmatch(line)) and match.group(2) == key]
    block: list[str] = []
    for line in reversed(lines[:index]):
        if not line.startswith("#") or KEY_LINE.fullmatch(line):
            break
        block.insert(0, line.lstrip("#").strip())
    return " ".join(block)


def test_the_example_shows_every_key_once_with_a_comment() -> None:
    assert set(key_lines()) == set(SETTINGS)
    for key in SETTINGS:
        assert comment_block(key), key


@pytest.mark.parametrize("key", [key for key, setting in SETTINGS.items()
                                 if setting.default is not None])
def test_a_key_with_a_default_is_shown_commented_out_with_it(key: str) -> None:
    [commented, value] = key_lines()[key]
    setting = SETTINGS[key]
    assert commented == "#" and setting.type(setting, yaml.safe_load(value)) == default(key)
    # The commented-out line is the one place the example gives the default.
    assert "default" not in comment_block(key).lower(), key


@pytest.mark.parametrize("key", [key for key, setting in SETTINGS.items()
                                 if setting.low is not None])
def test_the_example_states_each_range_as_the_code_checks_it(key: str) -> None:
    assert range_text(SETTINGS[key]) in comment_block(key).lower(), key


def test_the_readmes_timeouts_table_shows_the_defaults() -> None:
    section = README.split(" Timeouts and aborts\n", 1)[1].split("\n#", 1)[0]
    shown = re.findall(r"`([a-z_]+)` \[([0-9a-z]+)\]", section)
    assert {key for key, _ in shown} == {"connect_timeout", "keepalive_interval",
                                         "keepalive_count_max", "progress_timeout",
                                         "reply_timeout"}
    for key, value in shown:
        # Durations with their unit (30s, 5m, 1h), as carrier.yaml takes them.
        assert parse_duration(value, "s") == default(key), key
        assert value.isdigit() == (key == "keepalive_count_max"), key
    silence = default("keepalive_interval") * (default("keepalive_count_max") + 1)
    assert f"unanswered => ~{show_age(silence)} |" in section
