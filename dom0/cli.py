"""The `qbackup` command: parse arguments, configure logging, run one action.

The original invocation still works and means `qbackup backup ...`:

    qbackup -f PREFIX -t CARRIER_VM -p PASSPHRASE_FILE [-x] [-o] [VM ...]

`main()` is the only place that turns errors into exit codes (dom0/errors.py).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from dom0 import config, drill, errors
from dom0.arguments import SUBCOMMANDS, build_parser
from dom0.backup import Paths, run_backup
from dom0.errors import QbackupError, QubesError, UsageError
from dom0.history import default_history_path
from dom0.listing import run_check, run_list
from dom0.locking import default_lock_dir
from dom0.log import DEFAULT_SYSLOG_SOCKET, setup_logging
from dom0.names import check_name
from dom0.qubes import QubesAdapter
from dom0.resolve import check_job, job_from_args, need_passphrase, resolve_carrier
from dom0.session import SignalGuard, running_carrier
from dom0.status import run_status
from dom0.verify import committed_record, restore_backup, verify_backup

logger = logging.getLogger(__name__)

PARSER = build_parser()


def normalise(argv: list[str]) -> list[str]:
    """Given argv, return it with `backup` inserted for the original invocation."""
    if argv and (argv[0] in SUBCOMMANDS or argv[0] in ("-h", "--help")):
        return argv
    return ["backup", *argv]


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
        try:
            return run_status(history_path, configured_jobs(args.config), args.max_age,
                              args.remote, get_app)
        finally:  # the drills are shown (and judged) whatever the backups' state
            drill.drill_status(history_path, configured_jobs(args.config), args.max_drill_age)
    carrier, source = resolve_carrier(args)
    # Names are checked before the carrier is even started: they end up in
    # the carrier's `eval` (restore location) or on its stdin.
    if args.command == "drill":  # the names it verifies come from dom0's own history
        return drill.run_drill(get_app(), drill.history_key(args), carrier,
                               need_passphrase(source), history_path,
                               args.lock_dir or default_lock_dir())
    if args.command == "list":
        if args.prefix:
            check_name(args.prefix.rstrip("/"))
    else:
        check_name(args.name)
    if args.command in ("verify", "restore"):
        source = need_passphrase(source)
    if args.command == "restore":
        # They become qvm-backup-restore arguments: a word like '--x' must not
        # turn into one of its options.
        for vm in [*args.vms, *args.exclude]:
            if not config.is_vm_name(vm):
                raise UsageError(f"not a VM name: {vm!r}")
    app = get_app()
    with running_carrier(app, carrier, keep=False):
        if args.command == "list":
            return run_list(app, carrier, args.prefix)
        if args.command == "check":
            return run_check(app, carrier, args.name, history_path)
        if args.command == "verify":
            verify_backup(app, carrier, source, args.name,
                          committed_record(history_path, args.name))
            return 0
        options = [flag for flag, wanted in (
            ("--rename-conflicting", args.rename_conflicting),
            ("--skip-conflicting", args.skip_conflicting),
            ("--paranoid-mode", args.paranoid_mode)) if wanted]
        for vm in args.exclude:
            options += ["-x", vm]
        restore_backup(app, carrier, source, args.name, options, args.vms,
                       committed_record(history_path, args.name))
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
    except OSError as error:  # dom0's own disk or files: full, unreadable, missing
        logger.error("%s (exit %d)", error, errors.EXIT_BACKUP_FAILED)
        return errors.EXIT_BACKUP_FAILED
    except KeyboardInterrupt:
        logger.error("interrupted (exit %d)", errors.EXIT_SIGINT)
        return errors.EXIT_SIGINT


def console_main() -> None:
    """Entry point of the installed command."""
    sys.exit(main())


if __name__ == "__main__":
    console_main()
