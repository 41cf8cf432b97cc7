"""Asking the carrier VM about the server through its qubes.BackupCarrier service.

The argument travels in the service name (`qubes.BackupCarrier+list`) and the
name or prefix as ONE line on stdin: qrexec arguments cannot hold '/'
(QUBES-INTERFACES.md section 5). Everything that comes back is hostile:
bounded by the adapter, parsed by `replies`, and error text cleaned.
"""

from __future__ import annotations

import logging
import subprocess

from dom0.errors import (
    CARRIER_STATUS_ERRORS,
    CARRIER_STATUS_TEXT,
    CarrierError,
    QubesError,
)
from dom0.names import check_name
from dom0.qubes import QubesAdapter
from dom0.replies import (
    MAX_LISTING_BYTES,
    MAX_SHORT_REPLY,
    Listing,
    Record,
    ServerInfo,
    parse_check,
    parse_info,
    parse_listing,
    parse_receipt,
)
from dom0.untrusted import last_line

logger = logging.getLogger(__name__)
SERVICE = "qubes.BackupCarrier"


class CarrierClient:
    """The server as seen through one carrier VM."""

    def __init__(self, app: QubesAdapter, vm: str) -> None:
        self.app = app
        self.vm = vm

    def _call(self, verb: str, argument: str, max_output: int) -> bytes:
        """Given a verb and its one-line argument, return the service's stdout;
        raise the error class the carrier's exit status maps to."""
        try:
            return self.app.run_service_for_stdio(
                self.vm, f"{SERVICE}+{verb}", (argument + "\n").encode(), max_output=max_output
            )
        except subprocess.CalledProcessError as error:
            status = error.returncode
            reason = CARRIER_STATUS_TEXT.get(status, f"the carrier failed (status {status})")
            detail = last_line(error.stderr or b"")
            cls = CARRIER_STATUS_ERRORS.get(status, CarrierError)
            message = f"{verb} via {self.vm}: {reason}" + (f": {detail}" if detail else "")
            raise cls(message) from None
        except OSError as error:
            raise QubesError(f"cannot call {SERVICE} in {self.vm}: {error}") from None

    def info(self) -> ServerInfo:
        """Return the server's space report; raise TemporaryError if unreachable."""
        return parse_info(self._call("info", "", MAX_SHORT_REPLY))

    def listing(self, prefix: str = "") -> Listing:
        """Given a name PREFIX ('' for all), return the server's listing."""
        return parse_listing(self._call("list", prefix, MAX_LISTING_BYTES))

    def check(self, name: str) -> tuple[Record, bool]:
        """Given a backup NAME, return (its record, whether the server's re-hash matched)."""
        record, ok = parse_check(self._call("check", check_name(name), MAX_SHORT_REPLY))
        if record.name != name:
            raise CarrierError("the carrier's check reply names another backup")
        return record, ok

    def commit(self, name: str) -> Record:
        """Given the NAME of a staged upload, have the server publish it and
        return its receipt; raise CarrierError if nothing was staged."""
        record = parse_receipt(self._call("commit", check_name(name), MAX_SHORT_REPLY))
        if record.name != name:
            raise CarrierError("the carrier's commit receipt names another backup")
        return record

