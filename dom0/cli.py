"""The `qbackup` command: parse arguments, configure logging, run one action.

The original invocation still works and means `qbackup backup ...`:

    qbackup -f PREFIX -t CARRIER_VM -p PASSPHRASE_FILE [-x] [-o] [VM ...]

`main()` is the only place that turns errors into exit codes (dom0/errors.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from dom0 import config, errors
from dom0.backup import Paths, run_backup
from dom0.errors import ConfigError, QbackupError, QubesError, UsageError
from dom0.history import default_history_path
from dom0.listing import run_check, run_list
from dom0.locking import default_lock_dir
from dom0.log import DEFAULT_SYSLOG_SOCKET, setup_logging
from dom0.names import check_name
from dom0.qubes import QubesAdapter
from dom0.session import SignalGuard, running_carrier
from dom0.status import run_status
from dom0.verify import PassphraseSource, restore_backup, verify_backup

logger = logging.getLogger(__name__)
SUBCOMMANDS = ("backup", "list", "check", "verify", "restore", "status")
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
                       help="where carrier locks live (default $XDG_RUNTIME_DIR/qbackup)")
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
    add_common(status)
    return parser


PARSER = build_parser()


def normalise(argv: list[str]) -> list[str]:
    """Given argv, return it with `backup` inserted for the original invocation."""
    if argv and (argv[0] in SUBCOMMANDS or argv[0] in ("-h", "--help")):
        return argv
    return ["backup", *argv]


def job_from_args(args: argparse.Namespace) -> config.Job:
    """Given backup arguments, return the job they describe: a config job with
    flags applied on top, or one built from flags and the environment; raise
    ConfigError/UsageError naming every problem."""
    compression: bool | str | None = None
    if args.compression is not None:
        lowered = args.compression.lower()
        compression = {"true": True, "false": False}.get(lowered, lowered)
    flags = dict(
        prefix=args.prefix, carrier=args.carrier, passphrase_file=args.passphrase_file,
        passphrase_vm=args.passphrase_vm, vms=args.vms or None, exclude=args.exclude,
        compression=compression, keep_carrier=args.keep_carrier, retries=args.retries,
        retry_delay=args.retry_delay, verify=args.verify)
    if args.job:
        base = config.find_job(args.config, args.job)
        if args.passphrase_vm or args.passphrase_file:
            # A passphrase flag replaces the job's, whichever kind it was.
            base = dataclasses.replace(base, passphrase_file=None, passphrase_vm=None)
        return check_job(config.override(base, **flags))
    env_file = os.environ.get(ENV_PASSFILE)
    if not args.passphrase_vm and not args.passphrase_file and env_file:
        flags["passphrase_file"] = Path(env_file)
    flags["carrier"] = args.carrier or os.environ.get(ENV_CARRIER)
    return check_job(config.override(config.Job(name="", carrier="", prefix=""), **flags))


CLI_WORDING = (
    ("at 'jobs.cli.carrier': required, expected the carrier VM name",
     f"give the carrier VM with -t VM or ${ENV_CARRIER}"),
    ("at 'jobs.cli': give exactly one of passphrase_file, passphrase_vm",
     f"give exactly one of -p FILE (or ${ENV_PASSFILE}) and --passphrase-vm VM"),
    ("at 'jobs.cli.prefix': ", "-f PREFIX: "),
    ("at 'jobs.cli.", "option '"),
)


def cli_problem(problem: str) -> str:
    """Given a job validation problem of a command-line job, return it worded
    with the command's flags."""
    for old, new in CLI_WORDING:
        problem = problem.replace(old, new)
    return problem


def check_job(job: config.Job) -> config.Job:
    """Given a merged job, return it; raise ConfigError (a config job) or
    UsageError (command line only) listing what is wrong."""
    problems: list[str] = []
    raw = {key: value for key, value in vars(job).items() if key != "name"}
    raw["passphrase_file"] = str(job.passphrase_file) if job.passphrase_file else None
    raw = {key: value for key, value in raw.items() if value not in (None, "")}
    config.validate_job(job.name or "cli", raw, problems)
    if problems and not job.name:
        raise UsageError("; ".join(cli_problem(problem) for problem in problems))
    if problems:
        raise ConfigError(problems)
    return job


def resolve_carrier(args: argparse.Namespace) -> tuple[str, PassphraseSource]:
    """Given list/check/verify/restore arguments, return (carrier VM, passphrase
    source) from flags, then the job, then the environment."""
    job = config.find_job(args.config, args.job) if args.job else None
    carrier = args.carrier or (job.carrier if job else None) or os.environ.get(ENV_CARRIER)
    if not carrier or not config.is_vm_name(carrier):
        raise UsageError(f"give the carrier VM with -t VM, --job NAME or ${ENV_CARRIER}")
    passfile = getattr(args, "passphrase_file", None)
    passvm = getattr(args, "passphrase_vm", None)
    if passvm is not None and not config.is_vm_name(passvm):
        raise UsageError("--passphrase-vm: not a VM name")
    if passfile is None and passvm is None and job is not None:
        passfile, passvm = job.passphrase_file, job.passphrase_vm
    if passfile is None and passvm is None and os.environ.get(ENV_PASSFILE):
        passfile = Path(os.environ[ENV_PASSFILE])
    return carrier, PassphraseSource(file=passfile, vm=passvm)


def need_passphrase(source: PassphraseSource) -> PassphraseSource:
    """Given a passphrase source, return it; raise UsageError if it is empty or double."""
    if (source.file is None) == (source.vm is None):
        raise UsageError(f"give exactly one of -p FILE (or ${ENV_PASSFILE}), --passphrase-vm VM"
                         " or --job NAME")
    return source


def configured_jobs(path: Path | None) -> list[str]:
    """Given --config (or None), return the configured job names (none if no file)."""
    path = path or config.default_config_path()
    return sorted(config.load_jobs(path)) if path else []


def dispatch(args: argparse.Namespace, get_app: Callable[[], QubesAdapter],
             guard: SignalGuard) -> int:
    """Given parsed arguments, run the chosen action and return its exit code."""
    history_path = args.history or default_history_path()
    if args.command == "backup":
        job = check_job(job_from_args(args))
        paths = Paths(history=history_path, lock_dir=args.lock_dir or default_lock_dir())
        return run_backup(get_app(), job, paths, guard)
    if args.command == "status":
        return run_status(history_path, configured_jobs(args.config), args.max_age,
                          args.remote, get_app)
    carrier, source = resolve_carrier(args)
    # Names are checked before the carrier is even started: they end up in
    # the carrier's `eval` (restore location) or on its stdin.
    if args.command == "list":
        if args.prefix:
            check_name(args.prefix.rstrip("/"))
    else:
        check_name(args.name)
    if args.command in ("verify", "restore"):
        source = need_passphrase(source)
    app = get_app()
    with running_carrier(app, carrier, keep=False):
        if args.command == "list":
            return run_list(app, carrier, args.prefix)
        if args.command == "check":
            return run_check(app, carrier, args.name, history_path)
        if args.command == "verify":
            verify_backup(app, carrier, source, args.name)
            return 0
        options = [flag for flag, wanted in (
            ("--rename-conflicting", args.rename_conflicting),
            ("--skip-conflicting", args.skip_conflicting),
            ("--paranoid-mode", args.paranoid_mode)) if wanted]
        for vm in args.exclude:
            options += ["-x", vm]
        restore_backup(app, carrier, source, args.name, options, args.vms)
        return 0


def real_app() -> QubesAdapter:
    """Return the qubesadmin-backed adapter; raise QubesError outside dom0."""
    try:
        from dom0.qubes import RealQubes  # noqa: PLC0415

        return RealQubes()
    except ImportError:
        raise QubesError("qubesadmin is not available: run qbackup in dom0") from None


def env_path(variable: str) -> Path | None:
    """Given an environment variable name, return its value as a Path, or None."""
    value = os.environ.get(variable)
    return Path(value) if value else None


def main(argv: list[str] | None = None, app: QubesAdapter | None = None) -> int:
    """Given argv (default sys.argv[1:]) and a Qubes adapter (default the real
    one, created only if needed), run one command and return its exit code."""
    arguments = normalise(list(sys.argv[1:] if argv is None else argv))
    try:
        args = PARSER.parse_args(arguments)
    except SystemExit as exit_request:  # argparse: --help (0) or a usage error (2)
        code = exit_request.code if isinstance(exit_request.code, int) else errors.EXIT_USAGE
        if code != 0:
            # A broken crontab or unit line must show up in the journal too.
            setup_logging(False, os.environ.get("QBACKUP_LOG_SOCKET") or DEFAULT_SYSLOG_SOCKET)
            logger.error("invalid command line (exit %d): see qbackup --help", code)
        return code
    # Environment defaults are read per call, not when the module-level parser is built.
    args.history = args.history or env_path("QBACKUP_HISTORY")
    args.lock_dir = args.lock_dir or env_path("QBACKUP_LOCK_DIR")
    socket_path = args.log_socket or os.environ.get("QBACKUP_LOG_SOCKET") or DEFAULT_SYSLOG_SOCKET
    setup_logging(args.terminal, socket_path, args.verbose)
    cache: list[QubesAdapter] = [app] if app is not None else []

    def get_app() -> QubesAdapter:
        if not cache:
            cache.append(real_app())
        return cache[0]

    try:
        with SignalGuard() as guard:
            return dispatch(args, get_app, guard)
    except QbackupError as error:
        code = errors.exit_code_for(error)
        logger.error("%s (exit %d)", error, code)
        return code
    except KeyboardInterrupt:
        logger.error("interrupted (exit %d)", errors.EXIT_SIGINT)
        return errors.EXIT_SIGINT


def console_main() -> None:
    """Entry point of the installed command."""
    sys.exit(main())


if __name__ == "__main__":
    console_main()
