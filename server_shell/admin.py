"""qbackup-server: the server admin's tool, run as root (cron, monitoring).
sshd never runs it: it is not a login shell, and qbackup-shell imports none of it.

It acts only on accounts whose login shell is qbackup-shell (never on an
ordinary /bin/bash user), and on each account's storage only as that account:
a forked child drops to the owner's uid and gid before it opens anything, and
walks the storage with the shell's own descriptor-based walker (symlinks are
never followed). What it prints and how it exits: the parser's help (HELP,
ServerExit), which README's "Server administration" follows.

Retention is qbackup_protocol.names.prunable, the rule dom0's tamper check also
applies (so a prune never looks like an attack there): per prefix (a name
without the timestamp dom0 appends: `laptop/daily-20261201T020000Z` is in
`laptop/daily`), so one policy over `laptop/daily` and `laptop/weekly` keeps
each series' own backups; --keep-daily/weekly/monthly/yearly N keep the
newest backup of each of the N newest UTC days/ISO weeks/months/years that
have one; names without dom0's timestamp are always kept, and so are names
whose timestamp the file's mtime belies (see implausible()). A stored file
that is no backup name (a converted account's old files: a path longer than
a name may be, a segment starting with '-') is skipped and reported, never
touched.
"""

import argparse
import hashlib
import json
import os
import pwd
import re
import stat
import sys
import textwrap
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from qbackup_protocol import __version__, names, wire

from . import storage
from .config import ShellError, load_config

RULES = tuple(names.RETENTION_PERIODS)
# A backup's name carries the time its backup started; its file's mtime is
# when its upload ended: within two days of the start (a long backup, a
# resumed one), give or take an hour of clock skew between dom0 and server.
PLAUSIBLE_BEFORE = 48 * 3600
CLOCK_SKEW = 3600
QUOTA_WARNING = 0.9
HELP_WIDTH = 79
PERIODS = {"daily": "days", "weekly": "ISO weeks", "monthly": "months", "yearly": "years"}
# A stored name made only of the names' characters: safe to print. Any other
# (a newline, an escape planted by hand) is never printed, nor touched.
PRINTABLE_NAME = re.compile(r"[A-Za-z0-9._/-]+")


class ServerExit(wire.ExitStatus):
    """How qbackup-server ends: a monitoring plugin's codes (Nagios, Icinga),
    after one summary line; the worst account decides."""

    OK = 0, "all is well"
    WARNING = 1, ("status: stale uploads, implausibly dated backups, free space below the "
                  "reserve, or a quota 90% used")
    CRITICAL = 2, ("status: an account without a backup younger than --max-age; "
                   "check: a damaged backup")
    UNKNOWN = 3, ("could not run: not root, bad arguments, not a qbackup account, or an "
                  "account's storage could not be read or changed")


# What each command reports of an account, by kind (the keys of its --json).
KINDS = {"prune": ("removed", "expired", "kept", "skipped"),
         "check": ("ok", "damaged", "skipped"), "status": ("problems", "skipped")}
# How the text report shows an entry of each kind (prune --dry-run: "would remove").
SHOWN = {"removed": "removed {}", "expired": "removed expired upload {}", "kept": "keep {}",
         "skipped": "skipped {}", "ok": "ok {}", "damaged": "DAMAGED {}", "problems": "{}"}


class AdminError(Exception):
    """The tool cannot do what was asked (exit UNKNOWN)."""


@dataclass
class Report:
    """What a command found in one account: its level, the error that cut it
    short (what it did before stays reported), its entries by kind (KINDS)
    and, for status, the account's figures."""

    level: int = ServerExit.OK
    error: str | None = None
    found: dict[str, list[str]] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)

    def add(self, kind: str, entry: str, level: int = ServerExit.OK) -> None:
        self.found[kind].append(entry)
        self.level = max(self.level, level)


@dataclass(frozen=True)
class Contents:
    """An account's storage as the admin sees it: its committed backups, and
    what is there yet no backup name ("NAME (why)")."""

    backups: list[storage.Entry]
    skipped: list[str]


def contents(root_fd: int) -> Contents:
    """Given the root, return its committed backups (regular files with a
    valid name) and what it skipped: files, and directories the walk does not
    enter, whose names are not names (by name if it is printable, else counted)."""
    backups = []
    skipped = []
    unprintable = 0
    for found in storage.walk(root_fd):
        kind = stat.S_IFMT(found.info.st_mode)
        if found.leaf.startswith(".") or kind not in (stat.S_IFREG, stat.S_IFDIR):
            continue  # the shell's own files and ~/.ssh; a link or a FIFO is no backup
        # Only the account's own are reported: root's lost+found is nobody's concern.
        own = found.info.st_uid == os.geteuid()
        if not PRINTABLE_NAME.fullmatch(found.name):
            if own:  # counted, never printed: it may hold a newline or an escape
                unprintable += 1
            continue
        try:
            wire.check_name(found.name)
        except wire.InvalidName as error:
            if own and (kind == stat.S_IFREG or not storage.is_client_name(found.leaf)):
                skipped.append(f"{found.name} (not a backup name: {error})")
            continue
        if kind == stat.S_IFREG:
            backups.append(found)
    if unprintable:
        skipped.append(f"{unprintable} file(s) whose names hold characters no name may have")
    return Contents(backups, skipped)


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


def prune(root_fd: int, config: Any, options: argparse.Namespace, report: Report) -> None:
    """Remove what the policy lets go and expired uploads, each reported once
    it is gone (an error later leaves the report of what went before)."""
    found = contents(root_fd)
    report.found["skipped"] = found.skipped
    backups = [entry.name for entry in found.backups]
    removable = names.prunable([entry.name for entry in found.backups
                                if not implausible(entry)], options.policy)
    going = set(removable)
    report.found["kept"] = [name for name in backups if name not in going]
    for name in removable:
        if not options.dry_run:
            in_directory(root_fd, name, remove_backup)
        report.add("removed", name)
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
    report.found["expired"] = swept.removed


def status(root_fd: int, config: Any, options: argparse.Namespace, report: Report) -> None:
    """Report the account's figures, and each problem with its level."""
    found = contents(root_fd)
    report.found["skipped"] = found.skipped
    backups = found.backups
    now = time.time()
    newest = max(backups, key=lambda entry: entry.info.st_mtime, default=None)
    uploads = {"staged": 0, "partial": 0, "stale": 0,
               "implausible": sum(implausible(entry) for entry in backups)}
    for entry in storage.walk(root_fd):
        kind = storage.upload_kind(entry.leaf)
        if kind is not None:
            uploads["staged" if kind == "pending" else "partial"] += 1
            uploads["stale"] += now - entry.info.st_mtime > config.max_age[kind]
    used = storage.sweep(root_fd, None).used
    free = storage.free_bytes(root_fd)
    age = None if newest is None else now - newest.info.st_mtime
    report.facts = {"count": len(backups), "newest": newest and newest.name,
                    "age": None if age is None else int(age),
                    "size": newest and newest.info.st_size, **uploads, "free": free,
                    "reserve": config.reserve, "quota": config.quota, "used": used}
    if age is None:
        report.add("problems", "no committed backup", ServerExit.CRITICAL)
    elif age > options.max_age:
        report.add("problems", f"newest backup {names.show_age(age)} old > "
                   f"{names.show_age(options.max_age)}", ServerExit.CRITICAL)
    if uploads["stale"]:
        report.add("problems", f"{uploads['stale']} stale upload(s), never committed or "
                   "resumed (prune removes them)", ServerExit.WARNING)
    if uploads["implausible"]:
        report.add("problems", f"{uploads['implausible']} backup(s) whose name's date their "
                   "upload's time belies", ServerExit.WARNING)
    if free < config.reserve:
        report.add("problems", f"free space below the reserve ({free} < {config.reserve} bytes)",
                   ServerExit.WARNING)
    if config.quota and used > QUOTA_WARNING * config.quota:
        report.add("problems", f"quota {100 * used // config.quota}% used", ServerExit.WARNING)


def check(root_fd: int, config: Any, options: argparse.Namespace, report: Report) -> None:
    """Re-hash every backup against its record; change nothing."""
    found = contents(root_fd)
    report.found["skipped"] = found.skipped
    for entry in found.backups:
        problem = in_directory(root_fd, entry.name, verify)
        if problem:
            report.add("damaged", f"{entry.name} ({problem})", ServerExit.CRITICAL)
        else:
            report.add("ok", entry.name)


ACTIONS = {"prune": prune, "status": status, "check": check}


def run_as_owner(entry: pwd.struct_passwd, config_path: str,
                 options: argparse.Namespace) -> Report:
    """Given an account, run the command on its storage in a child that has
    become that account (so a link it planted cannot make root touch
    anything else); return the child's Report, level UNKNOWN with the error
    if it failed, with whatever it did before."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop root for good, then touch the storage
        os.close(read_end)
        report = Report(found={kind: [] for kind in KINDS[options.command]})
        try:
            os.setgroups([])
            os.setgid(entry.pw_gid)
            os.setuid(entry.pw_uid)
            config = load_config(config_path, entry.pw_name)
            root_fd = storage.open_root(config.root or entry.pw_dir)
            ACTIONS[options.command](root_fd, config, options, report)
        except ShellError as error:
            report.error = str(error)
        except OSError as error:
            report.error = f"I/O error: {error.strerror}"
        except Exception as error:  # never a dead worker whose removals go unreported
            traceback.print_exc()
            report.error = f"internal error ({error.__class__.__name__}); see stderr"
        if report.error is not None:
            report.level = ServerExit.UNKNOWN
        with os.fdopen(write_end, "w") as pipe:
            json.dump(asdict(report), pipe)
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        text = pipe.read()
    os.waitpid(pid, 0)
    try:
        return Report(**json.loads(text))
    except (ValueError, TypeError):
        return Report(level=ServerExit.UNKNOWN, error="the account's worker failed")


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


def exit_codes(*codes: ServerExit) -> str:
    """Given exit codes, return them as the help's table."""
    return "exit codes:\n" + "\n".join(
        textwrap.fill(code.meaning, HELP_WIDTH, initial_indent=f"  {int(code)} {code.name:<10}",
                      subsequent_indent=" " * 14) for code in codes)


@dataclass(frozen=True)
class CommandHelp:
    """What a command's --help says: a summary, a description, examples, and
    the exit codes it can end with."""

    summary: str
    description: str
    examples: tuple[str, ...]
    codes: tuple[ServerExit, ...]

    def epilog(self) -> str:
        shown = "\n".join(f"  {line}" for line in self.examples)
        return f"examples:\n{shown}\n\n{exit_codes(*self.codes)}"


HELP = {
    "prune": CommandHelp(
        "remove old backups by a retention policy, and expired uploads",
        "Apply a retention policy to one account (per series: see README's Retention) and "
        "remove uploads never committed. Quiet unless it removed something or something is "
        "wrong, so cron mails only then; -v also lists what it keeps.",
        ("qbackup-server prune --account backup-laptop --keep-daily 7 --keep-weekly 4 "
         "--keep-monthly 12",
         "qbackup-server prune --account backup-laptop --keep-daily 7 --dry-run -v"),
        (ServerExit.OK, ServerExit.UNKNOWN)),
    "status": CommandHelp(
        "say whether each account has a recent backup (monitoring)",
        "Say of each account whether it has a backup younger than --max-age (else "
        "CRITICAL) and warn about stale uploads, implausibly dated backups, free space below "
        "the reserve or a quota 90% used: one line per problem, then the account's figures.",
        ("qbackup-server status --max-age 36h",
         "qbackup-server status --account backup-laptop --json"),
        tuple(ServerExit)),
    "check": CommandHelp(
        "re-hash every stored backup against its record (scrub)",
        "Read every backup of each account and compare it with the size and SHA-256 "
        "recorded when it was uploaded; change nothing.",
        ("qbackup-server check", "qbackup-server check --account backup-laptop"),
        (ServerExit.OK, ServerExit.CRITICAL, ServerExit.UNKNOWN)),
}


def age(text: str) -> float:
    """argparse's reading of an age: names.parse_age, with its message."""
    try:
        return names.parse_age(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def build_parser() -> argparse.ArgumentParser:
    """Return qbackup-server's parser; its errors raise AdminError."""
    class Parser(argparse.ArgumentParser):
        def error(self, message: str) -> None:  # type: ignore[override]
            raise AdminError(f"{message} (see {self.prog} --help)")

    raw = argparse.RawDescriptionHelpFormatter
    every = CommandHelp("", "", tuple(line for shown in HELP.values() for line in shown.examples),
                        tuple(ServerExit))
    parser = Parser(
        prog="qbackup-server", formatter_class=raw, epilog=every.epilog(),
        description="The backup server admin's tool (as root): retention, scrub and "
                    "monitoring of qbackup storage accounts.")
    parser.add_argument("--version", action="version",
                        version=f"qbackup-server {__version__} (protocol {wire.PROTOCOL_VERSION})")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub: dict[str, argparse.ArgumentParser] = {}
    for command, text in HELP.items():
        sub[command] = commands.add_parser(
            command, help=text.summary, epilog=text.epilog(), formatter_class=raw,
            description=textwrap.fill(text.description, HELP_WIDTH))
        sub[command].add_argument("--account", metavar="NAME", required=command == "prune",
                                  help="this account only" if command != "prune" else
                                  "the account to prune (never all at once)")
        sub[command].add_argument("--json", action="store_true", help="print the report as JSON")
    for rule in RULES:
        sub["prune"].add_argument(f"--keep-{rule}", type=int, default=0, metavar="N",
                                  help=f"keep the newest backup of each of the N newest "
                                       f"{PERIODS[rule]} that have one")
    sub["prune"].add_argument("--dry-run", action="store_true", help="remove nothing; say what")
    sub["prune"].add_argument("-v", "--verbose", action="store_true",
                              help="also list the backups it keeps")
    sub["status"].add_argument("--max-age", type=age, default="36h", metavar="AGE",
                               help="CRITICAL without a backup this young: 90m, 36h, 7d; a bare "
                                    "number is hours (default 36h)")
    return parser


def parse(argv: list[str]) -> argparse.Namespace:
    """Given the arguments, return the options; raise AdminError if they are not valid."""
    options = build_parser().parse_args(argv)
    if options.command == "prune":
        try:  # without one keep rule above 0 prune would delete everything: refused
            options.policy = names.RetentionPolicy(
                **{rule: getattr(options, f"keep_{rule}") for rule in RULES})
        except names.InvalidPolicy as error:
            raise AdminError(f"prune: {error}: give --keep-daily, --keep-weekly, --keep-monthly "
                             "or --keep-yearly N (see qbackup-server prune --help)") from None
    return options


def show(options: argparse.Namespace, reports: dict[str, Report]) -> None:
    """Given the options and each account's Report, print the summary line
    and each account's lines (prune: nothing at all if it removed nothing
    and nothing is wrong), or the JSON report."""
    level = ServerExit(max((r.level for r in reports.values()), default=ServerExit.OK))
    if options.json:
        extra = {"dry_run": options.dry_run} if options.command == "prune" else {}
        print(json.dumps({"status": level.name, **extra, "accounts": {
            name: {**r.facts, **r.found, "error": r.error} for name, r in reports.items()}}))
        return
    verbose = options.command == "prune" and (options.verbose or options.dry_run)
    if options.command == "prune" and not verbose and level == ServerExit.OK and not any(
            r.found[kind] for r in reports.values() for kind in ("removed", "expired", "skipped")):
        return  # quiet: cron mails nothing
    bad = [name for name, r in reports.items() if r.level == level != ServerExit.OK]
    detail = f": {', '.join(bad)}" if bad else ""
    print(f"QBACKUP {options.command.upper()} {level.name} - {len(reports)} account(s){detail}")
    for name, report in reports.items():
        if report.error is not None:
            print(f"{name}: error: {report.error}")
        for kind, entries in report.found.items():
            shown = SHOWN[kind]
            if options.command == "prune" and options.dry_run:
                shown = shown.replace("removed", "would remove")
            if kind != "kept" or options.verbose:
                for entry in entries:
                    print(f"{name}: {shown.format(entry)}")
        if report.facts:
            print(f"{name}: " + " ".join(
                f"{key}={names.show_age(value) if key == 'age' and value is not None else value}"
                for key, value in report.facts.items()))


def main(argv: list[str], config_path: str, shell_path: str) -> int:
    """Given the arguments, the shell's config and the installed shell's path,
    run one admin command; return its ServerExit code."""
    try:
        options = parse(argv)
        if os.geteuid() != 0:
            raise AdminError("qbackup-server must run as root")
        entries = accounts(shell_path, options.account)
    except AdminError as error:
        print(f"QBACKUP {ServerExit.UNKNOWN.name} - {error}", file=sys.stderr)
        return ServerExit.UNKNOWN
    reports = {entry.pw_name: run_as_owner(entry, config_path, options) for entry in entries}
    show(options, reports)
    return max((report.level for report in reports.values()), default=ServerExit.OK)
