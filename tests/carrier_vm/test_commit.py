"""Two-phase uploads through the carrier: `put NAME` (what Qubes runs) only
stages; `commit NAME` (what dom0 sends once Qubes' backup succeeded) publishes.

Threat: Qubes aborted, the carrier saw a clean EOF. When Qubes' backup
engine is cancelled or fails mid-backup, the carrier's stdin most likely just
closes; the carrier then ends the stream properly and the server verifies
it -- a truncated backup with a perfectly valid digest. Two phases defeat it:
such an upload stays staged (invisible, unreadable) because dom0 never
commits it. Residual risk: it occupies space (and quota) until a put into the
same directory or the admin's prune removes it after `pending_max_age`.
"""

from __future__ import annotations

import os
import time

from qbackup_protocol.carrier_service import CarrierExit
from tests.carrier_vm.conftest import (
    Carrier,
    assert_one_safe_line,
    call_service,
    failed_exit,
    receipt_of,
    stored_files,
)

DAY = 86400
EMPTY_LISTING = b'{"count":0,"end":true,"truncated":false}\n'


def test_put_only_stages_an_upload_that_ended_in_a_clean_eof(carrier: Carrier) -> None:
    # The first half of a backup, then EOF: what the carrier sees when Qubes aborts.
    truncated = os.urandom(3 * 1024 * 1024)[: 1024 * 1024 + 5]
    put = carrier.run("put", "host/2026-01-03", data=truncated)
    assert put.returncode == 0, put.stderr  # the carrier cannot know
    assert receipt_of(put.stdout)["size"] == len(truncated)
    listing = carrier.run("list")
    assert (listing.returncode, listing.stdout) == (0, EMPTY_LISTING)
    for verb in ("get", "check"):
        result = carrier.run(verb, "host/2026-01-03")
        assert (result.returncode, result.stdout) == (66, b""), verb
    assert "host/2026-01-03" not in stored_files(carrier.account)


def test_commit_publishes_what_put_staged_byte_exact(carrier: Carrier) -> None:
    data = os.urandom(2 * 1024 * 1024 + 99)
    put = carrier.run("put", "host/b", data=data)
    assert put.returncode == 0, put.stderr
    commit = carrier.run("commit", "host/b")
    assert commit.returncode == 0, commit.stderr
    assert commit.stderr == b""
    assert receipt_of(commit.stdout) == receipt_of(put.stdout)
    got = carrier.run("get", "host/b")
    assert got.returncode == 0 and got.stdout == data, got.stderr
    assert stored_files(carrier.account) == ["host/.b.sha256", "host/b"]


def test_commit_without_a_put_exits_66(carrier: Carrier) -> None:
    result = carrier.run("commit", "never/put")
    assert (result.returncode, failed_exit(result.stdout)) == (66, 66)
    assert b"nothing staged" in result.stderr
    assert_one_safe_line(result.stderr)


def test_commit_twice_the_second_exits_66(carrier: Carrier) -> None:
    assert carrier.run("put", "--commit", "once", data=b"x").returncode == 0
    before = stored_files(carrier.account)
    again = carrier.run("commit", "once")
    assert (again.returncode, failed_exit(again.stdout)) == (66, 66)
    assert stored_files(carrier.account) == before


def test_put_of_a_staged_name_is_refused_and_keeps_the_staged_upload(carrier: Carrier) -> None:
    assert carrier.run("put", "twin", data=b"first").returncode == 0
    again = carrier.run("put", "--commit", "twin", data=b"second")
    assert (again.returncode, failed_exit(again.stdout)) == (CarrierExit.EXISTS,) * 2
    assert b"staged" in again.stderr
    assert carrier.run("commit", "twin").returncode == 0
    assert carrier.run("get", "twin").stdout == b"first"


def test_a_stale_staged_upload_is_gone_after_the_next_put(carrier: Carrier) -> None:
    assert carrier.run("put", "d/aborted", data=b"half a backup").returncode == 0
    stamp = time.time() - DAY - 60
    os.utime(carrier.account.storage / "d/.aborted.pending", (stamp, stamp))
    assert carrier.run("put", "--commit", "d/next", data=b"n").returncode == 0
    assert carrier.run("commit", "d/aborted").returncode == 66
    assert stored_files(carrier.account) == ["d/.next.sha256", "d/next"]


def test_qrexec_service_commit_publishes_once(carrier: Carrier) -> None:
    data = os.urandom(200_000)
    put = carrier.run("put", "host/2026-01-04", data=data)
    assert put.returncode == 0, put.stderr
    commit = call_service(carrier, "commit", b"host/2026-01-04\n")
    assert commit.returncode == 0, commit.stderr
    assert receipt_of(commit.stdout) == receipt_of(put.stdout)
    assert call_service(carrier, "get", b"host/2026-01-04\n").stdout == data
    again = call_service(carrier, "commit", b"host/2026-01-04\n")
    assert (again.returncode, failed_exit(again.stdout)) == (66, 66)
    assert_one_safe_line(again.stderr)
