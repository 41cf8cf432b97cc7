"""`qbackup-shell prune`: the local admin's retention run (never over SSH).

Selection is borg-style and pure (`select_backups`): backups are ordered
newest first by mtime; `--keep-last N` keeps the N newest; each of
`--keep-daily/weekly/monthly N` walks the same order and keeps the newest
backup of each of the N most recent days/ISO weeks/months that have one
(a backup already kept by an earlier rule fills its period without using
up a slot). Everything not kept is removed: the data, then its digest record. Stale
temporaries of crashed puts (unlocked, unwritten for a while) go too, and so do
staged uploads nobody committed within `pending_max_age` (staging.py).
Periods use the server's local time.
"""

from __future__ import annotations

import argparse
import os
import pwd
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import qbackup_protocol as protocol

from .config import DEFAULT_PENDING_MAX_AGE
from .errors import CommandRefused, NotAllowed, StorageError
from .put import remove_stale_temporaries
from .staging import remove_stale_pending
from .storage import (
    DIRECTORY_FLAGS,
    iter_backups,
    open_directory,
    record_name,
    remove_quietly,
    split_name,
)


@dataclass(frozen=True)
class Candidate:
    """A stored backup as prune sees it."""

    name: str
    mtime: int


@dataclass(frozen=True)
class Rules:
    """How many backups each rule keeps."""

    last: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0


@dataclass(frozen=True)
class PruneRequest:
    """A parsed prune command line."""

    rules: Rules
    root: str | None
    account: str | None
    prefix: str
    dry_run: bool


def _day(mtime: int) -> object:
    return time.strftime("%Y-%m-%d", time.localtime(mtime))


def _week(mtime: int) -> object:
    return time.strftime("%G-W%V", time.localtime(mtime))


def _month(mtime: int) -> object:
    return time.strftime("%Y-%m", time.localtime(mtime))


def select_backups(
    candidates: Iterable[Candidate], rules: Rules
) -> tuple[dict[str, str], list[Candidate]]:
    """Given the backups and the rules, return ({kept name: reason}, [to remove]),
    the removals newest first."""
    newest_first = sorted(candidates, key=lambda c: (c.mtime, c.name), reverse=True)
    kept: dict[str, str] = {}
    periods: list[tuple[str, int, Callable[[int], object]]] = [
        ("last", rules.last, lambda mtime: object()),  # every backup is its own period
        ("daily", rules.daily, _day),
        ("weekly", rules.weekly, _week),
        ("monthly", rules.monthly, _month),
    ]
    for rule, count, period_of in periods:
        used = 0
        previous: object = None
        for candidate in newest_first:
            if used == count:
                break
            period = period_of(candidate.mtime)
            if period == previous:
                continue  # only the newest backup of a period can represent it
            previous = period
            if candidate.name not in kept:
                kept[candidate.name] = f"{rule} #{used + 1}"
                used += 1
    removed = [candidate for candidate in newest_first if candidate.name not in kept]
    return kept, removed


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise CommandRefused(f"prune: {message}")


def parse_prune_arguments(arguments: Sequence[str]) -> PruneRequest:
    """Given the words after `prune`, return the PruneRequest; raise
    CommandRefused if they are malformed or keep nothing at all."""
    parser = _Parser(prog="qbackup-shell prune", add_help=False)
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--root")
    where.add_argument("--account")
    for rule in ("last", "daily", "weekly", "monthly"):
        parser.add_argument(f"--keep-{rule}", type=int, default=0, metavar="N")
    parser.add_argument("--prefix", default="")
    parser.add_argument("--dry-run", action="store_true")
    values = parser.parse_args(list(arguments))
    rules = Rules(values.keep_last, values.keep_daily, values.keep_weekly, values.keep_monthly)
    if min(rules.last, rules.daily, rules.weekly, rules.monthly) < 0:
        raise CommandRefused("prune: keep counts cannot be negative")
    # A prune without a single keep rule would delete every backup: almost
    # certainly a typo, so it is refused rather than obeyed.
    if max(rules.last, rules.daily, rules.weekly, rules.monthly) == 0:
        raise CommandRefused("prune: give at least one --keep-* rule above 0")
    try:
        protocol.check_prefix(values.prefix)
    except protocol.InvalidName:
        raise CommandRefused("prune: invalid --prefix") from None
    return PruneRequest(rules, values.root, values.account, values.prefix, values.dry_run)


def drop_privileges(uid: int, gid: int) -> None:
    """Given the storage owner's ids, become that user if we are root, so a
    prune started by root's cron touches the storage with the account's rights
    only (a symlink the account planted cannot make root delete elsewhere)."""
    if os.getuid() != 0:
        if uid != os.getuid():
            raise NotAllowed("prune: that storage belongs to another account; run as its owner")
        return
    if uid == 0:
        raise NotAllowed("prune: refusing to prune a storage owned by root")
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)


def resolve_owner(request: PruneRequest) -> pwd.struct_passwd:
    """Given the request, return the account whose storage is pruned; raise
    NotAllowed if it cannot be told."""
    try:
        if request.account is not None:
            return pwd.getpwnam(request.account)
        if request.root is not None:
            return pwd.getpwuid(os.stat(request.root).st_uid)
        return pwd.getpwuid(os.getuid())
    except (KeyError, OSError):
        raise NotAllowed("prune: unknown account or storage root") from None


def collect_candidates(root_fd: int, prefix: str) -> list[Candidate]:
    """Given the root descriptor and a prefix, return every backup under it."""
    return [
        Candidate(name=name, mtime=int(info.st_mtime))
        for name, _dir_fd, _leaf, info in iter_backups(root_fd, "", 0)
        if name.startswith(prefix)
    ]


def remove_backup(root_fd: int, name: str) -> None:
    """Given the root descriptor and a NAME, remove the backup and its record."""
    segments, leaf = split_name(name)
    dir_fd = open_directory(root_fd, segments, create=False)
    try:
        try:
            os.unlink(leaf, dir_fd=dir_fd)
        except OSError as error:
            reason = os.strerror(error.errno or 0)
            raise StorageError(f"prune: cannot remove a backup: {reason}") from None
        remove_quietly(dir_fd, record_name(leaf))
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def remove_crash_leftovers(dir_fd: int, pending_max_age: int, depth: int = 0) -> None:
    """Given a directory descriptor, remove stale put temporaries and staged
    uploads older than PENDING_MAX_AGE in it and in every (non-dot,
    non-symlink) directory below: leftovers in a directory that never sees
    another put would otherwise stay forever."""
    remove_stale_temporaries(dir_fd, own="")
    remove_stale_pending(dir_fd, pending_max_age)
    with os.scandir(dir_fd) as scan:
        children = sorted(entry.name for entry in scan if not entry.name.startswith("."))
    for name in children:
        if depth + 1 >= protocol.MAX_NAME_DEPTH:
            break
        try:
            child = os.open(name, DIRECTORY_FLAGS, dir_fd=dir_fd)
        except OSError:
            continue  # a file, a symlink, or gone: nothing to walk into
        try:
            remove_crash_leftovers(child, pending_max_age, depth + 1)
        finally:
            os.close(child)


def run_prune(
    root_fd: int,
    request: PruneRequest,
    emit: Callable[[str], None],
    pending_max_age: int = DEFAULT_PENDING_MAX_AGE,
) -> int:
    """Given the root descriptor, the request, a line printer and the age of
    abandoned staged uploads, prune and return how many backups were (or,
    with --dry-run, would be) removed."""
    kept, removed = select_backups(collect_candidates(root_fd, request.prefix), request.rules)
    for name, reason in sorted(kept.items()):
        emit(f"keep {name} ({reason})")
    for candidate in removed:
        if request.dry_run:
            emit(f"would remove {candidate.name}")
        else:
            remove_backup(root_fd, candidate.name)
            emit(f"removed {candidate.name}")
    if not request.dry_run:
        remove_crash_leftovers(root_fd, pending_max_age)
    return len(removed)
