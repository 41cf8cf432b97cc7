"""Backup names: dom0 makes PREFIX-TIMESTAMP names and retention
parses them with the one format in qbackup_protocol.names; if making and
parsing drifted apart, retention would silently keep every backup."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qbackup_protocol import names, wire


@given(st.datetimes(min_value=datetime(1000, 1, 1), max_value=datetime(9999, 12, 30),
                    timezones=st.just(UTC)))
def test_a_name_made_is_a_name_parsed_at_the_same_second(moment: datetime) -> None:
    name = names.timestamped_name("laptop/daily", moment)
    assert wire.check_name(name) == name
    assert len(name) == len("laptop/daily") + names.TIMESTAMP_SUFFIX_LENGTH
    assert names.split_backup_name(name) == ("laptop/daily", moment.replace(microsecond=0))


def test_a_name_is_stamped_in_utc_whatever_the_moment_s_zone() -> None:
    moment = datetime(2026, 11, 23, 1, 59, 59, tzinfo=timezone(timedelta(hours=2)))
    assert names.timestamped_name("laptop", moment) == "laptop-20261122T235959Z"


# Ages: one rule for `qbackup status --max-age` and `qbackup-server status
# --max-age`; a bare number means hours in both.
@pytest.mark.parametrize(("text", "seconds"), [
    ("90s", 90), ("15m", 900), ("36h", 36 * 3600), ("7d", 7 * 86400), ("36", 36 * 3600),
    ("1.5", 5400), ("0.5d", 43200), (" 36H ", 36 * 3600), ("0", 0),
])
def test_an_age_takes_units_and_a_bare_number_means_hours(text: str, seconds: float) -> None:
    assert names.parse_age(text) == seconds


@pytest.mark.parametrize("text", ["", "h", "36x", "-1h", "1e3", "36 h", "1h30m", "inf", "nan",
                                  "1" * 20, "١٢"])
def test_anything_else_is_not_an_age(text: str) -> None:
    with pytest.raises(ValueError, match="not an age: use a number and a unit, s, m, h or d"):
        names.parse_age(text)


@pytest.mark.parametrize(("seconds", "shown"), [
    (90, "90s"), (900, "15m"), (36 * 3600, "36h"), (7 * 86400, "7d"), (5400, "90m"),
    (0, "0s"), (48 * 3600, "2d"), (60 * 3600, "2.5d"), (145080, "40.3h"),
    (36.01 * 3600, "36.0h"), (50 * 86400 + 7, "50.0d"),
    (61.5, "61.5s"), (4000, "66.7m"),
])
def test_an_age_is_shown_in_the_largest_unit_it_holds_twice(
        seconds: float, shown: str) -> None:
    assert names.show_age(seconds) == shown


@given(st.integers(min_value=0, max_value=10**9))
def test_an_age_shown_in_whole_units_parses_back(seconds: int) -> None:
    shown = names.show_age(seconds)
    if "." not in shown:
        assert names.parse_age(shown) == seconds


# Durations of timeouts and delays (dom0's retry_delay and answer_timeout, the
# carrier's timeouts): the same grammar as ages, but a bare number means
# SECONDS, as every config file written so far meant it.
@pytest.mark.parametrize(("text", "seconds"), [
    ("90s", 90), ("5m", 300), ("1h", 3600), ("2d", 172800), ("300", 300), ("1.5", 1.5),
    ("0.5m", 30), (" 2M ", 120), ("0", 0),
])
def test_a_duration_takes_units_and_a_bare_number_means_seconds(
        text: str, seconds: float) -> None:
    assert names.parse_duration(text, "s") == seconds


@pytest.mark.parametrize("text", ["", "s", "5x", "1w", "-1s", "1e3", "5 m", "1m30s", "inf",
                                  "nan", "1" * 20, "١٢"])
def test_anything_else_is_not_a_duration(text: str) -> None:
    with pytest.raises(ValueError, match=r"^not a duration: use a number and a unit, s, m, h"
                                         r" or d \(90s, 5m; a bare number means seconds\)$"):
        names.parse_duration(text, "s")


@given(st.integers(min_value=0, max_value=10**9))
def test_a_duration_shown_in_whole_units_parses_back(seconds: int) -> None:
    shown = names.show_age(seconds)
    if "." not in shown:
        assert names.parse_duration(shown, "s") == seconds
