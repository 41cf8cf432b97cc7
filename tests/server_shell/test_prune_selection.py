"""prune's pure selection: borg-style keep-last/daily/weekly/monthly."""

from __future__ import annotations

import time

import pytest

from server_shell.errors import CommandRefused
from server_shell.prune import Candidate, Rules, parse_prune_arguments, select_backups

DAY = 86400


def at(text: str) -> int:
    """Local-time timestamp of 'YYYY-MM-DD HH:MM'."""
    return int(time.mktime(time.strptime(text, "%Y-%m-%d %H:%M")))


def names(candidates: list[Candidate]) -> list[str]:
    return [candidate.name for candidate in candidates]


def test_keep_last_keeps_the_newest() -> None:
    backups = [Candidate(f"b{i}", 1000 + i) for i in range(5)]
    kept, removed = select_backups(backups, Rules(last=2))
    assert set(kept) == {"b4", "b3"}
    assert names(removed) == ["b2", "b1", "b0"]


def test_keep_daily_keeps_the_newest_of_each_day() -> None:
    backups = [
        Candidate("mon-early", at("2024-01-01 01:00")),
        Candidate("mon-late", at("2024-01-01 23:00")),
        Candidate("tue", at("2024-01-02 12:00")),
        Candidate("wed-a", at("2024-01-03 08:00")),
        Candidate("wed-b", at("2024-01-03 09:00")),
    ]
    kept, removed = select_backups(backups, Rules(daily=2))
    assert set(kept) == {"wed-b", "tue"}
    assert set(names(removed)) == {"wed-a", "mon-late", "mon-early"}


def test_keep_weekly_and_monthly_use_iso_weeks_and_months() -> None:
    backups = [Candidate(f"d{i:02}", at("2024-01-01 12:00") + i * DAY) for i in range(60)]
    kept, _ = select_backups(backups, Rules(weekly=3, monthly=2))
    # newest day is 2024-02-29 (d59): weeks of Feb 29, Feb 25, Feb 18; months Feb, Jan.
    assert {name for name, why in kept.items() if why.startswith("weekly")} == {"d59", "d55", "d48"}
    assert {name for name, why in kept.items() if why.startswith("monthly")} == {"d30"}  # Jan 31
    assert kept["d59"].startswith("weekly")  # Feb's newest is already kept: no second slot used


def test_rules_combine_and_nothing_is_kept_twice() -> None:
    backups = [Candidate(f"h{i}", at("2024-03-01 00:00") + i * 3600) for i in range(48)]
    kept, removed = select_backups(backups, Rules(last=3, daily=2))
    assert set(kept) == {"h47", "h46", "h45", "h23"}
    assert len(removed) == 44


def test_empty_storage_selects_nothing() -> None:
    assert select_backups([], Rules(last=1)) == ({}, [])


@pytest.mark.parametrize(
    "arguments",
    [
        [],
        ["--keep-last", "0"],
        ["--keep-last", "-1"],
        ["--keep-daily", "x"],
        ["--bogus"],
        ["--keep-last", "1", "--prefix", "../x"],
        ["--keep-last", "1", "--root", "/a", "--account", "b"],
    ],
)
def test_prune_arguments_refused(arguments: list[str]) -> None:
    with pytest.raises(CommandRefused):
        parse_prune_arguments(arguments)


def test_prune_arguments_parsed() -> None:
    request = parse_prune_arguments(
        ["--account", "bk", "--keep-daily", "7", "--prefix", "lap/", "--dry-run"]
    )
    assert request.rules == Rules(daily=7) and request.account == "bk"
    assert request.prefix == "lap/" and request.dry_run and request.root is None
