"""The argument parser of every qbackup command, with `--help` examples.

Kept apart from `cli.py` so the command's flow reads in one sitting; the
exit-code table in the main help comes from dom0/errors.py.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dom0 import config, errors
from dom0.drill import add_drill_parser

SUBCOMMANDS = ("backup", "list", "check", "verify", "restore", "status", "drill")
ENV_CARRIER = "QBKP_DEST_VM"
ENV_PASSFILE = "QBKP_PASS_FILE"
EXIT_TABLE = "\n".join(f"  {code:>3}  {text}" for code, text in errors.EXIT_CODES.items())

MAIN_EPILOG = f"""\
examples:
  qbackup -f laptop -t sys-backup -p ~/.qbackup-pass work personal
  qbackup backup --job daily --verify
  qbackup list -t sys-backup laptop
  qbackup verify -t sys-backup -p ~/.qbackup-pass laptop-20261122T235959Z
  qbackup status --max-age 36 --remote

environment: {ENV_CARRIER} (default carrier VM), {ENV_PASSFILE} (default passphrase file)

exit codes:
{EXIT_TABLE}
"""


def add_common(parser: argparse.ArgumentParser) -> None:
    """Given a (sub)parser, add the options every command takes."""
    group = parser.add_argument_group("common options")
    group.add_argument("-o", "--terminal", action="store_true",
                       help="log to the terminal instead of syslog (journalctl -t qbackup)")
    group.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    group.add_argument("--config", type=Path, metavar="FILE",
                       help=f"job file (default {config.USER_CONFIG}, then {config.SYSTEM_CONFIG})")
    group.add_argument("--history", type=Path, metavar="FILE",
                       help="run history (default ~/.local/share/qbackup/history.jsonl)")
    group.add_argument("--lock-dir", type=Path, metavar="DIR",
                       help="where carrier locks live (default ~/.cache/qbackup/locks)")
    group.add_argument("--log-socket", metavar="PATH",
                       help=argparse.SUPPRESS)


def add_carrier(parser: argparse.ArgumentParser) -> None:
    """Given a subparser, add how to pick the carrier VM."""
    parser.add_argument("-t", "--carrier", metavar="VM",
                        help=f"carrier VM (default ${ENV_CARRIER}, or the job's)")
    parser.add_argument("--job", metavar="NAME", help="take carrier/passphrase from this job")


def add_passphrase(parser: argparse.ArgumentParser) -> None:
    """Given a subparser, add the two passphrase sources."""
    parser.add_argument("-p", "--passphrase-file", type=Path, metavar="FILE",
                        help=f"0600 passphrase file (default ${ENV_PASSFILE}, or the job's)")
    parser.add_argument("--passphrase-vm", metavar="VM",
                        help="VM answering qubes.BackupPassphrase+PROFILE instead of a file")


def build_parser() -> argparse.ArgumentParser:
    """Return the parser of every qbackup command."""
    parser = argparse.ArgumentParser(
        prog="qbackup", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Scheduled, encrypted, off-site Qubes backups streamed through a carrier VM.",
        epilog=MAIN_EPILOG)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    raw = argparse.RawDescriptionHelpFormatter

    backup = commands.add_parser(
        "backup", formatter_class=raw, help="take a backup (the default command)",
        description="Back up VMs with Qubes' own engine, streamed into the carrier VM.",
        epilog="examples:\n  qbackup backup -f laptop -t sys-backup -p ~/.qbackup-pass work\n"
               "  qbackup backup --job daily\n  qbackup -f laptop -t sys-backup -p FILE  "
               "# all VMs with include_in_backups")
    backup.add_argument("-f", "--prefix", help="backup name prefix: PREFIX-YYYYmmddTHHMMSSZ")
    add_carrier(backup)
    add_passphrase(backup)
    backup.add_argument("-x", "--keep-carrier", action="store_true", default=None,
                        help="leave the carrier VM running afterwards")
    backup.add_argument("--exclude", action="append", metavar="VM", help="skip this VM")
    backup.add_argument("--compression", metavar="FILTER",
                        help="true, false or gzip/bzip2/zstd/xz (default true)")
    backup.add_argument("--retries", type=int, help="extra attempts after a failure")
    backup.add_argument("--retry-delay", type=int, metavar="SECONDS")
    backup.add_argument("--verify", action="store_true", default=None,
                        help="run qvm-backup-restore --verify-only right after")
    backup.add_argument("vms", nargs="*", metavar="VM",
                        help="VMs to back up (default: every VM with include_in_backups)")
    add_common(backup)

    listing = commands.add_parser(
        "list", formatter_class=raw, help="list stored backups",
        description="List the backups stored on the server (name, size, time, sha256).",
        epilog="example:\n  qbackup list -t sys-backup laptop/")
    add_carrier(listing)
    listing.add_argument("prefix", nargs="?", default="", help="only names starting with this")
    add_common(listing)

    check = commands.add_parser(
        "check", formatter_class=raw, help="have the server re-hash one backup",
        description="The server recomputes the SHA-256 of a stored backup and compares it\n"
                    "with its record and with dom0's history.",
        epilog="example:\n  qbackup check -t sys-backup laptop-20261122T235959Z")
    add_carrier(check)
    check.add_argument("name", help="backup name (as `qbackup list` shows)")
    add_common(check)

    verify = commands.add_parser(
        "verify", formatter_class=raw, help="prove a stored backup decrypts and is complete",
        description="qvm-backup-restore --verify-only reading the backup through the carrier.",
        epilog="example:\n  qbackup verify -t sys-backup -p ~/.qbackup-pass "
               "laptop-20261122T235959Z")
    add_carrier(verify)
    add_passphrase(verify)
    verify.add_argument("name", help="backup name")
    add_common(verify)

    restore = commands.add_parser(
        "restore", formatter_class=raw, help="restore VMs from a stored backup",
        description="qvm-backup-restore reading the backup through the carrier.",
        epilog="example:\n  qbackup restore -t sys-backup -p FILE --rename-conflicting "
               "laptop-20261122T235959Z work")
    add_carrier(restore)
    add_passphrase(restore)
    restore.add_argument("--rename-conflicting", action="store_true")
    restore.add_argument("--skip-conflicting", action="store_true")
    restore.add_argument("--paranoid-mode", action="store_true",
                         help="restore through a disposable VM (qvm-backup-restore's mode)")
    restore.add_argument("-x", "--exclude", action="append", metavar="VM", default=[],
                         help="do not restore this VM")
    restore.add_argument("name", help="backup name")
    restore.add_argument("vms", nargs="*", metavar="VM", help="restore only these VMs")
    add_common(restore)

    status = commands.add_parser(
        "status", formatter_class=raw, help="last success per job; non-zero if stale",
        description="Show each job's last successful backup and its age.",
        epilog="examples:\n  qbackup status --max-age 36\n  qbackup status --remote")
    status.add_argument("--max-age", type=float, metavar="HOURS",
                        help="exit non-zero and notify if a job's last success is older")
    status.add_argument("--remote", action="store_true",
                        help="compare the history with the servers' listings (tampering)")
    status.add_argument("--max-drill-age", type=float, metavar="HOURS",
                        help="exit non-zero if a job's last drill is older (or failed)")
    add_common(status)

    drill = add_drill_parser(commands, raw)
    add_carrier(drill)
    add_passphrase(drill)
    add_common(drill)
    return parser
