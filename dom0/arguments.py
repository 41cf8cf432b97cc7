"""The argument parser of every qbackup command, with `--help` examples.

Kept apart from `cli.py` so the command's flow reads in one sitting; the
exit-code table in the main help comes from dom0/errors.py. The common
options work before the command (`qbackup -v list`) and after it
(`qbackup list -v`), like git's and borg's.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dom0 import config, errors
from dom0.drill import add_drill_parser
from dom0.settings import SETTINGS, describe
from qbackup_protocol import __version__, names

SUBCOMMANDS = ("backup", "list", "check", "verify", "restore", "status", "config", "drill")
ENV_CARRIER = config.ENV_CARRIER
ENV_PASSFILE = config.ENV_PASSFILE
EXIT_TABLE = "\n".join(f"  {int(code):>3}  {code.meaning}" for code in errors.QbackupExit)
EXIT_CODES_SHOWN = f"exit codes:\n{EXIT_TABLE}"
# The common options, with their defaults: given before or after the command.
COMMON_DEFAULTS: dict[str, object] = {
    "terminal": False, "verbose": False, "quiet": False, "config": None, "history": None,
    "lock_dir": None, "log_socket": None,
}

MAIN_EPILOG = f"""\
examples:
  qbackup backup --job daily
  qbackup backup -f laptop -t sys-backup -p ~/.qbackup-pass work personal
  qbackup -v list -t sys-backup laptop/
  qbackup verify --job daily laptop/daily-20261122T235959Z
  qbackup status --max-age 36h --remote
  qbackup config check

The original form `qbackup -f PREFIX -t VM -p FILE [VM ...]` still means `qbackup backup ...`.

environment: {ENV_CARRIER} (default carrier VM), {ENV_PASSFILE} (default passphrase file)

{EXIT_CODES_SHOWN}
"""


def common_options(suppress: bool) -> argparse.ArgumentParser:
    """Return a parent parser with the options every command takes; with
    SUPPRESS their defaults are left out, so a subcommand's parse does not
    undo what was given before the command."""
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("common options (before or after the command)")

    def default(name: str) -> object:
        return argparse.SUPPRESS if suppress else COMMON_DEFAULTS[name]

    group.add_argument("-o", "--terminal", action="store_true", default=default("terminal"),
                       help="log to the terminal instead of syslog (journalctl -t qbackup)")
    group.add_argument("-v", "--verbose", action="store_true", default=default("verbose"),
                       help="log debug details")
    group.add_argument("-q", "--quiet", action="store_true", default=default("quiet"),
                       help="no progress bar or summary on the terminal; errors only")
    group.add_argument("--config", type=Path, metavar="FILE", default=default("config"),
                       help=f"job file (default {config.USER_CONFIG}, then {config.SYSTEM_CONFIG})")
    group.add_argument("--history", type=Path, metavar="FILE", default=default("history"),
                       help="run history (default ~/.local/share/qbackup/history.jsonl)")
    group.add_argument("--lock-dir", type=Path, metavar="DIR", default=default("lock_dir"),
                       help="where carrier locks live (default ~/.cache/qbackup/locks)")
    group.add_argument("--log-socket", metavar="PATH", default=default("log_socket"),
                       help=argparse.SUPPRESS)
    return parent


# The common options' words, and those that take a value (the original form's
# scan must skip the value), as the parser declares them.
COMMON_OPTIONS = frozenset(option for action in common_options(suppress=False)._actions
                           for option in action.option_strings)
COMMON_WITH_VALUE = frozenset(option for action in common_options(suppress=False)._actions
                              if action.nargs != 0 for option in action.option_strings)


def add_carrier(parser: argparse.ArgumentParser) -> None:
    """Given a subparser, add how to pick the carrier VM."""
    parser.add_argument("-t", "--carrier", metavar="VM",
                        help=f"carrier VM (default ${ENV_CARRIER}, or the job's)")
    parser.add_argument("--job", metavar="NAME", help="take carrier/passphrase from this job")


def add_destination(parser: argparse.ArgumentParser, default: str) -> None:
    """Given a subparser, add --destination (DEFAULT says what is asked without it)."""
    parser.add_argument("--destination", metavar="D",
                        help=f"the carrier's destination (server) to ask (default: {default})")


def add_passphrase(parser: argparse.ArgumentParser) -> None:
    """Given a subparser, add the two passphrase sources."""
    parser.add_argument("-p", "--passphrase-file", type=Path, metavar="FILE",
                        help=f"0600 passphrase file (default ${ENV_PASSFILE}, or the job's)")
    parser.add_argument("--passphrase-vm", metavar="VM",
                        help="VM answering qubes.BackupPassphrase+PROFILE instead of a file")


def age(text: str) -> float:
    """Given an --max-age value, return seconds; raise ArgumentTypeError
    saying how to write an age."""
    try:
        return names.parse_age(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_json(parser: argparse.ArgumentParser, what: str) -> None:
    """Given a subparser, add --json."""
    parser.add_argument("--json", action="store_true", help=f"print {what} as JSON (scripts)")


def build_parser() -> argparse.ArgumentParser:
    """Return the parser of every qbackup command."""
    parser = argparse.ArgumentParser(
        prog="qbackup", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Scheduled, encrypted, off-site Qubes backups streamed through a carrier VM.",
        epilog=MAIN_EPILOG, parents=[common_options(suppress=False)])
    parser.add_argument("--version", action="version", version=f"qbackup {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    raw = argparse.RawDescriptionHelpFormatter
    common = [common_options(suppress=True)]

    backup = commands.add_parser(
        "backup", formatter_class=raw, help="take a backup (the default command)", parents=common,
        description="Back up VMs with Qubes' own engine, streamed into the carrier VM.",
        epilog="examples:\n  qbackup backup --job daily\n  qbackup backup --job daily --dry-run\n"
               "  qbackup backup --all --json\n"
               "  qbackup backup -f laptop -t sys-backup -p ~/.qbackup-pass --exclude untrusted\n"
               "  qbackup -f laptop -t sys-backup -p FILE  # all VMs with include_in_backups")
    backup.add_argument("--all", action="store_true",
                        help="run every job of the job file (a broken job does not stop the"
                             " others)")
    backup.add_argument("-f", "--prefix", help="backup name prefix: PREFIX-YYYYmmddTHHMMSSZ")
    add_carrier(backup)
    add_passphrase(backup)
    backup.add_argument("--exclude", action="append", metavar="VM", help="skip this VM")
    backup.add_argument("-x", "--keep-carrier", action="store_true", default=None,
                        help="leave the carrier VM running afterwards")
    backup.add_argument("--compression", metavar="FILTER",
                        help=describe(SETTINGS["compression"]))
    backup.add_argument("--retries", type=int, help=describe(SETTINGS["retries"]))
    backup.add_argument("--retry-delay", metavar="DURATION",
                        help=describe(SETTINGS["retry_delay"]))
    backup.add_argument("--verify", action="store_true", default=None,
                        help="run qvm-backup-restore --verify-only right after")
    backup.add_argument("--dry-run", action="store_true",
                        help="check the job, its VMs' sizes, the passphrase and the server;"
                             " send nothing, record nothing")
    add_json(backup, "the outcome")
    backup.add_argument("vms", nargs="*", metavar="VM",
                        help="VMs to back up (default: every VM with include_in_backups)")

    listing = commands.add_parser(
        "list", formatter_class=raw, help="list stored backups", parents=common,
        description="List the backups stored on the server (name, size, time, sha256).",
        epilog="examples:\n  qbackup list -t sys-backup laptop/\n  qbackup list --job daily --json")
    add_carrier(listing)
    add_destination(listing, "the carrier's first")
    add_json(listing, "the listing")
    listing.add_argument("prefix", nargs="?", default="", help="only names starting with this")

    check = commands.add_parser(
        "check", formatter_class=raw, help="have the server re-hash one backup", parents=common,
        description="The server recomputes the SHA-256 of a stored backup and compares it\n"
                    "with its record (exit 13 if it differs: corrupted) and with dom0's\n"
                    "history (exit 4 if the record changed: tampering).",
        epilog="example:\n  qbackup check -t sys-backup laptop-20261122T235959Z")
    add_carrier(check)
    add_destination(check, "the carrier's first")
    add_json(check, "the verdict")
    check.add_argument("name", help="backup name (as `qbackup list` shows)")

    verify = commands.add_parser(
        "verify", formatter_class=raw, help="prove a stored backup decrypts and is complete",
        parents=common,
        description="qvm-backup-restore --verify-only reading the backup through the carrier.",
        epilog="example:\n  qbackup verify -t sys-backup -p ~/.qbackup-pass "
               "laptop-20261122T235959Z")
    add_carrier(verify)
    add_destination(verify, "the carrier's first")
    add_passphrase(verify)
    add_json(verify, "the verdict")
    verify.add_argument("name", help="backup name")

    restore = commands.add_parser(
        "restore", formatter_class=raw, help="restore VMs from a stored backup", parents=common,
        description="qvm-backup-restore reading the backup through the carrier. On success it\n"
                    "prints each VM restored (under its new name, if renamed) and where dom0's\n"
                    "home went; exit 4 if Qubes did not restore what it set out to.",
        epilog="examples:\n  qbackup restore -t sys-backup -p FILE --rename-conflicting "
               "laptop-20261122T235959Z work\n"
               "  qbackup restore --job daily laptop-20261122T235959Z dom0   # dom0's home only")
    add_carrier(restore)
    add_destination(restore, "the job's destinations, else the carrier's, in order, each"
                             " unreachable one skipped")
    add_passphrase(restore)
    restore.add_argument("--rename-conflicting", action="store_true",
                         help="restore a VM whose name exists here under a new name (work1)")
    restore.add_argument("--skip-conflicting", action="store_true",
                         help="do not restore VMs whose names exist here")
    restore.add_argument("--skip-dom0-home", action="store_true",
                         help="do not restore dom0's home directory from the backup (Qubes"
                              " restores it into ~/home-restore-DATE; name the VM dom0 to"
                              " restore only that)")
    restore.add_argument("--paranoid-mode", action="store_true",
                         help="restore through a disposable VM (needs -p FILE; never restores"
                              " dom0's home)")
    restore.add_argument("--exclude", action="append", metavar="VM", default=[],
                         help="do not restore this VM (qvm-backup-restore -x)")
    add_json(restore, "what was restored")
    restore.add_argument("name", help="backup name")
    restore.add_argument("vms", nargs="*", metavar="VM", help="restore only these VMs")

    status = commands.add_parser(
        "status", formatter_class=raw, help="last success per job; non-zero if stale",
        parents=common,
        description="Show each job's last successful backup and its age. Exits 7 when a job\n"
                    "never succeeded or (--max-age) its last success is too old.",
        epilog="examples:\n  qbackup status --max-age 36h\n  qbackup status --remote --json")
    status.add_argument("--max-age", type=age, metavar="AGE",
                        help="exit non-zero and notify if a job's last success is older: 90s,"
                             " 36h, 7d (a bare number means hours)")
    status.add_argument("--remote", action="store_true",
                        help="compare the history with the servers' listings (tampering)")
    status.add_argument("--max-drill-age", type=age, metavar="AGE",
                        help="exit non-zero if a job's last drill is older (or failed)")
    add_json(status, "the status")

    drill = add_drill_parser(commands, raw, common)
    add_carrier(drill)
    add_destination(drill, "the job's first, else the carrier's first")
    add_passphrase(drill)

    settings = commands.add_parser(
        "config", formatter_class=raw, help="check the job file and what it names",
        parents=common,
        description="`config check` validates every job (or --job NAME): settings, passphrase,\n"
                    "VMs, the carrier and, through it, the server and its free space.\n"
                    "It changes nothing (a halted carrier is started and shut down again).",
        epilog="examples:\n  qbackup config check\n  qbackup config check --job daily")
    settings.add_argument("action", choices=["check"], help="what to do: check")
    settings.add_argument("--job", metavar="NAME", help="check only this job")
    for command in commands.choices.values():  # each command's --help ends with them
        command.epilog = f"{command.epilog}\n\n{EXIT_CODES_SHOWN}"
    return parser


def options_with_value(parser: argparse.ArgumentParser) -> frozenset[str]:
    """Given the main parser, return every option that takes a value there
    or in `backup` (the original form takes backup's options, no command)."""
    [commands] = [action for action in parser._actions
                  if isinstance(action, argparse._SubParsersAction)]
    return frozenset(option for each in (parser, commands.choices["backup"])
                     for action in each._actions if action.nargs != 0
                     for option in action.option_strings)


def command_position(argv: list[str], with_value: frozenset[str] = COMMON_WITH_VALUE
                     ) -> int | None:
    """Given argv and the options that take a value (default: the common
    ones), return the index of its first word that is not an option (or an
    option's value), or None if there is none."""
    index = 0
    while index < len(argv):
        word = argv[index]
        if word in with_value:
            index += 2
        elif word.startswith("-"):
            index += 1
        else:
            return index
    return None
