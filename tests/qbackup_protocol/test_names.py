"""Backup names: dom0 makes PREFIX-TIMESTAMP names and retention
parses them with the one format in qbackup_protocol.names; if making and
parsing drifted apart, retention would silently keep every backup."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

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
