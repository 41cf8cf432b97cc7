"""Backup names, retention and durations: how dom0 names a backup, which
backups a retention policy keeps, how old a backup may be, and how every
part writes a timeout.

Pure data and pure functions, standard library only. dom0 makes the names
(PREFIX-TIMESTAMP) and checks the server against its policy; the server
admin's tool, ``qbackup-server``, prunes by the same policy. Both apply the
SAME rule, so a prune never looks like an attack. The carrier reads its
timeouts with the same grammar as dom0. The login shell never imports this
module: names are opaque to it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone

# Backup names dom0 makes: PREFIX-YYYYmmddTHHMMSSZ (UTC). The format, the
# pattern that finds it in a name and the suffix's length are spelled here
# only (a test checks the three agree): if making and parsing drifted apart,
# retention would silently keep every backup.
BACKUP_TIMESTAMP_FORMAT = "%Y%m%dT%H%M%SZ"
TIMESTAMPED_NAME = re.compile(r"(.+)-([0-9]{8}T[0-9]{6}Z)")
TIMESTAMP_SUFFIX_LENGTH = len("-20261122T235959Z")
MAX_KEEP = 100_000
# Each rule: the period a backup's UTC time falls in.
RETENTION_PERIODS: dict[str, Callable[[datetime], tuple[int, ...]]] = {
    "daily": lambda moment: (moment.year, moment.month, moment.day),
    "weekly": lambda moment: tuple(moment.isocalendar())[:2],
    "monthly": lambda moment: (moment.year, moment.month),
    "yearly": lambda moment: (moment.year,),
}


# Durations: a number and a unit, s, m, h or d. What a bare number means
# is the caller's: HOURS for ages (`--max-age` of `qbackup status` and
# `qbackup-server status`, as dom0's `--max-age 36` always did), SECONDS for
# timeouts and delays (dom0's job settings, the carrier's carrier.yaml, as
# every file written before units were taken meant them). Units largest
# first: show_age picks the first that fits.
DURATION = re.compile(r"([0-9]{1,9}(?:\.[0-9]{1,6})?)([smhd]?)")
DURATION_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
BARE_UNIT_MEANS = {"s": "seconds", "h": "hours"}


class InvalidPolicy(ValueError):
    """Raised when a retention policy keeps nothing or has a bad count."""


def timestamped_name(prefix: str, moment: datetime) -> str:
    """Given a PREFIX and a MOMENT (naive: local time), return
    PREFIX-<its UTC timestamp>. Whether that is a valid backup name is the
    wire's rule (check_name), for the caller to apply."""
    # timezone.utc, not datetime.UTC (3.11+): qbackup-server runs on the
    # server distribution's python3.
    stamp = moment.astimezone(timezone.utc).strftime(BACKUP_TIMESTAMP_FORMAT)  # noqa: UP017
    return f"{prefix}-{stamp}"


def split_backup_name(name: str) -> tuple[str, datetime] | None:
    """Given a backup NAME, return (prefix, UTC time) if it is
    PREFIX-YYYYmmddTHHMMSSZ with a real date, else None."""
    found = TIMESTAMPED_NAME.fullmatch(name)
    if found is None:
        return None
    try:
        moment = datetime.strptime(found.group(2), BACKUP_TIMESTAMP_FORMAT)
    except ValueError:
        return None
    return found.group(1), moment.replace(tzinfo=timezone.utc)  # noqa: UP017


def parse_duration(text: str, bare_unit: str, what: str = "a duration",
                   examples: str = "90s, 5m") -> float:
    """Given a duration like `90s`, `15m`, `36h`, `7d`, or a bare number in
    BARE_UNIT ('s' or 'h'), return seconds; raise ValueError saying how to
    write WHAT (with EXAMPLES) otherwise."""
    found = DURATION.fullmatch(text.strip().lower())
    if found is None:
        raise ValueError(f"not {what}: use a number and a unit, s, m, h or d ({examples}; a"
                         f" bare number means {BARE_UNIT_MEANS[bare_unit]})")
    return float(found.group(1)) * DURATION_UNITS[found.group(2) or bare_unit]


def parse_age(text: str) -> float:
    """Given an age like `90s`, `15m`, `36h`, `7d` or `36` (hours), return
    seconds; raise ValueError saying how to write one otherwise."""
    return parse_duration(text, "h", "an age", "36h, 7d")


def show_age(seconds: float) -> str:
    """Given a duration in seconds, return it as parse_duration reads it, in
    the largest unit it holds twice: whole if it is (`36h`, `7d`, `90s`), else to
    a tenth (`40.3h`)."""
    unit, size = next((unit, size) for unit, size in DURATION_UNITS.items()
                      if abs(seconds) >= 2 * size or unit == "s")
    return f"{seconds / size:.0f}{unit}" if seconds % size == 0 else f"{seconds / size:.1f}{unit}"


@dataclass(frozen=True)
class RetentionPolicy:
    """How many periods of backups to keep, per prefix: e.g. daily=7 keeps the
    newest backup of each of the 7 newest days that have one."""

    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0

    def __post_init__(self) -> None:
        counts = [getattr(self, rule) for rule in RETENTION_PERIODS]
        for count in counts:
            if not isinstance(count, int) or isinstance(count, bool) \
                    or not 0 <= count <= MAX_KEEP:
                raise InvalidPolicy(f"keep counts are integers from 0 to {MAX_KEEP}")
        if not any(counts):
            raise InvalidPolicy("a retention policy must keep at least one period")

    def describe(self) -> str:
        """Return the policy as e.g. 'daily 7, weekly 4, monthly 12'."""
        return ", ".join(f"{rule} {getattr(self, rule)}" for rule in RETENTION_PERIODS
                         if getattr(self, rule))


def retained(names: Iterable[str], policy: RetentionPolicy) -> set[str]:
    """Given backup NAMES (of any prefixes) and a POLICY, return the names the
    policy keeps. Per prefix, separately: for each rule with a count N, the
    newest backup of each of the N newest periods (days, ISO weeks, months,
    years, in UTC, from the name's timestamp) that hold a backup; a backup
    kept by one rule also counts for the others. Names that are not
    PREFIX-TIMESTAMP are always kept. Pure: the same names give the same
    answer on every machine, whenever it runs."""
    by_prefix: dict[str, list[tuple[datetime, str]]] = {}
    kept: set[str] = set()
    for name in set(names):
        parts = split_backup_name(name)
        if parts is None:
            kept.add(name)
        else:
            by_prefix.setdefault(parts[0], []).append((parts[1], name))
    for backups in by_prefix.values():
        backups.sort(reverse=True)  # newest first
        for rule, period_of in RETENTION_PERIODS.items():
            count = getattr(policy, rule)
            seen: set[tuple[int, ...]] = set()
            for moment, name in backups:
                if len(seen) == count:
                    break
                period = period_of(moment)
                if period not in seen:
                    seen.add(period)
                    kept.add(name)
    return kept


def prunable(names: Iterable[str], policy: RetentionPolicy) -> list[str]:
    """Given backup NAMES and a POLICY, return the names it lets a prune
    remove, sorted."""
    names = set(names)
    return sorted(names - retained(names, policy))
