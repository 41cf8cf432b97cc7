"""qbackup-carrier: the carrier VM's command line, and the only place exit codes are decided.

Its verbs, their help and how argv becomes a Request: carrier_vm/arguments.py.
"""

from __future__ import annotations

import asyncio
import logging
import logging.handlers
import os
import signal
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO

from carrier_vm.abort import ABORT_WAIT, abort_puts, register_put
from carrier_vm.arguments import PROGRAM, Printout, parse_arguments
from carrier_vm.config import CarrierConfig, load_destinations
from carrier_vm.errors import CarrierError, Interrupted, TemporaryFailure, UsageError
from carrier_vm.qrexec import Request, service_request
from carrier_vm.transfers import load_stats
from qbackup_protocol.carrier_service import (
    DEFAULT_DESTINATION,
    CarrierExit,
    DestinationList,
    overall_exit,
)
from qbackup_protocol.wire import encode_reply

if TYPE_CHECKING:  # imported when needed: asyncssh is slow to import
    from carrier_vm.outcomes import Ended

logger = logging.getLogger("carrier_vm")

LOG_LEVEL_ENV = "QBACKUP_CARRIER_LOG"
# SIGPIPE stays ignored (Python's default): a broken pipe or connection then
# surfaces as EPIPE at the very write, which aborts the transfer with the
# precise reason (stdout reader gone, connection lost) instead of a signal name.
ABORT_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
# A backup being made (its put started, or its commit after Qubes succeeded)
# outlasts a brief outage of the server from its first connection on
# (outcomes.py); every other verb fails fast (dom0's `info` before Qubes'
# engine starts relies on that).


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


async def run_request(request: Request, configs: tuple[CarrierConfig, ...]) -> tuple[Ended, ...]:
    """Given a Request and the configs of the destinations it is for, carry
    it out, with the abort signals cancelling it; return the outcome of each
    destination for put and commit (nothing for the rest); raise a
    CarrierError if a verb of one destination fails."""
    from carrier_vm.download import get_backup
    from carrier_vm.outcomes import commit_everywhere, put_everywhere
    from carrier_vm.replies import run_text_command
    from carrier_vm.ssh import SETTLE_RETRY, open_link

    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None  # noqa: S101 - always inside asyncio.run
    aborting = Abort()

    def abort(signum: int) -> None:
        # Cancelling cuts the connection without an end frame, so the
        # server stages nothing.
        if aborting.signum is None:
            aborting.signum = signum
        cancel_until_done()

    def cancel_until_done() -> None:
        # Again until the cancel arrives: Python 3.11's wait_for can swallow
        # one, and an aborted put must not carry on as if nothing came.
        if not task.done() and not aborting.arrived:
            task.cancel()
            loop.call_later(SETTLE_RETRY, cancel_until_done)

    def stopping() -> bool:
        return aborting.signum is not None

    for signum in ABORT_SIGNALS:
        loop.add_signal_handler(signum, abort, signum)
    output = sys.stdout.buffer
    name = str(request.argument)
    try:
        if request.verb in ("put", "commit"):
            if request.verb == "put":
                outcomes = await put_everywhere(name, request.then_commit, configs,
                                                sys.stdin.fileno(), stopping)
            else:
                outcomes = await commit_everywhere(name, configs, stopping)
            for ended in outcomes:
                output.write(encode_reply(ended.outcome.to_reply()))
            output.flush()
            return outcomes
        async with open_link(configs[0], stopping) as link:
            if request.verb == "get":
                await get_backup(link, name, sys.stdout.fileno(), configs[0])
            else:
                await run_text_command(
                    link.connection, request.verb, request.argument, configs[0],
                    emit_to(output)
                )
            output.flush()
        return ()
    except asyncio.CancelledError:
        aborting.arrived = True
        if aborting.signum is None:
            raise
        signal_name = signal.Signals(aborting.signum).name
        # For put, the connection was cut before the end frame: the shell discards.
        outcomes_text = {
            "put": "upload aborted, nothing committed",
            "commit": "aborted; whether the server committed shows in its listing",
        }
        what = outcomes_text.get(request.verb, "aborted")
        raise Interrupted(f"interrupted by {signal_name}: {what}") from None


@dataclass
class Abort:
    """A signal that aborts the command: the first one received (None until
    then), and whether the cancel it sent has reached the command's task."""

    signum: int | None = None
    arrived: bool = False


def emit_to(output: BinaryIO) -> Callable[[bytes], None]:
    """Given a binary stream, return a function writing one reply line to it."""

    def emit(line: bytes) -> None:
        output.write(line)

    return emit


def main(argv: list[str] | None = None) -> int:
    """Given the arguments (sys.argv[1:] by default), run one carrier command
    and return its exit code; errors go to stderr as one line."""
    arguments = sys.argv[1:] if argv is None else argv
    configure_logging(os.environ)
    try:
        parsed = parse_arguments(arguments, "QREXEC_REMOTE_DOMAIN" in os.environ)
        if isinstance(parsed, Printout):
            sys.stdout.write(parsed.text)
            return CarrierExit.OK
        request = parsed
        if request.verb == "qrexec-service":
            request = service_request(request.argument, os.environ, sys.stdin.fileno())
        if request.verb == "abort":
            if not abort_puts(os.environ):
                raise TemporaryFailure(f"the running put did not end within {ABORT_WAIT:g}s")
            return CarrierExit.OK
        if request.verb == "put":
            if os.isatty(sys.stdin.fileno()):
                # Someone typing at a prompt, not Qubes' stream: refuse
                # rather than wait for a backup to be typed in.
                raise UsageError("put reads the backup data from stdin, which is a "
                                 "terminal: pipe or redirect the backup into it")
            # Registered before anything else, so abort can always find it.
            register_put(os.environ)
        destinations = load_destinations()
        chosen = destinations.pick(request.destinations)
        if request.verb == "destinations":
            listed = DestinationList(destinations.names)
            sys.stdout.buffer.write(encode_reply(listed.to_reply()))
            sys.stdout.flush()
            return CarrierExit.OK
        if request.verb == "transfer":
            # Local: what the last put of NAME in this VM went through, per destination.
            for config in chosen:
                stats = load_stats(os.environ, str(request.argument), config.destination)
                sys.stdout.buffer.write(encode_reply(stats.to_reply()))
            sys.stdout.flush()
            return CarrierExit.OK
        outcomes = asyncio.run(run_request(request, chosen))
        for ended in outcomes:
            if ended.message:
                where = ended.outcome.destination
                shown = "" if where == DEFAULT_DESTINATION else f"{where}: "
                sys.stderr.write(f"{PROGRAM}: {shown}{ended.message}\n")
        if outcomes:
            status = overall_exit(ended.outcome for ended in outcomes)
            return CarrierExit.OK if request.partial_ok and status == CarrierExit.PARTIAL \
                else status
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
