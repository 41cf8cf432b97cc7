"""The carrier's timeouts take a unit, s, m, h or d; a bare number keeps
meaning seconds, so every carrier.yaml written before still loads as it did;
a bad one is FILE:LINE: KEY: how to write a duration."""

from __future__ import annotations

from pathlib import Path

import pytest

from carrier_vm.config import load_config
from carrier_vm.errors import ConfigError


def load(tmp_path: Path, text: str) -> object:
    path = tmp_path / "carrier.yaml"
    path.write_text("host: backup.example.org\n" + text)
    return load_config({"QBACKUP_CARRIER_CONFIG": str(path)})


@pytest.mark.parametrize(("text", "key", "seconds"), [
    ("connect_timeout: 1m\n", "connect_timeout", 60),
    ("connect_timeout: 45\n", "connect_timeout", 45),  # bare: seconds, as before
    ("keepalive_interval: 20s\n", "keepalive_interval", 20),
    ("reply_timeout: 2h\n", "reply_timeout", 7200),
    ("progress_timeout: '10m'\n", "progress_timeout", 600),
    ("resume_window: 1d\n", "resume_window", 86400),
    ("resume_window: 0\n", "resume_window", 0),
])
def test_a_carrier_timeout_takes_units(tmp_path: Path, text: str, key: str,
                                       seconds: float) -> None:
    assert getattr(load(tmp_path, text), key) == seconds


@pytest.mark.parametrize(("text", "problem"), [
    ("connect_timeout: 1w\n", "connect_timeout: not a duration: use a number and a unit, s,"
                              " m, h or d (90s, 5m; a bare number means seconds)"),
    ("connect_timeout: 11m\n", "connect_timeout: must be a duration from 1s to 10m (a bare"
                               " number is seconds)"),
    ("resume_window: true\n", "resume_window: must be a duration from 0s to 7d (a bare number"
                              " is seconds)"),
])
def test_a_bad_timeout_is_one_line_naming_the_key_and_how_to_write_one(
        tmp_path: Path, text: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text)
    assert str(caught.value) == f"{tmp_path / 'carrier.yaml'}:2: {problem}"
