"""The receipt a put insists on (carrier_vm/upload.py): accepted only when it
names the same name, size and SHA-256 the carrier computed, alone on its line."""

from __future__ import annotations

import pytest

from carrier_vm.errors import DataError
from carrier_vm.upload import check_receipt
from qbackup_protocol.wire import encode_reply

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
