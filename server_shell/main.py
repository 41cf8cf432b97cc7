"""qbackup-shell: the login shell of a backup account. Reads top to bottom:

refuse root -> what argv and the environment ask for (pure) -> the config ->
the one protocol command (pure: a static verb table; refusals never echo the
client's input) -> a session slot -> run it against the storage root opened
once -> one syslog line -> the exit code, decided here only (ShellExit).

Modules: config.py (errors, settings), storage.py (the descriptor-based walk,
records, locks, the sweep), upload.py (put, resume, commit, the space guard),
reading.py (get, check, list, info). Admin actions (prune, status, scrub)
live in `qbackup-server`, which sshd can never reach.
"""

import os
import pwd
import re
import signal
import socket
import sys
from collections.abc import Mapping
from contextlib import ExitStack, suppress
from dataclasses import dataclass
from types import FrameType
from typing import Any

from qbackup_protocol import __version__, wire
from qbackup_protocol.wire import ShellExit

from .config import NotAllowed, Refused, SessionCut, ShellConfig, ShellError, load_config
from .reading import check_backup, describe_space, list_backups, send_backup
from .storage import open_root, take_session, write_all
from .upload import commit, put, resume

DEFAULT_CONFIG_PATH = "/etc/qbackup/qbackup-shell.conf"
STDIN = 0
STDOUT = 1
STDERR = 2
SHELL_NAME = "qbackup-shell"
ADMIN_VERBS = frozenset({"prune", "status", "scrub"})
PRINTABLE = frozenset(chr(code) for code in range(0x20, 0x7F))  # no NUL, newline, escape
OFFSET_PATTERN = re.compile(r"0|[1-9][0-9]{0,18}")
ADDRESS_PATTERN = re.compile(r"([0-9A-Fa-f.:%]{1,64}) ([0-9]{1,5})(?: |$)")
FATAL_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE)
# What an admin may ask the program itself (sshd never runs it so: it runs
# `-c COMMAND`); a client's command can never reach these.
ANSWERS = {
    "--version": f"{SHELL_NAME} {__version__}\n",
    "--help": f"usage: {SHELL_NAME} -c COMMAND\n\nThe login shell of a qbackup storage account:"
              " sshd runs it, one protocol command per session (man qbackup-shell).\n\n"
              "example: ssh ACCOUNT@SERVER info\n\nexit codes:\n"
              + "".join(f"  {int(code):3d}  {code.meaning}\n" for code in ShellExit),
}


@dataclass(frozen=True)
class Request:
    """One protocol command: a verb, its checked argument, get's offset."""

    verb: str
    argument: str | None = None
    offset: int = 0


def parse_command(text: str) -> Request:
    """Given the command text a client sent, return its Request; raise
    NotAllowed for an admin verb, Refused for anything outside the grammar."""
    if len(text) > wire.MAX_COMMAND_LENGTH:
        raise Refused("command too long")
    # Control characters never belong in a command: refused before splitting.
    if not set(text) <= PRINTABLE:
        raise Refused("command contains control or non-ASCII characters")
    # Exactly one space between words, no quoting: one way to read a command.
    verb, *arguments = text.split(" ")
    if verb in ADMIN_VERBS:
        raise NotAllowed("that is an admin action: run qbackup-server on the server as root")
    if verb not in wire.ALL_VERBS:
        raise Refused("unknown command (allowed: put, resume, commit, get, list, check, info)")
    try:
        if verb == wire.VERB_GET and len(arguments) == 2:
            if not OFFSET_PATTERN.fullmatch(arguments[1]):
                raise Refused("get takes a name and an optional decimal offset")
            return Request(verb, wire.check_name(arguments[0]), int(arguments[1]))
        if verb in wire.VERBS_WITH_NAME:
            if len(arguments) != 1:
                raise Refused(f"{verb} takes exactly one name")
            return Request(verb, wire.check_name(arguments[0]))
        if verb in wire.VERBS_WITH_OPTIONAL_PREFIX:
            if len(arguments) > 1:
                raise Refused(f"{verb} takes at most one prefix")
            return Request(verb, wire.check_prefix(arguments[0]) if arguments else "")
        if arguments:
            raise Refused(f"{verb} takes no argument")
        return Request(verb)
    except wire.InvalidName as error:
        raise Refused(f"invalid name: {error}") from None  # the rule, never the name


def parse_invocation(argv: list[str], environ: Mapping[str, str]) -> str:
    """Given argv and the environment, return the client's command text; raise
    NotAllowed for an interactive login, Refused for any other argv shape.

    sshd runs a login shell as `SHELL -c COMMAND` for every exec request (scp,
    sftp, rsync included) and as `-SHELL` for an interactive login. With
    `command="/usr/sbin/qbackup-shell"` in authorized_keys (the forced command
    that also stops internal-sftp), sshd runs `SHELL -c FORCED` -- or, under
    another login shell, FORCED with no argument -- and puts the client's
    command in SSH_ORIGINAL_COMMAND."""
    arguments = argv[1:]
    if arguments and (arguments[0] != "-c" or len(arguments) != 2):
        raise Refused("usage: qbackup-shell -c COMMAND (sshd runs it; see man qbackup-shell)")
    # Run as the forced command (no argument, or `-c` the shell's own path):
    # the client's command is in the environment.
    forced = not arguments or (
        " " not in arguments[1] and os.path.basename(arguments[1]) == SHELL_NAME)
    if not forced:
        return arguments[1]
    original = environ.get("SSH_ORIGINAL_COMMAND")
    if original is None:
        raise NotAllowed("interactive logins are not allowed; this account only stores backups")
    return original


@dataclass
class Outcome:
    """What the session's syslog line says: the command, how it ended and the
    bytes it moved; FAILED, once set, is what a failure after that point means."""

    command: str = "(refused)"
    result: str = "ok"
    bytes: int = 0
    failed: str | None = None


def serve(request: Request, config: ShellConfig, home: str, outcome: Outcome) -> ShellExit:
    """Given a parsed request, the account's config and home, and the
    session's Outcome to fill in, take a session slot and run it; return the
    exit code; raise ShellError or OSError."""
    timeout = config.idle_timeout
    name = request.argument or ""

    def reply(fields: dict[str, Any]) -> None:
        write_all(STDOUT, wire.encode_reply(fields), timeout)

    with ExitStack() as closing:
        root_fd = open_root(config.root or home)
        closing.callback(os.close, root_fd)
        closing.callback(os.close, take_session(root_fd, config.max_sessions))
        if request.verb in (wire.VERB_PUT, wire.VERB_RESUME):
            receive = put if request.verb == wire.VERB_PUT else resume
            record = receive(root_fd, name, STDIN, config, reply)
            outcome.bytes = record.size
            reply(record.to_reply())
        elif request.verb == wire.VERB_COMMIT:
            record = commit(root_fd, name)
            outcome.bytes = record.size
            outcome.failed = "committed-receipt-lost"  # NAME is published: only the receipt is lost
            reply(record.to_reply())
        elif request.verb == wire.VERB_GET:
            outcome.bytes = send_backup(root_fd, name, request.offset, STDOUT, timeout)
        elif request.verb == wire.VERB_CHECK:
            result = check_backup(root_fd, name)
            outcome.bytes = result.record.size
            reply(result.to_reply())
            if not result.ok:
                outcome.result = "mismatch"
                return ShellExit.DATA
        elif request.verb == wire.VERB_LIST:
            pending = bytearray()
            for item in list_backups(root_fd, name):
                pending += wire.encode_reply(item.to_reply())
                if len(pending) >= 65536 or isinstance(item, wire.ListEnd):  # few writes
                    write_all(STDOUT, pending, timeout)
                    pending.clear()
        else:
            reply(describe_space(root_fd, config.reserve, config.quota).to_reply())
        return ShellExit.OK


def send_log(socket_path: str, message: str) -> None:
    """Given the syslog socket and a line, send it as daemon.info, ident
    qbackup-shell; logging never fails a backup."""
    with suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(f"<30>{SHELL_NAME}: {message}\x00".encode("ascii", "replace"), socket_path)


def client_address(environ: Mapping[str, str]) -> str:
    """Given the environment, return "ADDRESS port PORT" from SSH_CONNECTION
    ("local" without one, "unknown" if it does not look like one: a log line
    never carries control characters)."""
    connection = environ.get("SSH_CONNECTION")
    if not connection:
        return "local"
    match = ADDRESS_PATTERN.match(connection)
    return f"{match[1]} port {match[2]}" if match else "unknown"


def _interrupt(signum: int, frame: FrameType | None) -> None:
    # Further signals are ignored: the cleanup this starts must not be cut short.
    for other in (*FATAL_SIGNALS, signal.SIGALRM):
        signal.signal(other, signal.SIG_IGN)
    if signum == signal.SIGALRM:
        raise SessionCut("no progress for the idle timeout; the session was abandoned")
    raise SessionCut(f"interrupted by signal {signal.Signals(signum).name}")


@dataclass(frozen=True)
class Failure:
    """How the session ends after an error: the client's one line, the exit code, the log's word."""

    message: str
    code: ShellExit
    result: str


def failure(error: BaseException) -> Failure:
    """Given the error that ended the session, return how it ends."""
    if isinstance(error, ShellError):
        return Failure(str(error), error.exit_code, error.outcome)
    if isinstance(error, OSError):
        return Failure(f"I/O error: {error.strerror}", ShellExit.IO, "io-error")
    return Failure("internal error; see the server's syslog", ShellExit.SOFTWARE,
                   f"internal-error {error.__class__.__name__}")


def main(argv: list[str], config_path: str, environ: Mapping[str, str] | None = None) -> int:
    """Given argv and the config path, run the shell; return the exit code."""
    if " ".join(argv[1:]) in ANSWERS:
        os.write(STDOUT, ANSWERS[" ".join(argv[1:])].encode("ascii"))
        return 0
    environ = os.environ if environ is None else environ
    os.umask(0o077)
    outcome = Outcome()
    account = "?"
    log_socket = ShellConfig.log_socket  # the default until the config is read
    try:
        try:
            # As root, a mistake in the storage walk would reach the whole machine.
            if os.getuid() == 0 or os.geteuid() == 0:
                raise NotAllowed("refusing to run as root; log in as the backup account")
            entry = pwd.getpwuid(os.getuid())
            account = entry.pw_name
            config = load_config(config_path, account)
            log_socket = config.log_socket
            request = parse_command(parse_invocation(argv, environ))
            outcome.command = f"{request.verb} {request.argument or ''}".strip()
            for signum in (*FATAL_SIGNALS, signal.SIGALRM):
                signal.signal(signum, _interrupt)
            code = serve(request, config, entry.pw_dir, outcome)
        finally:  # the report must get out: a SIGPIPE while writing it must not cut it
            signal.pthread_sigmask(signal.SIG_BLOCK, (*FATAL_SIGNALS, signal.SIGALRM))
    except BaseException as error:  # every failure: one stderr line and an exit code
        ended = failure(error)
        code = ended.code
        outcome.result = outcome.failed or ended.result  # the log says what happened
        with suppress(OSError):  # the client is gone; the exit code still tells sshd
            os.write(STDERR, f"{SHELL_NAME}: {ended.message}\n".encode("ascii", "replace"))
    send_log(log_socket, f"client={client_address(environ)} account={account} command="
             f"{outcome.command} outcome={outcome.result} bytes={outcome.bytes}")
    return int(code)


def console_main() -> None:
    """The `qbackup-shell` console script: main() with the default config."""
    sys.exit(main(sys.argv, config_path=DEFAULT_CONFIG_PATH))
