"""The `qbackup` command: parse arguments, configure logging, run one action.

The original invocation still works and means `qbackup backup ...`:

    qbackup -f PREFIX -t CARRIER_VM -p PASSPHRASE_FILE [-x] [-o] [VM ...]

So a first word that is no command may be a VM. One close to a command's
name (`lst`) is taken for a mistyped command, unless a VM has that name: a
VM that exists always wins, so no original call changes meaning.

`-x` keeps the carrier running, as in the original tool, in every command
that has it (`--exclude VM` skips a VM). `main()` is the only place that turns errors
into exit codes (dom0/errors.py).
"""

from __future__ import annotations

import argparse
import difflib
import functools
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from dom0 import (
    backup,
    check,
    configcheck,
    drill,
    dry_run,
    errors,
    listing,
    processes,
    restore,
    status,
    verify,
)
from dom0.arguments import (
    COMMON_DEFAULTS,
    COMMON_OPTIONS,
    SUBCOMMANDS,
    build_parser,
    command_position,
    options_with_value,
)
from dom0.errors import ConfigError, QbackupError, QubesError
from dom0.history import default_history_path
from dom0.locking import default_lock_dir
from dom0.log import DEFAULT_SYSLOG_SOCKET, setup_logging
from dom0.qubes import QubesAdapter
from dom0.session import Context, SignalGuard

logger = logging.getLogger(__name__)

PARSER = build_parser()
WITH_VALUE = options_with_value(PARSER)
Action = Callable[[argparse.Namespace, Context], int]
# One module per action; each resolves its own arguments.
ACTIONS: dict[str, Action] = {
    "backup": backup.run,
    "list": listing.run,
    "check": check.run,
    "verify": verify.run_verify,
    "restore": restore.run,
    "status": status.run,
    "config": configcheck.run,
    "drill": drill.run,
}
HELP_WORDS = frozenset({"-h", "--help", "--version"})
# How close a word must be to a command's name to be taken for it, mistyped
# (difflib's ratio: `lst`, `stauts`, `chek` are; `work`, `vault`, `sys-net` are not).
TYPO_CUTOFF = 0.75


def normalise(argv: list[str]) -> list[str]:
    """Given argv, return it with `backup` prepended for the original form
    (`qbackup -f PREFIX -t VM ...`, no command)."""
    position = command_position(argv)
    if position is not None:
        return argv if argv[position] in SUBCOMMANDS else ["backup", *argv]
    options = {word for word in argv if word.startswith("-")}
    if options - HELP_WORDS - COMMON_OPTIONS:
        return ["backup", *argv]  # options only, some of them backup's
    return argv


def mistyped_command(argv: list[str], get_app: Callable[[], QubesAdapter]) -> str | None:
    """Given argv and the Qubes adapter's getter, return an error for a first
    word that is no command, looks like one, and names no VM; else None. An
    option's value (`-t sys-backup`, `-f stats`) is never that word."""
    command = command_position(argv)  # where normalise looks for the command
    position = command_position(argv, WITH_VALUE)  # the first word no option's value
    if position is None or argv[position] in SUBCOMMANDS or (
            command is not None and argv[command] in SUBCOMMANDS):
        return None
    word = argv[position]
    close = difflib.get_close_matches(word, SUBCOMMANDS, n=1, cutoff=TYPO_CUTOFF)
    if not close:
        return None
    try:
        if get_app().vm_exists(word):
            return None  # the original form's VM
    except QbackupError:
        pass  # no Qubes here (outside dom0): no VM has that name
    return f"unknown command '{word}' (did you mean {close[0]}?)"


def dispatch(args: argparse.Namespace, context: Context) -> int:
    """Given parsed arguments, run the chosen action and return its exit code."""
    if getattr(args, "dry_run", False):
        return dry_run.run(args, context)  # backup --dry-run: its own module
    return ACTIONS[args.command](args, context)


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
    words = list(sys.argv[1:] if argv is None else argv)
    get_app: Callable[[], QubesAdapter] = functools.cache(real_app) if app is None \
        else lambda: app
    try:
        typo = mistyped_command(words, get_app)
        if typo:
            PARSER.error(typo)
        args = PARSER.parse_args(normalise(words))
    except SystemExit as exit_request:  # argparse: --help (0) or a usage error (2)
        code = exit_request.code if isinstance(exit_request.code, int) else errors.QbackupExit.USAGE
        if code != 0:
            # A broken crontab or unit line must show up in the journal too.
            setup_logging(False, os.environ.get("QBACKUP_LOG_SOCKET") or DEFAULT_SYSLOG_SOCKET)
            logger.error("invalid command line (exit %d): see qbackup --help", code)
            processes.notify("qbackup FAILED", "invalid command line: see qbackup --help",
                             critical=True)
        return code
    if args.command is None:  # bare `qbackup`: what can I do?
        PARSER.print_help(sys.stdout)
        return errors.QbackupExit.USAGE
    for name, value in COMMON_DEFAULTS.items():
        if not hasattr(args, name):
            setattr(args, name, value)
    # Environment defaults are read per call, not when the module-level parser is built.
    args.history = args.history or env_path("QBACKUP_HISTORY")
    args.lock_dir = args.lock_dir or env_path("QBACKUP_LOCK_DIR")
    socket_path = args.log_socket or os.environ.get("QBACKUP_LOG_SOCKET") or DEFAULT_SYSLOG_SOCKET
    setup_logging(args.terminal, socket_path, args.verbose, args.quiet)
    try:
        with SignalGuard() as guard:
            context = Context(get_app=get_app, guard=guard,
                              history=args.history or default_history_path(),
                              lock_dir=args.lock_dir or default_lock_dir(), config=args.config,
                              json=getattr(args, "json", False), quiet=args.quiet)
            return dispatch(args, context)
    except ConfigError as error:  # one line per problem, each naming file, line and key
        for problem in error.problems:
            logger.error("%s", problem)
        logger.error("configuration refused: %d problem(s) (exit %d)", len(error.problems),
                     error.exit_code)
        return error.exit_code
    except QbackupError as error:
        code = errors.exit_code_for(error)
        logger.error("%s (exit %d)", error, code)
        return code
    except OSError as error:  # dom0's own disk or files: full, unreadable, missing
        logger.error("%s (exit %d)", error, errors.QbackupExit.BACKUP_FAILED)
        return errors.QbackupExit.BACKUP_FAILED
    except KeyboardInterrupt:
        logger.error("interrupted (exit %d)", errors.QbackupExit.SIGINT)
        return errors.QbackupExit.SIGINT


def console_main() -> None:
    """Entry point of the installed command."""
    sys.exit(main())


if __name__ == "__main__":
    console_main()
