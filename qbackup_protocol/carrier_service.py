"""The carrier's contract with dom0: what ``qbackup-carrier`` and the
``qubes.BackupCarrier`` qrexec service tell dom0 beyond the server's own
replies (which pass through as the wire module's lines).

Pure data and pure functions, standard library only: the carrier's exit
statuses and the transfer statistics of an upload. The carrier VM and dom0
import this module; the server never does (it is not installed there).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from qbackup_protocol.client import load_reply_line, require_name
from qbackup_protocol.wire import ExitStatus, ProtocolError, require_int


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


# --- how an upload went -------------------------------------------------------
MAX_OUTAGES_REPORTED = 100


@dataclass(frozen=True)
class TransferStats:
    """How an upload went, as the carrier tells dom0 (``qubes.BackupCarrier+transfer``
    with NAME on stdin prints it as one JSON line): how often the connection
    was lost and resumed, how long each outage lasted (seconds, at most
    MAX_OUTAGES_REPORTED of them, the first ones), and how many data bytes
    were sent again after reconnecting."""

    name: str
    lost: int
    outages: tuple[float, ...]
    resent: int

    def to_reply(self) -> dict[str, Any]:
        return {
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
    if set(value) != {"transfer"} or not isinstance(value["transfer"], dict):
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
    )
