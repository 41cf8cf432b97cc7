"""qbackup-carrier: the carrier VM's command line, and the only place exit codes are decided.

    qbackup-carrier put NAME        backup on stdin -> server, STAGED (not yet a backup);
                                    the staged upload's receipt, one JSON line, on stdout
    qbackup-carrier commit NAME     publish the staged upload as backup NAME (dom0 sends
                                    it after Qubes' backup succeeded); receipt on stdout
    qbackup-carrier put --commit NAME
                                    put, then commit, in one run (standalone use and
                                    tests; dom0 hands Qubes the plain put)
    qbackup-carrier get NAME        stored backup -> stdout, verified (repeatable)
    qbackup-carrier list [PREFIX]   JSON lines, ending with the summary line
    qbackup-carrier check NAME      one JSON line: the record and "ok"
    qbackup-carrier info            one JSON line: protocol and space
    qbackup-carrier transfer NAME   one JSON line: how the last put of NAME in this VM
                                    went (connection lost, outages, bytes resent)
    qbackup-carrier abort           end the put running in this VM (no end frame is
                                    sent, so the server stages nothing); waits up to
                                    10 s; exit 0 once no put runs
    qbackup-carrier qrexec-service [ARG]
                                    what /etc/qubes-rpc/qubes.BackupCarrier runs
"""

from __future__ import annotations

import asyncio
import logging
import logging.handlers
import os
import signal
import sys
from collections.abc import Callable, Mapping
from typing import BinaryIO

from carrier_vm.abort import ABORT_WAIT, abort_puts, register_put
from carrier_vm.config import CONFIG_ENV, DEFAULT_CONFIG_PATH, CarrierConfig, load_config
from carrier_vm.errors import CarrierError, Interrupted, TemporaryFailure, UsageError
from carrier_vm.qrexec import Request, service_request
from carrier_vm.transfers import load_stats
from qbackup_protocol.carrier_service import CarrierExit
from qbackup_protocol.wire import InvalidName, check_name, check_prefix, encode_reply

logger = logging.getLogger("carrier_vm")

PROGRAM = "qbackup-carrier"
LOG_LEVEL_ENV = "QBACKUP_CARRIER_LOG"
# SIGPIPE stays ignored (Python's default): a broken pipe or connection then
# surfaces as EPIPE at the very write, which aborts the transfer with the
# precise reason (stdout reader gone, connection lost) instead of a signal name.
ABORT_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
# A backup being made (its put started, or its commit after Qubes succeeded)
# outlasts a brief outage of the server from its first connection on; every
# other verb fails fast (dom0's `info` before Qubes' engine starts relies on that).
PATIENT_VERBS = frozenset({"put", "commit"})
USAGE = (
    f"usage: {PROGRAM} put [--commit] NAME | commit NAME | get NAME | list [PREFIX]"
    " | check NAME | info | abort | transfer NAME | qrexec-service [ARG]"
)


def parse_arguments(argv: list[str]) -> Request:
    """Given the arguments after the program name, return the Request; raise
    UsageError for an unknown verb, a wrong argument count or an invalid name."""
    if not argv:
        raise UsageError(USAGE)
    verb = argv[0]
    rest = argv[1:]
    try:
        if verb == "put" and len(rest) == 2 and rest[0] == "--commit":
            return Request(verb, check_name(rest[1]), then_commit=True)
        # `put --commit` without a NAME must not stage a backup named
        # "--commit": words starting with "--" are options of put, never names.
        if verb == "put" and rest and rest[0].startswith("--"):
            raise UsageError(USAGE)
        if verb in ("put", "commit", "get", "check", "transfer") and len(rest) == 1:
            return Request(verb, check_name(rest[0]))
        if verb == "list" and len(rest) <= 1:
            return Request(verb, check_prefix(rest[0]) if rest and rest[0] else None)
        if verb in ("info", "abort") and not rest:
            return Request(verb, None)
        if verb == "qrexec-service" and len(rest) <= 1:
            return Request(verb, rest[0] if rest else None)
    except InvalidName as error:
        raise UsageError(f"invalid backup name: {error}") from None
    raise UsageError(USAGE)


def configure_logging(environ: Mapping[str, str]) -> None:
    """Set up logging once: the story of each run to syslog when /dev/log
    exists; to stderr only when QBACKUP_CARRIER_LOG names a level (stderr is
    otherwise reserved for the one-line error that dom0 shows)."""
    root = logging.getLogger()
    root.setLevel(logging.DEBUG)
    root.addHandler(logging.NullHandler())  # no "last resort" output on stderr
    logging.getLogger("asyncssh").setLevel(logging.WARNING)
    wanted = environ.get(LOG_LEVEL_ENV, "").upper()
    if wanted in ("DEBUG", "INFO", "WARNING", "ERROR"):
        stderr = logging.StreamHandler(sys.stderr)
        stderr.setLevel(wanted)
        stderr.setFormatter(logging.Formatter(f"{PROGRAM}: %(levelname)s: %(message)s"))
        root.addHandler(stderr)
    if os.path.exists("/dev/log"):
        try:
            syslog = logging.handlers.SysLogHandler(address="/dev/log")
        except OSError:
            return
        syslog.setLevel(logging.INFO)
        syslog.setFormatter(logging.Formatter(f"{PROGRAM}[{os.getpid()}]: %(message)s"))
        root.addHandler(syslog)


async def run_request(request: Request, config: CarrierConfig) -> None:
    """Given a Request and the config, carry it out against the server, with
    the abort signals cancelling it; raise a CarrierError on failure."""
    from carrier_vm.commit import commit_backup
    from carrier_vm.download import get_backup
    from carrier_vm.replies import run_text_command
    from carrier_vm.ssh import SETTLE_RETRY, open_link
    from carrier_vm.transfers import load_receipt, save_receipt, save_stats
    from carrier_vm.upload import put_backup

    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None  # noqa: S101 - always inside asyncio.run
    received: list[int] = []
    cancel_arrived: list[bool] = []

    def abort(signum: int) -> None:
        # Cancelling cuts the connection without an end frame, so the
        # server stages nothing.
        received.append(signum)
        cancel_until_done()

    def cancel_until_done() -> None:
        # Again until the cancel arrives: Python 3.11's wait_for can swallow
        # one, and an aborted put must not carry on as if nothing came.
        if not task.done() and not cancel_arrived:
            task.cancel()
            loop.call_later(SETTLE_RETRY, cancel_until_done)

    for signum in ABORT_SIGNALS:
        loop.add_signal_handler(signum, abort, signum)
    output = sys.stdout.buffer
    try:
        patient = request.verb in PATIENT_VERBS
        async with open_link(config, lambda: bool(received), patient) as link:
            name = str(request.argument)
            if request.verb == "put":
                upload = await put_backup(
                    link,
                    name,
                    sys.stdin.fileno(),
                    config,
                    lambda stats: save_stats(os.environ, stats),
                )
                record = upload.record
                save_receipt(os.environ, record)
                if request.then_commit:
                    record = await commit_backup(link, name, config, record)
                output.write(encode_reply(record.to_reply()))
            elif request.verb == "commit":
                # dom0's path: compare with what the put in this VM verified.
                sent = load_receipt(os.environ, name)
                record = await commit_backup(link, name, config, sent)
                output.write(encode_reply(record.to_reply()))
            elif request.verb == "get":
                await get_backup(link, name, sys.stdout.fileno(), config)
            else:
                await run_text_command(
                    link.connection, request.verb, request.argument, config, emit_to(output)
                )
            output.flush()
    except asyncio.CancelledError:
        cancel_arrived.append(True)
        if not received:
            raise
        name = signal.Signals(received[0]).name
        # For put, the connection was cut before the end frame: the shell discards.
        outcomes = {
            "put": "upload aborted, nothing committed",
            "commit": "aborted; whether the server committed shows in its listing",
        }
        outcome = outcomes.get(request.verb, "aborted")
        raise Interrupted(f"interrupted by {name}: {outcome}") from None


def emit_to(output: BinaryIO) -> Callable[[bytes], None]:
    """Given a binary stream, return a function writing one reply line to it."""

    def emit(line: bytes) -> None:
        output.write(line)

    return emit


def help_text() -> str:
    """Return the --help text: the commands, where the config lives, the exit codes."""
    codes = "\n".join(
        f"  {int(code):3d}  {code.meaning}" for code in CarrierExit
    )
    return (
        f"{__doc__}\n"
        f"Configuration: {DEFAULT_CONFIG_PATH}, or the file named by ${CONFIG_ENV};\n"
        f"SSH_CONN=[user@]host supplies host and user. Every key is described in\n"
        f"carrier.yaml.example (installed with the documentation).\n\n"
        f"Exit codes:\n{codes}\n"
    )


def main(argv: list[str] | None = None) -> int:
    """Given the arguments (sys.argv[1:] by default), run one carrier command
    and return its exit code; errors go to stderr as one line."""
    arguments = sys.argv[1:] if argv is None else argv
    configure_logging(os.environ)
    if arguments in (["-h"], ["--help"]):
        sys.stdout.write(help_text())
        return CarrierExit.OK
    try:
        request = parse_arguments(arguments)
        if request.verb == "qrexec-service":
            request = service_request(request.argument, os.environ, sys.stdin.fileno())
        if request.verb == "abort":
            if not abort_puts(os.environ):
                raise TemporaryFailure(f"the running put did not end within {ABORT_WAIT:g}s")
            return CarrierExit.OK
        if request.verb == "transfer":
            # Local: what the last put of NAME in this VM went through.
            stats = load_stats(os.environ, str(request.argument))
            sys.stdout.buffer.write(encode_reply(stats.to_reply()))
            sys.stdout.flush()
            return CarrierExit.OK
        if request.verb == "put":
            # Registered before anything else, so abort can always find it.
            register_put(os.environ)
        config = load_config()
        asyncio.run(run_request(request, config))
    except CarrierError as error:
        logger.debug("failed", exc_info=True)
        sys.stderr.write(f"{PROGRAM}: {error}\n")
        return error.exit_code
    except BrokenPipeError:
        # Whoever read our stdout went away: the transfer is aborted.
        sys.stderr.write(f"{PROGRAM}: output closed by the reader; transfer aborted\n")
        return CarrierExit.TEMPORARY
    except Exception as error:  # noqa: BLE001 - the documented code, never a traceback
        logger.error("internal error", exc_info=True)
        sys.stderr.write(f"{PROGRAM}: internal error: {type(error).__name__}\n")
        return CarrierExit.SOFTWARE
    return CarrierExit.OK


def console_main() -> None:
    """Entry point for the launcher: exit with main()'s code."""
    sys.exit(main())


if __name__ == "__main__":
    console_main()
