"""A lying server (real sshd, hostile login shell): the carrier never claims
success, never emits unvalidated bytes and never waits forever.

Threat: the server (or whoever owns it) tampers with receipts, listings or
stored data. Residual risk: records of a listing are emitted before the
listing's summary is validated, so callers must trust output only on exit 0.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from qbackup_protocol.carrier_service import CarrierExit
from tests.carrier_vm.conftest import (
    INTERPRETERS,
    Carrier,
    add_account,
    assert_no_result,
    assert_one_safe_line,
    failed_exit,
    receipt_of,
)

HOSTILE_SOURCE = Path(__file__).with_name("hostile_shell.py")


@pytest.fixture
def hostile(carrier: Carrier) -> Carrier:
    """The carrier pointed at an account whose login shell lies (per ~/mode)."""
    script = carrier.server.base / "hostile_shell.py"
    if not script.exists():
        shutil.copy(HOSTILE_SOURCE, script)
        script.chmod(0o755)
    carrier.account = add_account(carrier.server, str(script))
    carrier.write_config()
    return carrier


def set_mode(carrier: Carrier, mode: str) -> None:
    path = carrier.account.home / "mode"
    path.write_text(mode)
    os.chown(path, carrier.account.uid, carrier.account.gid)


def test_honest_hostile_shell_is_accepted(hostile: Carrier) -> None:
    # Proves the fixture speaks the protocol: the refusals below are the lies.
    set_mode(hostile, "honest")
    result = hostile.run("put", "b", data=b"data")
    assert result.returncode == 0, result.stderr
    committed = hostile.run("put", "--commit", "c", data=b"data")
    assert committed.returncode == 0, committed.stderr


@pytest.mark.parametrize(
    "mode",
    [
        "commit-wrong-digest",
        "commit-wrong-size",
        "commit-wrong-name",
        "commit-no-digest",
        "commit-garbage",
        "commit-endless",
        "commit-two-lines",
        "commit-silent",
    ],
)
def test_put_commit_refuses_a_tampered_commit_receipt(hostile: Carrier, mode: str) -> None:
    # Threat: a server that staged the right bytes but claims to have
    # published something else. Residual risk: a server that lies with the
    # right name, size and digest is caught only by dom0's verify (restore).
    set_mode(hostile, mode)
    result = hostile.run("put", "--commit", "b", data=os.urandom(10_000), timeout=30)
    assert result.returncode == 65, result.stderr
    assert failed_exit(result.stdout) == 65
    assert_one_safe_line(result.stderr)


@pytest.mark.parametrize(
    ("mode", "code"),
    [
        ("commit-wrong-name", 65),
        ("commit-no-digest", 65),
        ("commit-garbage", 65),
        ("commit-endless", 65),
        ("commit-two-lines", 65),
        ("commit-silent", 65),
        ("commit-wrong-digest", 0),  # alone, the carrier has nothing to compare: dom0 does
    ],
)
def test_commit_alone_refuses_a_receipt_for_another_backup_or_garbage(
    hostile: Carrier, mode: str, code: int
) -> None:
    set_mode(hostile, mode)
    result = hostile.run("commit", "b", timeout=30)
    assert result.returncode == code, result.stderr
    if code:
        assert failed_exit(result.stdout) == code
        assert_one_safe_line(result.stderr)
    else:
        assert receipt_of(result.stdout)["name"] == "b"


@pytest.mark.parametrize(
    "mode",
    [
        "wrong-digest",
        "wrong-size",
        "wrong-name",
        "garbage",
        "control-characters",
        "invalid-utf8",
        "endless",
        "endless-stderr",
        "two-lines",
        "silent-success",
        "no-newline",
    ],
)
def test_put_refuses_a_tampered_receipt(hostile: Carrier, mode: str) -> None:
    set_mode(hostile, mode)
    result = hostile.run("put", "b", data=os.urandom(100_000), timeout=30)
    assert result.returncode == 65, result.stderr
    assert failed_exit(result.stdout) == 65
    assert_one_safe_line(result.stderr)


@pytest.mark.parametrize(
    "mode",
    [
        "endless",
        "long-line",
        "control-characters",
        "count-mismatch",
        "outside-prefix",
        "no-end",
        "trailing",
    ],
)
def test_list_refuses_a_tampered_listing(hostile: Carrier, mode: str) -> None:
    set_mode(hostile, mode)
    result = hostile.run("list", "p/", timeout=60)
    assert result.returncode == 65, result.stderr
    assert_one_safe_line(result.stderr)
    for line in result.stdout.splitlines():
        # Whatever got out was re-encoded from a validated record.
        assert all(0x20 <= byte < 0x7F for byte in line)
        assert json.loads(line)["name"].startswith("p/")
    assert b'"end"' not in result.stdout  # no summary: the listing is not complete


@pytest.mark.parametrize(
    "mode", ["get-bad-digest", "get-bad-size", "get-truncated", "get-trailing", "get-garbage"]
)
def test_get_refuses_a_tampered_stream(hostile: Carrier, mode: str) -> None:
    set_mode(hostile, mode)
    result = hostile.run("get", "b")
    assert result.returncode == 65, result.stderr
    assert_one_safe_line(result.stderr)
    assert b"\x1b" not in result.stdout  # garbage frames are never passed on


# Threat: a hostile server streams a `get` for ever (or more than the backup
# it listed), so a restore never ends and fills the restoring VM's disk.
# The carrier caps the stream at the size `list NAME` gave. Residual risk: the
# server may list a huge size; then the cap is that size (the digest still
# fails at the end), and the listing costs one more round trip per get.
@pytest.mark.parametrize("mode", ["get-endless", "get-oversized"])
def test_get_stops_at_the_listed_size(hostile: Carrier, mode: str) -> None:
    set_mode(hostile, mode)
    result = hostile.run("get", "b", timeout=60)
    assert result.returncode == 65, result.stderr
    assert_one_safe_line(result.stderr)
    assert b"listed" in result.stderr
    listed = len(b"backup bytes " * 1000) // (2 if mode == "get-oversized" else 1)
    assert len(result.stdout) <= listed


def test_get_of_a_name_the_listing_does_not_show_is_66(hostile: Carrier) -> None:
    set_mode(hostile, "get-unlisted")
    result = hostile.run("get", "b", timeout=60)
    assert result.returncode == 66, result.stderr
    assert result.stdout == b""


@pytest.mark.parametrize("verb", ["check", "info"])
def test_check_and_info_refuse_malformed_replies(hostile: Carrier, verb: str) -> None:
    set_mode(hostile, "any")
    result = hostile.run(*([verb, "b"] if verb == "check" else [verb]))
    assert result.returncode == 65, result.stderr
    assert result.stdout == b""
    assert_one_safe_line(result.stderr)


def test_check_mismatch_relays_the_record_and_exits_corrupted(hostile: Carrier) -> None:
    set_mode(hostile, "check-mismatch")
    result = hostile.run("check", "b")
    assert result.returncode == CarrierExit.CORRUPTED, result.stderr
    assert json.loads(result.stdout) == {
        "name": "b",
        "size": 1,
        "sha256": "a" * 64,
        "mtime": 1700000000,
        "ok": False,
    }
    assert_one_safe_line(result.stderr)


@pytest.mark.parametrize(
    ("mode", "code"),
    [
        # A verdict that contradicts the exit status cannot be believed either way.
        ("check-mismatch-exit-0", CarrierExit.DATA),
        ("check-ok-exit-65", CarrierExit.DATA),
        ("check-mismatch-other-name", CarrierExit.DATA),
        # Exit 65 with no record: the shell failed the check without a verdict.
        ("check-mismatch-no-line", CarrierExit.DATA),
    ],
)
def test_check_refuses_a_verdict_that_does_not_add_up(
    hostile: Carrier, mode: str, code: CarrierExit
) -> None:
    set_mode(hostile, mode)
    result = hostile.run("check", "b")
    assert result.returncode == code, result.stderr
    assert result.stdout == b""
    assert_one_safe_line(result.stderr)


@pytest.mark.parametrize("verb", ["put", "commit", "get", "list", "check", "info"])
def test_server_error_text_is_shown_only_as_printable_ascii(hostile: Carrier, verb: str) -> None:
    set_mode(hostile, "refuse-with-escapes")
    args = [verb] if verb in ("list", "info") else [verb, "b"]
    result = hostile.run(*args, data=b"x" * 1000)
    assert result.returncode == 69, result.stderr
    assert_one_safe_line(result.stderr)
    assert b"no ? space" in result.stderr  # the text is kept, defanged
    assert_no_result(verb, result)


@pytest.mark.parametrize(
    "args",
    [
        ("put", "b"),
        ("put", "--commit", "b"),
        ("commit", "b"),
        ("get", "b"),
        ("list",),
        ("check", "b"),
        ("info",),
    ],
    ids=["put", "put-commit", "commit", "get", "list", "check", "info"],
)
def test_deeply_nested_json_in_a_reply_is_a_data_error(
    hostile: Carrier, args: tuple[str, ...]
) -> None:
    # Threat: a short line of "[[[[..." (deeper than json's recursion limit)
    # used to escape as an uncaught RecursionError: a traceback and an
    # undocumented exit 1. It must end as any malformed reply does.
    set_mode(hostile, "nested")
    result = hostile.run(*args, data=b"x" * 1000, timeout=30)
    assert result.returncode == CarrierExit.DATA, result.stderr
    assert_no_result(args[0], result)
    assert_one_safe_line(result.stderr)
    assert b"malformed" in result.stderr


@pytest.mark.parametrize(
    ("mode", "message"),
    [
        ("stall", b"did not start the upload within 2s"),
        ("stall-after-offset", b"accepted no data for 2s"),
    ],
)
@pytest.mark.parametrize("interpreter", sorted(INTERPRETERS))
def test_put_to_a_server_that_stops_reading_fails_after_progress_timeout(
    hostile: Carrier, interpreter: str, mode: str, message: bytes
) -> None:
    # Threat: a hung disk or process on the server. sshd keeps answering
    # keepalives, so only a progress timeout ends the wait. (Under every
    # interpreter: Python 3.10 raises its own asyncio.TimeoutError.)
    # resume_window 0: this drill is about the bound, not about resuming.
    hostile.argv0 = INTERPRETERS[interpreter]
    set_mode(hostile, mode)
    hostile.write_config(
        progress_timeout=2, keepalive_interval=1, keepalive_count_max=2, resume_window=0
    )
    started = time.monotonic()
    result = hostile.run("put", "b", data=os.urandom(1024 * 1024) * 32, timeout=60)
    elapsed = time.monotonic() - started
    assert result.returncode == CarrierExit.TEMPORARY, result.stderr
    assert message in result.stderr
    assert_one_safe_line(result.stderr)
    assert elapsed < 30, elapsed


def test_get_from_a_server_that_stops_sending_fails_after_progress_timeout(
    hostile: Carrier,
) -> None:
    set_mode(hostile, "get-stall")
    hostile.write_config(
        progress_timeout=2, keepalive_interval=1, keepalive_count_max=2, resume_window=0
    )
    started = time.monotonic()
    result = hostile.run("get", "b", timeout=60)
    elapsed = time.monotonic() - started
    assert result.returncode == CarrierExit.TEMPORARY, result.stderr
    assert b"sent nothing for 2s" in result.stderr
    assert_one_safe_line(result.stderr)
    assert elapsed < 30, elapsed


@pytest.mark.parametrize("mode", ["get-short", "get-other"])
def test_get_refuses_a_stream_that_is_not_the_listed_backup(hostile: Carrier, mode: str) -> None:
    # A stream whose own end frame agrees with it but that is not the listed
    # backup (shorter, or other bytes): the listed size is no mere upper bound.
    set_mode(hostile, mode)
    result = hostile.run("get", "b", timeout=30)
    assert result.returncode == CarrierExit.DATA, result.stderr
    assert_one_safe_line(result.stderr)


@pytest.mark.parametrize("mode", ["commit-wrong-digest", "commit-wrong-size"])
def test_commit_after_a_put_in_this_vm_refuses_a_receipt_that_differs(
    hostile: Carrier, mode: str
) -> None:
    # dom0's path is a plain commit after the put; it must compare the commit
    # receipt with what the put verified, as put --commit does.
    set_mode(hostile, mode)
    assert hostile.run("put", "b", data=os.urandom(10_000)).returncode == 0
    result = hostile.run("commit", "b", timeout=30)
    assert result.returncode == CarrierExit.DATA, result.stderr
    assert failed_exit(result.stdout) == CarrierExit.DATA
    assert_one_safe_line(result.stderr)


def test_resumes_refused_as_busy_do_not_extend_the_window(hostile: Carrier) -> None:
    # A failed resume must not restart resume_window, or a server answering
    # "busy" for ever keeps the put alive for ever.
    set_mode(hostile, "cut-then-busy")
    hostile.write_config(resume_window=3)
    started = time.monotonic()
    result = hostile.run("put", "b", data=os.urandom(100_000), timeout=60)
    assert result.returncode == CarrierExit.TEMPORARY, result.stderr
    assert b"not resumed within resume_window" in result.stderr
    assert time.monotonic() - started < 3 + 10
