"""The server as seen through the carrier VM's `qubes.BackupCarrier` service.

What goes out: backup names, checked against the protocol's name rules
(`qbackup_protocol.wire`, the one definition all three parts share) before they
reach the carrier's `eval` or its stdin. The verb travels in the service name
(`qubes.BackupCarrier+list`) and the name or prefix as ONE line on stdin:
qrexec arguments cannot hold '/'.

What comes back is hostile (the carrier is networked, dom0 is not): its size
is bounded by the adapter, every line is parsed strictly by the protocol
module's parsers, ANY failure of a parser (deep nesting included) becomes a
ReplyError, and error text is cleaned before anyone sees it. dom0 never
imports the carrier's code.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

from dom0.errors import (
    CARRIER_STATUS_ERRORS,
    CarrierFailed,
    CarrierRefused,
    NoSuchBackup,
    QbackupError,
    QubesError,
    TemporaryFailure,
    UsageError,
)
from dom0.log import last_line
from dom0.qubes import QubesAdapter
from dom0.settings import default
from qbackup_protocol import carrier_service, client, wire

logger = logging.getLogger(__name__)
SERVICE = "qubes.BackupCarrier"
Record = wire.BackupRecord
# The largest listing dom0 reads: MAX_LIST_ENTRIES short lines; a longer answer
# is refused rather than buffered (the adapter stops reading at this bound).
MAX_LISTING_BYTES = 32 * 1024 * 1024
MAX_SHORT_REPLY = 64 * 1024
# Nothing dom0 asks the carrier may wait for ever: a hung carrier, a server
# that stops answering while sshd keeps the connection alive, a hung disk.
# Each call gets a deadline (the job's `answer_timeout`, else its default);
# past it, the call is killed and the run fails as temporary (exit 75).
# `check` re-hashes the whole backup on the server, so it gets
# CHECK_SECONDS_PER_GIB more per GiB of the backup's size (from a listing first).
DEFAULT_ANSWER_TIMEOUT = float(default("answer_timeout"))
CHECK_SECONDS_PER_GIB = 60.0  # the server re-hashes at 17 MB/s or faster
GIB = 1024**3


def seconds(value: float) -> str:
    """Given a duration, return it as a person reads it: 300, 0.2, 1234.5."""
    return f"{value:.1f}".rstrip("0").rstrip(".")


MAX_LOOKUPS = 1000  # names looked up one by one when a listing was cut short
Parsed = TypeVar("Parsed")


class ReplyError(CarrierFailed):
    """A reply from the carrier breaks the rules (never echoes the reply)."""


def check_name(name: str) -> str:
    """Given a backup NAME from the user, return it; raise UsageError unless the
    protocol's naming rules (and so shell safety: no quote, space, '$' or
    newline can reach the carrier's `eval`) hold."""
    try:
        return wire.check_name(name)
    except wire.InvalidName:
        raise UsageError("invalid backup name: use a name `qbackup list` shows") from None


def no_such_backup(name: str) -> NoSuchBackup:
    """Given a (checked) backup NAME, return THE error for a name the server
    does not hold: the same line and exit code for verify, restore and check."""
    return NoSuchBackup(f"no such backup on the server: {name} (see qbackup list)")


@dataclass(frozen=True)
class Listing:
    """All records of a listing and whether the server cut it short."""

    records: list[Record]
    truncated: bool


def parse_line(parser: Callable[[bytes], Parsed], line: bytes, what: str) -> Parsed:
    """Given a protocol PARSER and one untrusted LINE, return what it parsed;
    raise ReplyError for anything the parser raises, whatever it is (a line of
    `[[[[...` makes json raise RecursionError, not ValueError)."""
    try:
        return parser(line)
    except (wire.ProtocolError, ValueError, RecursionError, MemoryError):
        raise ReplyError(f"the carrier sent a malformed {what}") from None


def single_line(data: bytes, what: str) -> bytes:
    """Given a reply that must be one line, return it without its newline."""
    if len(data) > wire.MAX_REPLY_LINE + 1 or not data.endswith(b"\n") \
            or data.count(b"\n") != 1:
        raise ReplyError(f"the carrier's {what} is not exactly one line")
    return data[:-1]


def parse_receipt(data: bytes, name: str) -> Record:
    """Given the stdout of `commit NAME`, return the committed Record; raise
    ReplyError unless it is one receipt line for NAME."""
    return parse_line(lambda line: client.parse_receipt(line, name), data, "receipt")


def parse_info(data: bytes) -> wire.ServerInfo:
    """Given the stdout of `info`, return ServerInfo; raise ReplyError otherwise."""
    return parse_line(client.parse_info, single_line(data, "info reply"), "info reply")


def parse_check(data: bytes) -> wire.CheckResult:
    """Given the stdout of `check NAME`, return its CheckResult."""
    return parse_line(client.parse_check, single_line(data, "check reply"), "check reply")


def parse_listing(data: bytes) -> Listing:
    """Given the stdout of `list`, return a Listing; raise ReplyError unless it
    is records then one summary line whose count matches, all within bounds."""
    if len(data) > MAX_LISTING_BYTES:
        raise ReplyError("the carrier's listing is larger than any real one")
    if not data.endswith(b"\n"):
        raise ReplyError("the carrier's listing is truncated")
    lines = data[:-1].split(b"\n")
    if len(lines) > wire.MAX_LIST_ENTRIES + 1:
        raise ReplyError("the carrier's listing has too many entries")
    records = [parse_line(client.parse_record, line, "listing entry") for line in lines[:-1]]
    summary = parse_line(client.parse_list_line, lines[-1], "listing summary")
    if not isinstance(summary, wire.ListEnd):
        raise ReplyError("the carrier's listing lacks its summary line")
    if summary.count != len(records):
        raise ReplyError("the carrier's listing summary does not match its entries")
    if summary.truncated and summary.count != wire.MAX_LIST_ENTRIES:
        # The server cuts a listing only when it is full; a carrier claiming
        # a cut elsewhere would hide vanished backups from the tamper check.
        raise ReplyError("the carrier's listing claims a cut the server never makes")
    if len({record.name for record in records}) != len(records):
        raise ReplyError("the carrier's listing names a backup twice")
    return Listing(records=records, truncated=summary.truncated)


def parse_outcomes(data: bytes, name: str) -> tuple[carrier_service.DestinationOutcome, ...]:
    """Given the stdout of `commit NAME`, return one outcome per destination;
    raise ReplyError unless it is outcome lines (carrier_service's rules) or,
    from a carrier of one server that predates destinations, one receipt
    line: then the one destination DEFAULT_DESTINATION."""
    try:
        return carrier_service.parse_outcomes(data, name)
    except (wire.ProtocolError, ValueError, RecursionError, MemoryError):
        pass
    record = parse_receipt(data, name)
    return (carrier_service.DestinationOutcome(carrier_service.DEFAULT_DESTINATION, record,
                                               carrier_service.CarrierExit.OK),)


def carrier_error(status: int) -> tuple[type[QbackupError], str]:
    """Given a carrier's exit STATUS, return the error class dom0 raises for
    it and the reason it gives (an unknown status: CarrierFailed)."""
    try:
        return CARRIER_STATUS_ERRORS[carrier_service.CarrierExit(status)]
    except (ValueError, KeyError):
        return CarrierFailed, f"the carrier failed (status {status})"


@dataclass(frozen=True)
class Answer:
    """What one service call ended with: its exit status, stdout and stderr."""

    status: int
    stdout: bytes
    stderr: bytes


class CarrierClient:
    """The server as seen through one carrier VM: list, check and info ask
    DESTINATION (None: the carrier's first)."""

    def __init__(self, app: QubesAdapter, vm: str,
                 answer_timeout: float = DEFAULT_ANSWER_TIMEOUT,
                 destination: str | None = None) -> None:
        self.app = app
        self.vm = vm
        self.answer_timeout = answer_timeout
        self.destination = destination

    def _ask(self, verb: str, argument: str, max_output: int, deadline: float | None = None,
             destination: str | None = None) -> Answer:
        """Given a verb, its one-line argument, a deadline in seconds (default
        the answer timeout) and the destination to ask (None: the carrier's
        choice), return how the service ended; raise TemporaryFailure past
        the deadline. DEFAULT_DESTINATION is never sent: it is the one server
        of a carrier that may predate destinations (and its first)."""
        deadline = deadline or self.answer_timeout
        lines = argument + "\n"
        if destination is not None and destination != carrier_service.DEFAULT_DESTINATION:
            lines += carrier_service.check_destination(destination) + "\n"
        try:
            stdout = self.app.run_service_for_stdio(
                self.vm, f"{SERVICE}+{verb}", lines.encode(), max_output=max_output,
                timeout=deadline)
        except subprocess.TimeoutExpired:
            raise TemporaryFailure(f"{verb} via {self.vm}: no answer within {seconds(deadline)} s;"
                                 " stopped waiting (try again later)") from None
        except subprocess.CalledProcessError as error:
            return Answer(error.returncode, error.stdout or b"", error.stderr or b"")
        except OSError as error:
            raise QubesError(f"cannot call {SERVICE} in {self.vm}: {error}") from None
        return Answer(0, stdout, b"")

    def _fail(self, verb: str, argument: str, answer: Answer) -> QbackupError:
        """Given a call that ended with a non-zero status, return the error to raise."""
        cls, reason = carrier_error(answer.status)
        if cls is NoSuchBackup:  # one message, whichever command asked
            return no_such_backup(argument)
        detail = last_line(answer.stderr)
        where = self.vm if self.destination is None else f"{self.vm} ({self.destination})"
        return cls(f"{verb} via {where}: {reason}" + (f": {detail}" if detail else ""))

    def _call(self, verb: str, argument: str, max_output: int,
              deadline: float | None = None) -> bytes:
        """Given a verb, its one-line argument and a deadline in seconds (default
        the answer timeout), return the service's stdout for this client's
        destination; raise the error class the carrier's exit status maps
        to, TemporaryFailure past the deadline."""
        answer = self._ask(verb, argument, max_output, deadline, self.destination)
        if answer.status != 0:
            raise self._fail(verb, argument, answer)
        return answer.stdout

    def destinations(self) -> tuple[str, ...]:
        """Return the carrier's destinations in its order; a carrier that
        refuses the verb predates destinations: its one server is
        DEFAULT_DESTINATION."""
        try:
            answer = self._call("destinations", "", MAX_SHORT_REPLY)
        except CarrierRefused:
            logger.info("%s does not know destinations: one server, %s", self.vm,
                        carrier_service.DEFAULT_DESTINATION)
            return (carrier_service.DEFAULT_DESTINATION,)
        listed = parse_line(carrier_service.parse_destination_list,
                            single_line(answer, "destination list"), "destination list")
        return listed.names

    def info(self) -> wire.ServerInfo:
        """Return the server's space report; raise TemporaryFailure if unreachable."""
        return parse_info(self._call("info", "", MAX_SHORT_REPLY))

    def listing(self, prefix: str = "") -> Listing:
        """Given a name PREFIX ('' for all), return the server's listing."""
        return parse_listing(self._call("list", prefix, MAX_LISTING_BYTES))

    def records_of(self, names: Iterable[str], listing: Listing) -> list[Record]:
        """Given committed NAMES and a LISTING, return the listing's records
        plus, when the listing was cut short, those of each name it lacks
        (asked one by one, at most MAX_LOOKUPS); raise ReplyError if there are
        more: a cut listing must never make a vanished backup look fine."""
        records = list(listing.records)
        if not listing.truncated:
            return records
        listed = {record.name for record in records}
        missing = sorted(set(names) - listed)
        if len(missing) > MAX_LOOKUPS:
            raise ReplyError(f"the server's listing is cut short and {len(missing)} recorded"
                             " backups are not in it: give the job a narrower prefix")
        for name in missing:
            records += [record for record in self.listing(name).records
                        if record.name == name]
        return records

    def check(self, name: str) -> wire.CheckResult:
        """Given a backup NAME, return its record and whether the server's
        re-hash matched; raise NoSuchBackup, Corrupted (the carrier's own
        verdict) or another CarrierFailed."""
        size = self.require(name).size  # the re-hash takes time in proportion
        deadline = self.answer_timeout + CHECK_SECONDS_PER_GIB * size / GIB
        result = parse_check(self._call("check", check_name(name), MAX_SHORT_REPLY, deadline))
        if result.record.name != name:
            raise ReplyError("the carrier's check reply names another backup")
        return result

    def require(self, name: str) -> Record:
        """Given a backup NAME, return its record from the server's listing
        (cheap: no re-hash); raise NoSuchBackup if the server has none."""
        listing = self.listing(check_name(name))
        for record in listing.records:
            if record.name == name:
                return record
        raise no_such_backup(name)

    def transfer(self, name: str) -> dict[str, carrier_service.TransferStats]:
        """Given the NAME of a backup this carrier uploaded, return how the
        upload went to each destination (connection losses, outages, bytes
        sent again); raise ReplyError unless it is one line per destination,
        each destination once, each about NAME."""
        answer = self._call("transfer", check_name(name), MAX_SHORT_REPLY)
        if not answer.endswith(b"\n") or answer.count(b"\n") > carrier_service.MAX_DESTINATIONS:
            raise ReplyError("the carrier's transfer reply is not a line per destination")
        found: dict[str, carrier_service.TransferStats] = {}
        for line in answer[:-1].split(b"\n"):
            stats = parse_line(carrier_service.parse_transfer_stats, line, "transfer reply")
            if stats.name != name:
                raise ReplyError("the carrier's transfer reply names another backup")
            if stats.destination in found:
                raise ReplyError("the carrier's transfer reply names a destination twice")
            found[stats.destination] = stats
        return found

    def commit(self, name: str) -> tuple[carrier_service.DestinationOutcome, ...]:
        """Given the NAME of a staged upload, have every destination that
        staged it publish it; return one outcome per destination (a receipt,
        or why it failed there); raise CarrierFailed if nothing was staged,
        ReplyError if the lines break the rules or the exit status
        contradicts them, else the error the status maps to when the carrier
        printed no outcome."""
        answer = self._ask("commit", check_name(name), MAX_SHORT_REPLY)
        if answer.status != 0 and not answer.stdout:
            if answer.status == carrier_service.CarrierExit.NO_SUCH_BACKUP:
                # For commit, "no such backup" means the put staged nothing: the
                # upload failed, a carrier fault rather than a user's wrong name.
                raise CarrierFailed(f"commit via {self.vm}: nothing staged under {name}")
            raise self._fail("commit", name, answer)
        outcomes = parse_outcomes(answer.stdout, name)
        # Threat: a carrier whose status says "all committed" while a line
        # says one failed (or the reverse) would let a run report the wrong end.
        if carrier_service.overall_exit(outcomes) != answer.status:
            raise ReplyError("the carrier's commit status contradicts its outcome lines")
        return outcomes
