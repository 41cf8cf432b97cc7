"""The download's de-framer (carrier_vm/download.py): the data out whatever the
read sizes, and a tampered or truncated stream refused."""

from __future__ import annotations

import hashlib
import os

import pytest

from carrier_vm.download import Deframer
from carrier_vm.errors import DataError
from qbackup_protocol.wire import encode_data_header, encode_end_frame

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
