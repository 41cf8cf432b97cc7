"""qbackup-server: the server admin's tool, run as root (cron, monitoring).
sshd never runs it: it is not a login shell, and qbackup-shell imports none of it.

  prune --account NAME [--keep-daily N] [--keep-weekly N] [--keep-monthly N]
        [--keep-yearly N] [--dry-run]
  status [--account NAME] [--max-age 36h] [--json]
  check [--account NAME]

It acts only on accounts whose login shell is qbackup-shell (never on an
ordinary /bin/bash user), and on each account's storage only as that account:
a forked child drops to the owner's uid and gid before it opens anything, and
walks the storage with the shell's own descriptor-based walker (symlinks are
never followed). Exit codes are those of monitoring plugins, with one
summary line first: 0 OK, 1 WARNING (status: stale uploads, free space below
the reserve, quota 90% used), 2 CRITICAL (status: an account without a
committed backup younger than --max-age; check: a damaged backup), 3 UNKNOWN
(cannot run: not root, bad arguments, not a qbackup account, or an account's
storage could not be read or changed).

Retention is qbackup_protocol.names.prunable, the rule dom0's tamper check also
applies (so a prune never looks like an attack there): per prefix (a name
without the timestamp dom0 appends: `laptop/daily-20261201T020000Z` is in
`laptop/daily`), so one policy over `laptop/daily` and `laptop/weekly` keeps
each series' own backups; --keep-daily/weekly/monthly/yearly N keep the
newest backup of each of the N newest UTC days/ISO weeks/months/years that
have one; names without dom0's timestamp are always kept, and so are names
whose timestamp the file's mtime belies (see implausible()).
"""

import argparse
import hashlib
import json
import os
import pwd
import stat
import sys
import time
from collections.abc import Callable
from typing import Any

from qbackup_protocol import names

from . import storage
from .config import ShellError, load_config, parse_duration

OK = 0
WARNING = 1
CRITICAL = 2
UNKNOWN = 3
LEVELS = ("OK", "WARNING", "CRITICAL", "UNKNOWN")
RULES = tuple(names.RETENTION_PERIODS)
# A backup's name carries the time its backup started; its file's mtime is
# when its upload ended: within two days of the start (a long backup, a
# resumed one), give or take an hour of clock skew between dom0 and server.
PLAUSIBLE_BEFORE = 48 * 3600
CLOCK_SKEW = 3600


class AdminError(Exception):
    """The tool cannot do what was asked (exit UNKNOWN)."""


def committed(root_fd: int) -> list[storage.Entry]:
    """Given the root, return every committed backup (regular files a client
    could have named; dot-files are the shell's own)."""
    return [found for found in storage.walk(root_fd)
            if stat.S_ISREG(found.info.st_mode) and storage.is_client_name(found.leaf)]


def in_directory(root_fd: int, name: str, work: Callable[[int, str], Any]) -> Any:
    """Given a backup's NAME, run WORK(directory fd, leaf), walking there again
    with O_NOFOLLOW (whatever changed since the listing is never followed)."""
    place = storage.split_name(name)
    dir_fd = storage.open_dirs(root_fd, place.dirs, "no such backup").fd
    try:
        return work(dir_fd, place.leaf)
    finally:
        os.close(dir_fd)


def remove_backup(dir_fd: int, leaf: str) -> None:
    os.unlink(leaf, dir_fd=dir_fd)  # the data first: a record alone is harmless
    storage.remove_quietly(dir_fd, storage.dot(leaf, "record"))
    os.fsync(dir_fd)


def verify(dir_fd: int, leaf: str) -> str:
    stored = storage.read_digest(dir_fd, storage.dot(leaf, "record"))
    fd = storage.open_file(dir_fd, leaf).fd
    hasher = hashlib.sha256()
    size = 0
    try:
        while data := os.read(fd, 4 * 1024 * 1024):
            hasher.update(data)
            size += len(data)
    finally:
        os.close(fd)
    if stored == storage.Digest(size, hasher.hexdigest()):
        return ""
    return "no digest record" if stored is None else "differs"


def implausible(found: storage.Entry) -> bool:
    """Given a committed backup, return True if its name carries dom0's
    timestamp but one its file's mtime (when its put ended) belies: a name
    planted with a chosen date to win a period's bucket and push the real
    backup of that period out. Such a backup never counts for retention (it
    neither fills a bucket nor is pruned by policy); status warns about it."""
    parts = names.split_backup_name(found.name)
    ended = found.info.st_mtime
    return parts is not None and not (
        ended - PLAUSIBLE_BEFORE <= parts[1].timestamp() <= ended + CLOCK_SKEW)


def prune(root_fd: int, config: Any, options: argparse.Namespace) -> dict[str, Any]:
    backups = [found.name for found in committed(root_fd) if not implausible(found)]
    removable = names.prunable(backups, options.policy)
    lines = [f"keep {name}" for name in backups if name not in removable]
    for name in removable:
        if not options.dry_run:
            in_directory(root_fd, name, remove_backup)
        lines.append(f"{'would remove' if options.dry_run else 'removed'} {name}")
    try:  # directories it empties are removed only while no upload can be about to use them
        lock = storage.take_upload_lock(root_fd, "(qbackup-server prune)")
    except ShellError:
        lock = -1
    try:
        swept = storage.sweep(root_fd, config.max_age, dry_run=options.dry_run,
                              empty_dirs=lock >= 0)
    finally:
        if lock >= 0:
            os.close(lock)
    for name in swept.removed:
        lines.append(f"{'would remove' if options.dry_run else 'removed'} expired upload {name}")
    return {"level": OK, "lines": lines}


def status(root_fd: int, config: Any, options: argparse.Namespace) -> dict[str, Any]:
    backups = committed(root_fd)
    now = time.time()
    newest = max(backups, key=lambda found: found.info.st_mtime, default=None)
    uploads = {"staged": 0, "partial": 0, "stale": 0,
               "implausible": sum(implausible(found) for found in backups)}
    for found in storage.walk(root_fd):
        for kind, age in config.max_age.items():
            if found.leaf.startswith(".") and found.leaf.endswith(storage.SUFFIXES[kind]):
                uploads["staged" if kind == "pending" else "partial"] += 1
                uploads["stale"] += now - found.info.st_mtime > age
    used = storage.sweep(root_fd, None).used
    free = storage.free_bytes(root_fd)
    report = {"count": len(backups), "newest": newest and newest.name,
              "age": newest and int(now - newest.info.st_mtime),
              "size": newest and newest.info.st_size, **uploads, "free": free,
              "reserve": config.reserve, "quota": config.quota, "used": used}
    level = OK
    if uploads["stale"] or uploads["implausible"] or free < config.reserve or (
            config.quota and used > 0.9 * config.quota):
        level = WARNING
    if newest is None or report["age"] > options.max_age:
        level = CRITICAL
    return {"level": level, "report": report}


def check(root_fd: int, config: Any, options: argparse.Namespace) -> dict[str, Any]:
    lines = []
    damaged = 0
    for found in committed(root_fd):
        problem = in_directory(root_fd, found.name, verify)
        damaged += bool(problem)
        lines.append(f"DAMAGED {found.name} ({problem})" if problem else f"ok {found.name}")
    return {"level": CRITICAL if damaged else OK, "lines": lines, "damaged": damaged}


def as_owner(entry: pwd.struct_passwd, config_path: str, action: Callable[..., dict[str, Any]],
             options: argparse.Namespace) -> dict[str, Any]:
    """Given an account, run ACTION on its storage in a child that has become
    that account (so a link it planted cannot make root touch anything
    else); return the child's result (level UNKNOWN with an error if it failed)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop root for good, then touch the storage
        os.close(read_end)
        try:
            os.setgroups([])
            os.setgid(entry.pw_gid)
            os.setuid(entry.pw_uid)
            config = load_config(config_path, entry.pw_name)
            root_fd = storage.open_root(config.root or entry.pw_dir)
            result = action(root_fd, config, options)
        except (ShellError, OSError) as error:
            result = {"level": UNKNOWN, "error": str(error) if isinstance(error, ShellError)
                      else f"I/O error: {error.strerror}"}
        with os.fdopen(write_end, "w") as pipe:
            json.dump(result, pipe)
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        text = pipe.read()
    os.waitpid(pid, 0)
    try:
        return dict(json.loads(text))
    except ValueError:
        return {"level": UNKNOWN, "error": "the account's worker failed"}


def accounts(shell_path: str, name: str | None) -> list[pwd.struct_passwd]:
    """Given the installed shell's path and an account name (None = all),
    return the accounts to act on: only those whose login shell is that shell."""
    if name is not None:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise AdminError(f"no account {name!r}") from None
        if entry.pw_shell != shell_path or entry.pw_uid == 0:
            raise AdminError(f"{name} is not a qbackup account (its login shell is not "
                             f"{shell_path}); nothing done")
        return [entry]
    return sorted((e for e in pwd.getpwall() if e.pw_shell == shell_path and e.pw_uid != 0),
                  key=lambda e: e.pw_name)


def parse(argv: list[str]) -> argparse.Namespace:
    class Parser(argparse.ArgumentParser):
        def error(self, message: str) -> None:  # type: ignore[override]
            raise AdminError(message)

    parser = Parser(prog="qbackup-server")
    commands = parser.add_subparsers(dest="command", required=True)
    pruning = commands.add_parser("prune")
    pruning.add_argument("--account", required=True)
    for rule in RULES:
        pruning.add_argument(f"--keep-{rule}", type=int, default=0, metavar="N")
    pruning.add_argument("--dry-run", action="store_true")
    reporting = commands.add_parser("status")
    reporting.add_argument("--account")
    reporting.add_argument("--max-age", type=parse_duration, default=36 * 3600)
    reporting.add_argument("--json", action="store_true")
    commands.add_parser("check").add_argument("--account")
    options = parser.parse_args(argv)
    if options.command == "prune":
        try:  # without one keep rule above 0 prune would delete everything: refused
            options.policy = names.RetentionPolicy(
                **{rule: getattr(options, f"keep_{rule}") for rule in RULES})
        except names.InvalidPolicy as error:
            raise AdminError(f"prune: {error}") from None
    return options


def main(argv: list[str], config_path: str, shell_path: str) -> int:
    """Given the arguments, the shell's config and the installed shell's path,
    run one admin command; return its monitoring-plugin exit code."""
    try:
        if os.geteuid() != 0:
            raise AdminError("qbackup-server must run as root")
        options = parse(argv)
        entries = accounts(shell_path, options.account)
    except AdminError as error:
        print(f"QBACKUP UNKNOWN - {error}", file=sys.stderr)
        return UNKNOWN
    action = {"prune": prune, "status": status, "check": check}[options.command]
    results = {e.pw_name: as_owner(e, config_path, action, options) for e in entries}
    level = max([r["level"] for r in results.values()], default=OK)
    if options.command == "status" and options.json:
        print(json.dumps({"status": LEVELS[level], "accounts": {
            name: r.get("report", {"error": r.get("error")}) for name, r in results.items()}}))
        return level
    bad = [name for name, r in results.items() if r["level"] == level != OK]
    detail = f": {', '.join(bad)}" if bad else ""
    print(f"QBACKUP {options.command.upper()} {LEVELS[level]} - {len(results)} account(s){detail}")
    for name, result in results.items():
        if "error" in result:
            print(f"{name}: error: {result['error']}")
        for line in result.get("lines", []):
            print(f"{name}: {line}")
        if "report" in result:
            print(f"{name}: " + " ".join(f"{k}={v}" for k, v in result["report"].items()))
    return level
