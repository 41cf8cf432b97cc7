"""A job's prefix and the backup names dom0 makes from it: PREFIX-TIMESTAMP in
UTC, sortable; every prefix the config accepts makes a name the protocol
accepts."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from dom0 import settings
from dom0.backup import make_name
from dom0.profile import destination_path
from qbackup_protocol import wire


@pytest.mark.parametrize("prefix", ["laptop", "a", "laptop/daily", "x.y_z-1", "A" * 64,
                                    "a/b/c/d/e/f/g"])
def test_prefix_accepts(prefix: str) -> None:
    assert settings.prefix_problem(prefix) is None
    name = make_name(prefix)
    assert wire.check_name(name) == name  # raises InvalidName if the server could not hold it


@pytest.mark.parametrize("prefix", ["", ".x", "-x", "_x", "a b", "a\n", "a$", "a/", "/a",
                                    "a//b", "a/../b", "A" * 65, "ä", "a\tb", "a'b", "a\"b",
                                    "a/b/c/d/e/f/g/h"])
def test_prefix_refuses(prefix: str) -> None:
    assert settings.prefix_problem(prefix) is not None


def test_name_is_prefix_dash_utc_timestamp_and_sortable() -> None:
    moment = datetime(2026, 11, 22, 23, 59, 59, tzinfo=UTC)
    assert make_name("laptop", moment) == "laptop-20261122T235959Z"
    assert destination_path("laptop-20261122T235959Z") == \
        "qbackup-carrier put laptop-20261122T235959Z"
