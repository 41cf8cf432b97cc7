"""Pure pieces of the data path: de-framing, receipts, sanitizing, exit-status map."""

from __future__ import annotations

import hashlib
import os

import pytest

from carrier_vm.download import Deframer
from carrier_vm.errors import (
    SHELL_STATUS_ERRORS,
    AlreadyExists,
    DataError,
    NoSuchBackup,
    ServerRefused,
    TemporaryFailure,
    error_for_shell_status,
)
from carrier_vm.ssh import printable
from carrier_vm.upload import check_receipt
from qbackup_protocol.carrier_service import CarrierExit
from qbackup_protocol.wire import ShellExit, encode_data_header, encode_end_frame, encode_reply

DATA = os.urandom(3000)
DIGEST = hashlib.sha256(DATA).digest()
STREAM = (
    encode_data_header(1000)
    + DATA[:1000]
    + encode_data_header(2000)
    + DATA[1000:]
    + encode_end_frame(len(DATA), DIGEST)
)


@pytest.mark.parametrize("step", [1, 5, 7, 1000, len(STREAM)])
def test_deframer_returns_the_data_whatever_the_read_sizes(step: int) -> None:
    deframer = Deframer()
    out = b"".join(
        b"".join(deframer.feed(STREAM[start : start + step]))
        for start in range(0, len(STREAM), step)
    )
    deframer.close()
    assert out == DATA


@pytest.mark.parametrize(
    "stream",
    [
        STREAM + b"x",  # data after the end frame
        STREAM[:-40] + encode_end_frame(len(DATA), b"\0" * 32)[5:],  # wrong digest
        STREAM[:-45] + encode_end_frame(len(DATA) + 1, DIGEST),  # wrong size
        b"X" + STREAM[1:],  # unknown frame type
        encode_data_header(1000)[:1] + b"\0\0\0\0" + STREAM[5:],  # empty data frame
        encode_end_frame(0, DIGEST),  # end frame only, wrong digest for no data
    ],
    ids=["trailing", "digest", "size", "type", "zero-length", "empty-digest"],
)
def test_deframer_refuses_tampered_streams(stream: bytes) -> None:
    deframer = Deframer()
    with pytest.raises(DataError):
        deframer.feed(stream)
        deframer.close()


@pytest.mark.parametrize("cut", [0, 3, 5, 1005, len(STREAM) - 1])
def test_deframer_refuses_truncated_streams(cut: int) -> None:
    deframer = Deframer()
    deframer.feed(STREAM[:cut])
    with pytest.raises(DataError, match="truncated"):
        deframer.close()


GOOD = {"name": "n", "size": 3, "sha256": "a" * 64, "mtime": 1}


def test_receipt_matching_everything_is_accepted() -> None:
    assert check_receipt(encode_reply(GOOD), "n", 3, "a" * 64).name == "n"


@pytest.mark.parametrize(
    "output",
    [
        encode_reply({**GOOD, "name": "m"}),
        encode_reply({**GOOD, "size": 4}),
        encode_reply({**GOOD, "sha256": "b" * 64}),
        encode_reply({**GOOD, "sha256": None}),
        encode_reply(GOOD) * 2,
        encode_reply(GOOD)[:-1],
        b"",
        b"\x1b[2J\n",
    ],
)
def test_receipt_that_differs_in_anything_is_refused(output: bytes) -> None:
    with pytest.raises(DataError):
        check_receipt(output, "n", 3, "a" * 64)


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        (b"plain text", "plain text"),
        (b"\x1b[31mred\x1b[0m", "?[31mred?[0m"),
        (b"two\nlines\r\n", "two lines"),
        (b"\xff\xfe", "??"),
        ("\u202etxt.exe", "?txt.exe"),
    ],
)
def test_printable_leaves_nothing_a_terminal_would_obey(raw: bytes | str, shown: str) -> None:
    assert printable(raw) == shown


@pytest.mark.parametrize(
    ("status", "kind", "exit_code"),
    [
        (None, TemporaryFailure, CarrierExit.TEMPORARY),
        (ShellExit.USAGE, ServerRefused, CarrierExit.REFUSED),
        (ShellExit.DATA, DataError, CarrierExit.DATA),
        (ShellExit.NO_SUCH_BACKUP, NoSuchBackup, CarrierExit.NO_SUCH_BACKUP),
        (ShellExit.UNAVAILABLE, ServerRefused, CarrierExit.REFUSED),
        (ShellExit.EXISTS, AlreadyExists, CarrierExit.EXISTS),
        (ShellExit.IO, ServerRefused, CarrierExit.REFUSED),
        # The server's "not allowed" and "misconfigured" are refusals, never
        # the carrier's own HOST_KEY/CONFIG codes (same numbers, other meaning).
        (ShellExit.NO_PERMISSION, ServerRefused, CarrierExit.REFUSED),
        (ShellExit.CONFIG, ServerRefused, CarrierExit.REFUSED),
        (ShellExit.SOFTWARE, ServerRefused, CarrierExit.REFUSED),
        (1, ServerRefused, CarrierExit.REFUSED),
    ],
)
def test_shell_exit_statuses_map_to_carrier_errors(
    status: int | None, kind: type, exit_code: CarrierExit
) -> None:
    error = error_for_shell_status(status)
    assert type(error) is kind and error.exit_code is exit_code


def test_every_shell_status_has_a_mapping() -> None:
    # A new ShellExit member must be given its meaning here, not fall through.
    assert set(SHELL_STATUS_ERRORS) == set(ShellExit) - {ShellExit.OK}
