"""qbackup-server prune's pure selection: borg-style keep-last/daily/weekly/
monthly, applied per series (the name without dom0's timestamp)."""

from __future__ import annotations

import time

import pytest

from server_shell.admin import AdminError, parse, select, series_of

DAY = 86400
NONE = {"last": 0, "daily": 0, "weekly": 0, "monthly": 0}


def at(text: str) -> int:
    """Local-time timestamp of 'YYYY-MM-DD HH:MM'."""
    return int(time.mktime(time.strptime(text, "%Y-%m-%d %H:%M")))


def keep(**counts: int) -> dict[str, int]:
    return {**NONE, **counts}


def named(label: str, mtime: float) -> tuple[str, float]:
    """A backup of one series, as dom0 names it: s-<UTC stamp>, with LABEL kept apart."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(mtime))
    LABELS[f"s-{stamp}"] = label
    return f"s-{stamp}", mtime


LABELS: dict[str, str] = {}


def labels(kept: dict[str, str]) -> set[str]:
    return {LABELS[name] for name in kept}


def test_keep_last_keeps_the_newest() -> None:
    backups = [named(f"b{i}", 1000 + i) for i in range(5)]
    assert labels(select(backups, keep(last=2))) == {"b4", "b3"}


def test_keep_daily_keeps_the_newest_of_each_day() -> None:
    backups = [
        named("mon-early", at("2024-01-01 01:00")),
        named("mon-late", at("2024-01-01 23:00")),
        named("tue", at("2024-01-02 12:00")),
        named("wed-a", at("2024-01-03 08:00")),
        named("wed-b", at("2024-01-03 09:00")),
    ]
    assert labels(select(backups, keep(daily=2))) == {"wed-b", "tue"}


def test_keep_weekly_and_monthly_use_iso_weeks_and_months() -> None:
    backups = [named(f"d{i:02}", at("2024-01-01 12:00") + i * DAY) for i in range(60)]
    kept = {LABELS[name]: why for name, why in select(backups, keep(weekly=3, monthly=2)).items()}
    # newest day is 2024-02-29 (d59): weeks of Feb 29, Feb 25, Feb 18; months Feb, Jan.
    assert {name for name, why in kept.items() if why.startswith("weekly")} == {"d59", "d55", "d48"}
    assert {name for name, why in kept.items() if why.startswith("monthly")} == {"d30"}  # Jan 31
    assert kept["d59"].startswith("weekly")  # Feb's newest is already kept: no second slot used


def test_rules_combine_and_nothing_is_kept_twice() -> None:
    backups = [named(f"h{i}", at("2024-03-01 00:00") + i * 3600) for i in range(48)]
    assert labels(select(backups, keep(last=3, daily=2))) == {"h47", "h46", "h45", "h23"}


@pytest.mark.parametrize(
    ("name", "series"),
    [
        ("laptop/daily-20261201T020000Z", "laptop/daily"),
        ("laptop/weekly-20261129T030000Z", "laptop/weekly"),
        ("a-b-20240101T000000Z", "a-b"),
        ("plain", "plain"),
        ("x-20261201T020000", "x-20261201T020000"),  # not dom0's stamp: its own series
    ],
)
def test_series_is_the_name_without_doms_timestamp(name: str, series: str) -> None:
    assert series_of(name) == series


# Threat: one policy over two series removed one series' backups because the
# other's were newer (prune once treated every name under a prefix as one list).
def test_each_series_keeps_its_own_daily_backups() -> None:
    backups = [
        (f"laptop/daily-202612{day:02}T020000Z", at(f"2026-12-{day:02} 02:00")) for day in (1, 2, 3)
    ]
    backups.append(("laptop/weekly-20261204T030000Z", at("2026-12-04 03:00")))
    kept = select(backups, keep(daily=2))
    assert set(kept) == {
        "laptop/daily-20261203T020000Z", "laptop/daily-20261202T020000Z",
        "laptop/weekly-20261204T030000Z",
    }


def test_empty_storage_selects_nothing() -> None:
    assert select([], keep(last=1)) == {}


@pytest.mark.parametrize(
    "arguments",
    [
        ["prune", "--account", "a"],
        ["prune", "--account", "a", "--keep-last", "0"],
        ["prune", "--account", "a", "--keep-last", "-1", "--keep-daily", "3"],
        ["prune", "--account", "a", "--keep-daily", "x"],
        ["prune", "--keep-daily", "1"],  # whose storage? never guessed
        ["prune", "--account", "a", "--keep-daily", "1", "--bogus"],
        ["status", "--max-age", "soon"],
        ["scrub"],
        [],
    ],
)
def test_admin_arguments_refused(arguments: list[str]) -> None:
    with pytest.raises(AdminError):
        parse(arguments)


def test_admin_arguments_parsed() -> None:
    options = parse(["prune", "--account", "bk", "--keep-daily", "7", "--dry-run"])
    assert (options.account, options.keep_daily, options.keep_last, options.dry_run) == (
        "bk", 7, 0, True)
    assert parse(["status", "--max-age", "36h", "--json"]).max_age == 36 * 3600
