"""The carrier's contract with dom0: what ``qbackup-carrier`` and the
``qubes.BackupCarrier`` qrexec service tell dom0 beyond the server's own
replies (which pass through as the wire module's lines).

Pure data and pure functions, standard library only: the carrier's exit
statuses, its destinations (the servers one carrier feeds from one stream)
and what it reports per destination, and the transfer statistics of an
upload. The carrier VM and dom0 import this module; the server never does
(it is not installed there).

A ``qubes.BackupCarrier+VERB`` call reads its argument (a name or prefix,
possibly empty) as the first line of stdin and, optionally, a destination
as the second (``--from D`` of the command line). Without one, list, check,
get and info ask the first destination of carrier.yaml; commit and transfer
answer for every destination, one DestinationOutcome (or TransferStats) line
each; ``destinations`` answers one DestinationList line.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from qbackup_protocol.client import check_receipt, load_reply_line, parse_record, require_name
from qbackup_protocol.wire import (
    MAX_REPLY_LINE,
    BackupRecord,
    ExitStatus,
    ProtocolError,
    require_int,
)


class CarrierExit(ExitStatus):
    """How ``qbackup-carrier`` (and the ``qubes.BackupCarrier`` service) ends.
    dom0 reads these; nothing else may spell the numbers."""

    OK = 0, "success"
    USAGE = 64, "bad arguments or request"
    DATA = 65, "stream truncated or garbled, or a length/digest mismatch in transit"
    NO_SUCH_BACKUP = 66, "no such backup (commit: nothing staged under that name)"
    CORRUPTED = 68, "the stored backup differs from its digest record on the server"
    REFUSED = 69, "the server refused (no space, quota, another upload running)"
    SOFTWARE = 70, "internal error in the carrier"
    EXISTS = 73, "a backup of that name already exists"
    TEMPORARY = 75, "server unreachable or connection lost: try again later"
    LOGIN_REFUSED = 76, "the server refused the carrier's key"
    HOST_KEY = 77, "the server's host key is not pinned or does not match"
    CONFIG = 78, "the carrier's configuration is missing or invalid"
    PARTIAL = 79, "some destinations succeeded, others did not (a line each says which)"


# --- destinations ----------------------------------------------------------------
# A destination's name: carrier.yaml's key under `destinations:`, `--to` and
# `--from` of the command line, dom0's job setting, its history and messages.
DESTINATION_PATTERN = re.compile(r"[a-z][a-z0-9_-]{0,31}")
DEFAULT_DESTINATION = "default"  # the one destination of a carrier.yaml with `host:` only
MAX_DESTINATIONS = 8
MAX_REASON = 300  # characters of a failed destination's reason


def check_destination(name: Any) -> str:
    """Given a destination NAME, return it; raise ProtocolError unless it is
    a lowercase word of DESTINATION_PATTERN (safe in a shell command, a
    file name and a message)."""
    if not isinstance(name, str) or not DESTINATION_PATTERN.fullmatch(name):
        raise ProtocolError("a destination is a lowercase word of a-z, 0-9, '_', '-' "
                            "(at most 32 characters, starting with a letter)")
    return name


def check_destinations(names: Iterable[Any]) -> tuple[str, ...]:
    """Given destination NAMES, return them as a tuple in their order; raise
    ProtocolError unless there are 1..MAX_DESTINATIONS, each valid, none twice."""
    checked = tuple(check_destination(name) for name in names)
    if not 1 <= len(checked) <= MAX_DESTINATIONS:
        raise ProtocolError(f"from 1 to {MAX_DESTINATIONS} destinations")
    if len(set(checked)) != len(checked):
        raise ProtocolError("a destination is named twice")
    return checked


@dataclass(frozen=True)
class DestinationList:
    """What ``destinations`` reports: carrier.yaml's destinations, in order
    (the first is where list, check, get and info go by default)."""

    names: tuple[str, ...]

    def to_reply(self) -> dict[str, Any]:
        return {"destinations": list(self.names)}


def parse_destination_list(line: bytes) -> DestinationList:
    """Given the line ``destinations`` prints, return the DestinationList;
    raise ProtocolError unless it holds a valid list of names."""
    value = load_reply_line(line)
    if set(value) != {"destinations"} or not isinstance(value["destinations"], list):
        raise ProtocolError("destinations reply has unexpected fields")
    return DestinationList(check_destinations(value["destinations"]))


@dataclass(frozen=True)
class DestinationOutcome:
    """How one destination ended a put or a commit: its receipt when it
    succeeded (exit OK, reason ''), else the CarrierExit it failed with and
    why (one line of at most MAX_REASON characters, the carrier's own words)."""

    destination: str
    record: BackupRecord | None
    exit: CarrierExit
    reason: str = ""

    def to_reply(self) -> dict[str, Any]:
        if self.record is not None:
            return {"destination": self.destination, "receipt": self.record.to_reply()}
        return {"destination": self.destination,
                "failed": {"exit": int(self.exit), "reason": self.reason}}


def parse_outcome(line: bytes, name: str) -> DestinationOutcome:
    """Given one outcome line of a put or commit of NAME, return it; raise
    ProtocolError unless it is a receipt for NAME or a failure with a known
    non-zero exit status and a short printable reason."""
    value = load_reply_line(line)
    destination = check_destination(value.get("destination"))
    if set(value) == {"destination", "receipt"} and isinstance(value["receipt"], dict):
        # Re-encoded the way the shell sends a record, then parsed as strictly.
        receipt = json.dumps(value["receipt"]).encode("ascii")
        record = check_receipt(parse_record(receipt), name)
        return DestinationOutcome(destination, record, CarrierExit.OK)
    if set(value) != {"destination", "failed"} or not isinstance(value["failed"], dict) \
            or set(value["failed"]) != {"exit", "reason"}:
        raise ProtocolError("destination outcome has unexpected fields")
    try:
        status = CarrierExit(require_int(value["failed"]["exit"], "exit"))
    except ValueError:
        raise ProtocolError("destination outcome has an unknown exit status") from None
    reason = value["failed"]["reason"]
    # Threat: a hostile carrier smuggling terminal escapes or a flood into
    # dom0's messages and notifications through a reason.
    if status in (CarrierExit.OK, CarrierExit.PARTIAL) or not isinstance(reason, str) \
            or len(reason) > MAX_REASON or not reason.isprintable() or not reason.isascii():
        raise ProtocolError("destination outcome has an invalid failure")
    return DestinationOutcome(destination, None, status, reason)


def parse_outcomes(output: bytes, name: str) -> tuple[DestinationOutcome, ...]:
    """Given the whole stdout of a put or commit of NAME, return its outcomes
    in order; raise ProtocolError unless it is 1..MAX_DESTINATIONS outcome
    lines, each destination once."""
    if len(output) > MAX_DESTINATIONS * (MAX_REPLY_LINE + 1) or not output.endswith(b"\n"):
        raise ProtocolError("outcome lines are truncated or too long")
    outcomes = tuple(parse_outcome(line, name) for line in output[:-1].split(b"\n"))
    check_destinations(outcome.destination for outcome in outcomes)
    return outcomes


def overall_exit(outcomes: Iterable[DestinationOutcome]) -> CarrierExit:
    """Given the outcomes of one command, return how the command ends: OK when
    every destination succeeded, PARTIAL when some did, else the first
    failure's status (USAGE when there were none: nothing was asked)."""
    statuses = [outcome.exit for outcome in outcomes]
    if not statuses:
        return CarrierExit.USAGE
    failures = [status for status in statuses if status != CarrierExit.OK]
    if not failures:
        return CarrierExit.OK
    if len(failures) < len(statuses):
        return CarrierExit.PARTIAL
    return failures[0]


# --- how an upload went -------------------------------------------------------
MAX_OUTAGES_REPORTED = 100


@dataclass(frozen=True)
class TransferStats:
    """How an upload to one DESTINATION went, as the carrier tells dom0
    (``qubes.BackupCarrier+transfer`` with NAME on stdin prints one JSON line
    per destination): how often the connection was lost and resumed, how
    long each outage lasted (seconds, at most MAX_OUTAGES_REPORTED of them,
    the first ones), and how many data bytes were sent again after
    reconnecting."""

    name: str
    lost: int
    outages: tuple[float, ...]
    resent: int
    destination: str = DEFAULT_DESTINATION

    def to_reply(self) -> dict[str, Any]:
        return {
            "destination": self.destination,
            "transfer": {
                "name": self.name,
                "lost": self.lost,
                "outages": [round(seconds, 3) for seconds in self.outages],
                "resent": self.resent,
            }
        }


def parse_transfer_stats(line: bytes) -> TransferStats:
    """Given the line ``transfer`` prints, return the TransferStats; raise
    ProtocolError unless every field is present and well-formed."""
    value = load_reply_line(line)
    if set(value) != {"destination", "transfer"} or not isinstance(value["transfer"], dict):
        raise ProtocolError("transfer reply has unexpected fields")
    fields = value["transfer"]
    if set(fields) != {"name", "lost", "outages", "resent"}:
        raise ProtocolError("transfer reply has unexpected fields")
    outages = fields["outages"]
    if not isinstance(outages, list) or len(outages) > MAX_OUTAGES_REPORTED:
        raise ProtocolError("transfer outages are not a short list")
    for seconds in outages:
        if not isinstance(seconds, int | float) or isinstance(seconds, bool) \
                or not 0 <= seconds < 10**9:
            raise ProtocolError("transfer outage is not a number of seconds")
    return TransferStats(
        name=require_name(fields["name"]),
        lost=require_int(fields["lost"], "lost"),
        outages=tuple(float(seconds) for seconds in outages),
        resent=require_int(fields["resent"], "resent"),
        destination=check_destination(value["destination"]),
    )
