"""The carrier's replies as dom0 parses them (dom0/carrier.py): a listing, an
info and a check reply are accepted only whole and well-formed.

Threat: a hostile carrier VM (networked, less trusted than dom0)."""

from __future__ import annotations

import json

import pytest

from dom0 import carrier as replies
from dom0.carrier import Record

DIGEST = "a" * 64


def record(name: str = "a-20261122T235959Z", size: int = 5, sha: object = DIGEST,
           mtime: object = 1) -> bytes:
    return json.dumps({"name": name, "size": size, "sha256": sha, "mtime": mtime}).encode()


END = b'{"end": true, "count": %d, "truncated": false}'


def test_listing_parses_records_and_summary() -> None:
    listing = replies.parse_listing(record() + b"\n" + END % 1 + b"\n")
    assert listing.records == [Record("a-20261122T235959Z", 5, DIGEST, 1)]


@pytest.mark.parametrize("data", [
    b"",
    END % 0,  # no final newline: truncated
    record() + b"\n",  # no summary
    record() + b"\n" + END % 2 + b"\n",  # count mismatch
    record() + b"\n" + record() + b"\n" + END % 2 + b"\n",  # duplicate name
    record(name="../etc") + b"\n" + END % 1 + b"\n",
    record(name="a\u001b]0;x") + b"\n" + END % 1 + b"\n",
    record(size=-1) + b"\n" + END % 1 + b"\n",
    record(size=True) + b"\n" + END % 1 + b"\n",
    record(size=2**63) + b"\n" + END % 1 + b"\n",
    record(sha="A" * 64) + b"\n" + END % 1 + b"\n",
    record(mtime="1") + b"\n" + END % 1 + b"\n",
    b'{"name": "a", "size": 1, "sha256": null, "mtime": null, "x": 1}\n' + END % 1 + b"\n",
    b"\xff\xfe\n" + END % 0 + b"\n",
    b"[1]\n" + END % 0 + b"\n",
    b'{"a": "' + b"x" * 5000 + b'"}\n' + END % 0 + b"\n",
    b'{"end": 1, "count": 0, "truncated": false}\n',
])
def test_listing_refuses_malformed(data: bytes) -> None:
    with pytest.raises(replies.ReplyError):
        replies.parse_listing(data)


@pytest.mark.parametrize("data", [
    b'{"protocol":1,"free":1,"reserve":0,"available":1,"quota":null,"used":null}',  # no \n
    b'{"protocol":1,"free":1,"reserve":0,"available":1,"quota":null}\n',
    b'{"protocol":1,"free":-1,"reserve":0,"available":1,"quota":null,"used":null}\n',
    b'{"protocol":1,"free":1,"reserve":0,"available":1,"quota":null,"used":null}\n\n',
])
def test_info_refuses_malformed(data: bytes) -> None:
    with pytest.raises(replies.ReplyError):
        replies.parse_info(data)


def test_check_reply_parses() -> None:
    value = json.loads(record())
    value["ok"] = False
    result = replies.parse_check(json.dumps(value).encode() + b"\n")
    assert result.record.name == "a-20261122T235959Z" and result.ok is False
