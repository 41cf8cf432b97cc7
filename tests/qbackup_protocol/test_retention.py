"""The retention rule both sides apply (qbackup_protocol.names):
dom0's tamper check accepts exactly what it lets a prune remove, and the
server admin's prune removes exactly that."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qbackup_protocol.names import InvalidPolicy, RetentionPolicy, prunable, retained


def daily_names(prefix: str, first: datetime, days: int) -> list[str]:
    return [f"{prefix}-{(first + timedelta(days=n)):%Y%m%dT%H%M%SZ}" for n in range(days)]


OCT_NOV = daily_names("laptop/daily", datetime(2026, 10, 1, 3, tzinfo=UTC), 61)


def test_policy_keeps_the_newest_of_each_newest_period() -> None:
    # Nov 30 2026 is a Monday (ISO week 49), Nov 29 a Sunday (week 48).
    policy = RetentionPolicy(daily=3, weekly=2, monthly=2)
    assert retained(OCT_NOV, policy) == {
        "laptop/daily-20261130T030000Z", "laptop/daily-20261129T030000Z",  # daily, weekly
        "laptop/daily-20261128T030000Z",  # daily
        "laptop/daily-20261031T030000Z",  # monthly: newest of October
    }
    assert len(prunable(OCT_NOV, policy)) == 57


def test_each_prefix_is_its_own_series() -> None:
    # Before: one --keep-daily 7 over laptop/daily and laptop/weekly treated them
    # as one series and removed daily backups the policy meant to keep.
    weekly = ["laptop/weekly-20261101T030000Z", "laptop/weekly-20261108T030000Z"]
    names = OCT_NOV[-7:] + weekly
    assert prunable(names, RetentionPolicy(daily=7)) == []


def test_only_the_newest_backup_of_a_day_counts() -> None:
    names = ["a-20261130T010000Z", "a-20261130T230000Z", "a-20261129T120000Z"]
    assert retained(names, RetentionPolicy(daily=2)) == {"a-20261130T230000Z",
                                                         "a-20261129T120000Z"}


@pytest.mark.parametrize("name", ["no-timestamp", "a-20261399T000000Z", "a-2026113T000000Z"])
def test_names_without_a_real_timestamp_are_never_pruned(name: str) -> None:
    assert name in retained([name, "a-20261130T000000Z"], RetentionPolicy(daily=1))


@pytest.mark.parametrize("counts", [{}, {"daily": -1}, {"weekly": True}, {"daily": 0}])
def test_a_policy_that_keeps_nothing_or_has_bad_counts_is_refused(
        counts: dict[str, int]) -> None:
    with pytest.raises(InvalidPolicy):
        RetentionPolicy(**counts)


MOMENTS = st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2030, 1, 1)).map(
    lambda moment: moment.replace(microsecond=0, tzinfo=UTC))
POLICIES = st.tuples(st.integers(1, 10), st.integers(0, 6), st.integers(0, 6),
                     st.integers(0, 3)).map(lambda counts: RetentionPolicy(*counts))


def names_at(moments: list[datetime], prefix: str = "p") -> list[str]:
    return [f"{prefix}-{moment:%Y%m%dT%H%M%SZ}" for moment in moments]


@given(st.lists(MOMENTS, min_size=1, max_size=60), POLICIES)
def test_kept_and_prunable_split_the_names_and_keep_the_newest(
        moments: list[datetime], policy: RetentionPolicy) -> None:
    names = names_at(moments)
    kept = retained(names, policy)
    assert kept | set(prunable(names, policy)) == set(names)
    assert not kept & set(prunable(names, policy))
    assert max(names) in kept  # timestamps sort as text: the newest always stays


@given(st.lists(MOMENTS, min_size=1, max_size=40), st.lists(MOMENTS, max_size=20), POLICIES)
def test_newer_backups_never_bring_a_pruned_one_back(
        old: list[datetime], later: list[datetime], policy: RetentionPolicy) -> None:
    # Why dom0 may judge with its CURRENT history what the server pruned
    # earlier: a name prunable then is prunable after newer backups too.
    newest = max(old)
    newer = [newest + (moment - datetime(2020, 1, 1, tzinfo=UTC)) + timedelta(seconds=1)
             for moment in later]
    before = set(prunable(names_at(old), policy))
    after = set(prunable(names_at(old + newer), policy))
    assert before <= after


# --- planted backups (a compromised carrier holds the account's key) ---------
def test_backups_dom0_never_committed_are_named_not_counted() -> None:
    from dom0.history import Run, compare_with_server
    from qbackup_protocol.wire import BackupRecord

    def run(name: str) -> Run:
        return Run("daily", "c", name, 5, "a" * 64, 0.0, 1.0, "ok")

    def record(name: str) -> BackupRecord:
        return BackupRecord(name, 5, "a" * 64, 1)

    mine = ["p-20261120T030000Z", "p-20261121T030000Z"]
    planted = "p-20261120T235959Z"  # would win Nov 20's daily bucket on the server
    future = "p-20991231T000000Z"
    before_history = "p-20250101T000000Z"  # most likely from a lost history: left alone
    other_prefix = "q-20261121T000000Z"
    listed = [record(name) for name in [*mine, planted, future, before_history, other_prefix]]
    now = datetime(2026, 11, 22, tzinfo=UTC).timestamp()
    comparison = compare_with_server([run(name) for name in mine], listed, True, "p",
                                     RetentionPolicy(daily=1), now)
    assert comparison.strangers == [planted, future]
    assert comparison.problems == []
    # The policy counts dom0's own backups only: Nov 20's vanishing would be
    # allowed because Nov 21 is newer, never because of the planted one.
    assert comparison.pruned == []
