"""Publishing a finished backup: `commit` after Execute, strictly checked.

The carrier's answers are scripted at the Qubes boundary (what qrexec hands
back from the carrier VM), so each hostile or old-carrier case is exact.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from dom0.backup import Preflight, publish
from dom0.carrier import CarrierClient, Record
from dom0.errors import CarrierFailed

NAME = "laptop-20261122T235959Z"
DIGEST = "c" * 64


def receipt(name: str = NAME, sha256: str | None = DIGEST) -> bytes:
    return json.dumps({"name": name, "size": 7, "sha256": sha256, "mtime": 1}).encode() + b"\n"


LISTING = receipt() + b'{"end": true, "count": 1, "truncated": false}\n'
# A carrier of one server: it answers as the destination "default".
READY = Preflight(["default"], 10**9, set(), {}, [])


class ScriptedCarrier:
    """Answers qubes.BackupCarrier+VERB from a table: bytes, or an exit status."""

    profile_dir = Path("/nonexistent")

    def __init__(self, answers: dict[str, bytes | int]) -> None:
        self.answers = answers
        self.asked: list[tuple[str, bytes]] = []

    def run_service_for_stdio(self, vm: str, service: str, input_data: bytes = b"",
                              max_output: int = 65536, timeout: float | None = None) -> bytes:
        verb = service.removeprefix("qubes.BackupCarrier+")
        self.asked.append((verb, input_data))
        answer = self.answers[verb]
        if isinstance(answer, int):
            raise subprocess.CalledProcessError(answer, service, b"", b"refused")
        return answer


def test_commit_receipt_is_the_record() -> None:
    carrier = ScriptedCarrier({"commit": receipt()})
    published = publish(CarrierClient(carrier, "c"), NAME, READY)  # type: ignore[arg-type]
    assert published.records == {"default": Record(NAME, 7, DIGEST, 1)}
    assert carrier.asked == [("commit", NAME.encode() + b"\n")]


@pytest.mark.parametrize("answer", [
    receipt(name="other-20261122T235959Z"),  # receipt for another backup
    receipt(sha256=None),  # no digest
    receipt() + receipt(),  # two lines
    66,  # nothing staged
    69,
])
def test_bad_commit_answers_fail(answer: bytes | int) -> None:
    carrier = ScriptedCarrier({"commit": answer, "list": LISTING})
    with pytest.raises(CarrierFailed):
        publish(CarrierClient(carrier, "c"), NAME, READY)  # type: ignore[arg-type]
    assert [verb for verb, _ in carrier.asked] == ["commit"]  # no fallback


def test_carrier_refusing_commit_fails_even_if_the_server_lists_the_name() -> None:
    # An old or hostile carrier that "does not know" commit must not get a
    # backup recorded as good through some other path.
    carrier = ScriptedCarrier({"commit": 64, "list": LISTING})
    with pytest.raises(CarrierFailed):
        publish(CarrierClient(carrier, "c"), NAME, READY)  # type: ignore[arg-type]
