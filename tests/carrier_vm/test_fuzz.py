"""Every parser of what the server (or dom0's stdin) sends, fuzzed: whatever the
bytes, each ends in its documented error and nothing else (no RecursionError,
no UnicodeError, no IndexError escaping as an undocumented exit).

Threat: a hostile or broken server crafting replies and streams. Residual
risk: hypothesis samples the input space; the nested-JSON and framing cases
that broke before are pinned as explicit examples.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from carrier_vm.config import load_config
from carrier_vm.download import Deframer
from carrier_vm.errors import ConfigError, DataError, UsageError, parse_hostile
from carrier_vm.qrexec import service_request
from carrier_vm.replies import LineReader, relay_listing
from carrier_vm.upload import parse_receipt
from qbackup_protocol.client import (
    parse_check,
    parse_info,
    parse_list_line,
    parse_offset,
    parse_record,
    parse_upload_line,
)
from qbackup_protocol.wire import encode_data_header, encode_end_frame

PARSERS: list[Callable[[bytes], Any]] = [
    parse_record,
    parse_list_line,
    parse_check,
    parse_info,
    parse_offset,
    parse_upload_line,
]

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                ["name", "size", "sha256", "mtime", "ok", "end", "count", "ack", "offset"]
            )
            | st.text(max_size=8),
            children,
            max_size=6,
        )
    ),
    max_leaves=20,
)


class FakeReader:
    """Hands out the given chunks like an SSH reader, then EOF."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = list(chunks)

    async def read(self, _size: int = -1) -> bytes:
        return self.chunks.pop(0) if self.chunks else b""


NESTED = [b"[" * 4000 + b"\n", b'{"a":' * 2000 + b"\n", b"[" * 100_000]


@pytest.mark.parametrize("parse", PARSERS, ids=lambda parse: parse.__name__)
@given(line=st.binary(max_size=600))
@example(line=NESTED[0])
@example(line=NESTED[1])
@settings(max_examples=100, deadline=None)
def test_reply_parsers_end_in_data_error_or_a_result(
    parse: Callable[[bytes], Any], line: bytes
) -> None:
    try:
        parse_hostile(parse, line, "reply")
    except DataError:
        pass


@pytest.mark.parametrize("parse", PARSERS, ids=lambda parse: parse.__name__)
@given(value=json_values)
@settings(max_examples=100, deadline=None)
def test_reply_parsers_on_json_values(parse: Callable[[bytes], Any], value: object) -> None:
    line = json.dumps(value).encode() + b"\n"
    try:
        parse_hostile(parse, line, "reply")
    except DataError:
        pass


@pytest.mark.parametrize("line", NESTED)
def test_nested_json_is_a_data_error_for_every_parser(line: bytes) -> None:
    for parse in PARSERS:
        with pytest.raises(DataError):
            parse_hostile(parse, line, "reply")


@given(output=st.binary(max_size=600) | json_values.map(lambda v: json.dumps(v).encode() + b"\n"))
@example(output=NESTED[0])
@settings(max_examples=100, deadline=None)
def test_receipt_parser_ends_in_data_error(output: bytes) -> None:
    try:
        record = parse_receipt(output, "name")
    except DataError:
        return
    assert record.name == "name" and record.sha256 is not None


@given(
    chunks=st.lists(st.binary(max_size=300), max_size=8), prefix=st.sampled_from(["", "a", "a/"])
)
@example(chunks=[NESTED[0]], prefix="")
@example(chunks=[b"[" * 5000], prefix="")
@settings(max_examples=100, deadline=None)
def test_listing_relay_ends_in_data_error(chunks: list[bytes], prefix: str) -> None:
    seen: list[object] = []

    async def run() -> object:
        return await relay_listing(LineReader(FakeReader(chunks)), prefix, seen.append)  # type: ignore[arg-type]

    try:
        asyncio.run(run())
    except DataError:
        return
    assert all(getattr(record, "name", "").startswith(prefix) for record in seen)


DATA = os.urandom(2000)
GOOD_STREAM = (
    encode_data_header(len(DATA))
    + DATA
    + encode_end_frame(len(DATA), hashlib.sha256(DATA).digest())
)


@given(
    stream=st.binary(max_size=3000)
    | st.builds(
        lambda cut, junk: GOOD_STREAM[:cut] + junk,
        st.integers(0, len(GOOD_STREAM)),
        st.binary(max_size=50),
    ),
    splits=st.lists(st.integers(1, 700), max_size=6),
    limit=st.none() | st.integers(0, 5000),
)
@settings(max_examples=100, deadline=None)
def test_deframer_ends_in_data_error_or_the_exact_data(
    stream: bytes, splits: list[int], limit: int | None
) -> None:
    deframer = Deframer(limit=limit)
    out = bytearray()
    position = 0
    try:
        for size in [*splits, len(stream)]:
            for piece in deframer.feed(stream[position : position + size]):
                out += piece
            position += size
        deframer.close()
    except DataError:
        return
    # Accepted only when one valid end frame over exactly what was delivered
    # closes the stream, with nothing after it.
    assert deframer.finished and deframer.total == len(out)
    assert stream.endswith(encode_end_frame(len(out), hashlib.sha256(out).digest()))
    assert limit is None or len(out) <= limit


@given(stdin=st.binary(max_size=700), argument=st.sampled_from(["list", "check", "get", "commit"]))
@settings(max_examples=100, deadline=None)
def test_qrexec_stdin_ends_in_usage_error_or_a_valid_request(stdin: bytes, argument: str) -> None:
    read_fd, write_fd = os.pipe()
    try:
        os.write(write_fd, stdin)
        os.close(write_fd)
        write_fd = -1
        environ = {"QREXEC_SERVICE_ARGUMENT": argument, "QREXEC_REMOTE_DOMAIN": "dom0"}
        try:
            request = service_request(argument, environ, read_fd)
        except UsageError:
            return
        assert request.verb == argument
    finally:
        os.close(read_fd)
        if write_fd >= 0:
            os.close(write_fd)


@given(
    raw=st.binary(max_size=400)
    | json_values.map(lambda value: json.dumps({"host": "h", "port": value}).encode())
)
@example(raw=b"host: h\nport: " + b"[" * 5000 + b"]" * 5000)
@example(raw=b"[" * 5000)
@settings(max_examples=100, deadline=None)
def test_config_file_ends_in_config_error_or_a_config(tmp_path_factory: Any, raw: bytes) -> None:
    path = tmp_path_factory.mktemp("config") / "carrier.yaml"
    path.write_bytes(raw)
    try:
        config = load_config({"QBACKUP_CARRIER_CONFIG": str(path)})
    except ConfigError:
        return
    assert config.host
