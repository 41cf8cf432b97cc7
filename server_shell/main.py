"""qbackup-shell: the login shell of a backup account.

Reads top to bottom: refuse root -> work out what argv/environment ask for
(pure, request.py) -> load the config -> parse the one protocol command (pure)
-> run it against the storage root opened once -> one syslog line -> exit
code. Exit codes are decided here and only here (errors.py holds the map).
"""

from __future__ import annotations

import logging
import os
import pwd
import signal
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from types import FrameType

import qbackup_protocol as protocol

from . import errors
from .commit import commit_backup
from .config import ShellConfig, load_config
from .errors import Interrupted, NotAllowed, ShellError
from .listing import describe_space, list_backups
from .log import client_address, setup_logging
from .prune import drop_privileges, parse_prune_arguments, resolve_owner, run_prune
from .put import store_backup
from .reading import check_backup, send_backup
from .request import Request, parse_command, parse_invocation
from .signals import FATAL_SIGNALS
from .storage import open_root
from .streams import write_all

logger = logging.getLogger(__name__)

DEFAULT_CONFIG_PATH = "/etc/qbackup/qbackup-shell.conf"
STDIN, STDOUT, STDERR = 0, 1, 2
LIST_FLUSH_SIZE = 64 * 1024


@dataclass
class Outcome:
    """What one command did, for its syslog line."""

    command: str = "(refused)"
    result: str = "ok"
    size: int = 0


def _raise_interrupted(signum: int, frame: FrameType | None) -> None:
    # Ignore further signals: the cleanup this exception starts (joining the
    # writer thread, removing the temporary) must not itself be interrupted.
    for other in FATAL_SIGNALS:
        signal.signal(other, signal.SIG_IGN)
    raise Interrupted(f"interrupted by signal {signal.Signals(signum).name}")


def run_request(request: Request, config: ShellConfig, home: str, outcome: Outcome) -> int:
    """Given a parsed request, the account's config and home, run it and
    return the exit code; raise ShellError on any failure."""
    root_fd = open_root(config.root or home)
    try:
        if request.verb == protocol.VERB_PUT:
            assert request.argument is not None  # noqa: S101 (guaranteed by parse_command)
            record = store_backup(root_fd, request.argument, STDIN, config)
            outcome.size = record.size
            write_all(STDOUT, protocol.encode_reply(record.to_reply()))
            return errors.EXIT_OK
        if request.verb == protocol.VERB_COMMIT:
            assert request.argument is not None  # noqa: S101
            record = commit_backup(root_fd, request.argument)
            outcome.size = record.size
            write_all(STDOUT, protocol.encode_reply(record.to_reply()))
            return errors.EXIT_OK
        if request.verb == protocol.VERB_GET:
            assert request.argument is not None  # noqa: S101
            outcome.size = send_backup(root_fd, request.argument, STDOUT).size
            return errors.EXIT_OK
        if request.verb == protocol.VERB_CHECK:
            assert request.argument is not None  # noqa: S101
            result = check_backup(root_fd, request.argument)
            outcome.size = result.record.size
            write_all(STDOUT, protocol.encode_reply(result.to_reply()))
            if not result.ok:
                outcome.result = "mismatch"
                return errors.EXIT_DATAERR
            return errors.EXIT_OK
        if request.verb == protocol.VERB_LIST:
            _write_listing(root_fd, request.argument)
            return errors.EXIT_OK
        info = describe_space(root_fd, config.reserve, config.quota)
        write_all(STDOUT, protocol.encode_reply(info.to_reply()))
        return errors.EXIT_OK
    finally:
        os.close(root_fd)


def _write_listing(root_fd: int, prefix: str | None) -> None:
    pending = bytearray()
    for item in list_backups(root_fd, prefix):
        pending += protocol.encode_reply(item.to_reply())
        if len(pending) >= LIST_FLUSH_SIZE:
            write_all(STDOUT, pending)
            pending.clear()
    write_all(STDOUT, pending)


def serve(command: str, config: ShellConfig, home: str, outcome: Outcome) -> int:
    """Given the client's command text, run it; return the exit code."""
    request = parse_command(command)
    outcome.command = request.verb
    if request.argument is not None:
        outcome.command += f" {request.argument}"
    return run_request(request, config, home, outcome)


def prune_locally(arguments: tuple[str, ...], config_path: str) -> int:
    """Given the words after `prune`, run the admin's retention; return 0."""
    request = parse_prune_arguments(arguments)
    if os.getuid() == 0 and request.account is None and request.root is None:
        raise NotAllowed("prune as root: say whose storage with --account NAME or --root PATH")
    owner = resolve_owner(request)
    config = load_config(config_path, owner.pw_name)
    setup_logging(config.log_socket)
    drop_privileges(owner.pw_uid, owner.pw_gid)
    root_fd = open_root(request.root or config.root or owner.pw_dir)
    try:
        removed = run_prune(
            root_fd, request, lambda line: write_all(STDOUT, f"{line}\n".encode()),
            config.pending_max_age,
        )
    finally:
        os.close(root_fd)
    verb = "would remove" if request.dry_run else "removed"
    logger.info("prune account=%s %s=%d", owner.pw_name, verb.replace(" ", "-"), removed)
    return errors.EXIT_OK


def report(error: BaseException) -> int:
    """Given the error that ended the command, write the one stderr line and
    return the exit code."""
    if isinstance(error, ShellError):
        message, code = str(error), error.exit_code
    elif isinstance(error, OSError):
        message, code = f"I/O error: {os.strerror(error.errno or 0)}", errors.EXIT_IOERR
    else:
        message, code = "internal error; see the server's syslog", errors.EXIT_SOFTWARE
    try:
        os.write(STDERR, f"qbackup-shell: {message}\n".encode("ascii", "replace"))
    except OSError:
        pass  # the client is gone; the exit code still tells sshd
    return code


def main(argv: list[str], config_path: str, environ: Mapping[str, str] | None = None) -> int:
    """Given argv and the config path, run the shell; return the exit code."""
    environ = os.environ if environ is None else environ
    os.umask(0o077)
    outcome = Outcome()
    account = "?"
    try:
        invocation = parse_invocation(argv, environ)
        if invocation.prune_arguments is not None:
            outcome.command = "prune"
            return prune_locally(invocation.prune_arguments, config_path)
        # The protocol commands run with the account's rights only: as root,
        # a mistake in the storage walk would reach the whole machine.
        if os.getuid() == 0 or os.geteuid() == 0:
            raise NotAllowed("refusing to run as root; log in as the backup account")
        entry = pwd.getpwuid(os.getuid())
        account = entry.pw_name
        config = load_config(config_path, account)
        setup_logging(config.log_socket)
        for signum in FATAL_SIGNALS:
            signal.signal(signum, _raise_interrupted)
        assert invocation.command is not None  # noqa: S101 (parse_invocation returns one or the other)
        code = serve(invocation.command, config, entry.pw_dir, outcome)
        outcome.result = "ok" if code == errors.EXIT_OK else outcome.result
    except BaseException as error:  # every failure becomes one line and an exit code
        if isinstance(error, ShellError):
            outcome.result = error.outcome
        elif isinstance(error, OSError):
            outcome.result = "io-error"
        else:
            outcome.result = f"internal-error {error.__class__.__name__}"
        code = report(error)
    logger.info(
        "client=%s account=%s command=%s outcome=%s bytes=%d",
        client_address(environ), account, outcome.command, outcome.result, outcome.size,
    )
    return code


def console_main() -> None:
    """The `qbackup-shell` console script: main() with the default config."""
    sys.exit(main(sys.argv, config_path=DEFAULT_CONFIG_PATH))
