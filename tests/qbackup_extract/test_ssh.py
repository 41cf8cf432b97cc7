"""ssh:// sources: a backup stored on the test sshd through the real carrier,
then listed, verified and extracted back with the system's OpenSSH client
and the account's own `get`; a `get` stream cut or garbled is refused like a
truncated file."""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from qbackup_extract.errors import ExtractError, ExtractExit
from qbackup_extract.get_stream import GetStream
from qbackup_extract.source import parse_ssh_url
from qbackup_protocol.wire import encode_data_header, encode_end_frame
from tests.carrier_vm.conftest import Carrier
from tests.qbackup_extract.conftest import Built, Runner
from tests.qbackup_extract.test_extract import VM_FILES, assert_vm_extracted

NAME = "laptop/2026-12-06T10-15"


def ssh_options(carrier: Carrier) -> tuple[str, ...]:
    assert carrier.server is not None
    endpoint = carrier.server.endpoint
    return ("--identity", str(endpoint.identity), "--known-hosts", str(endpoint.known_hosts),
            "--ssh-option", "KexAlgorithms=curve25519-sha256")


def ssh_url(carrier: Carrier, name: str) -> str:
    assert carrier.server is not None and carrier.account is not None
    return f"ssh://{carrier.account.name}@127.0.0.1:{carrier.server.port}/{name}"


def test_backup_stored_through_the_carrier_extracts_back_over_ssh(
    carrier: Carrier, build: Callable[..., Built], extract_tool: Runner, tmp_path: Path
) -> None:
    built = build(compression="bzip2")
    put = carrier.run("put", "--commit", NAME, data=built.path.read_bytes())
    assert put.returncode == 0, put.stderr
    source = ssh_url(carrier, NAME)
    options = ssh_options(carrier)

    listing = extract_tool("list", source, extra=options)
    assert listing.returncode == ExtractExit.OK, listing.stderr
    assert [line.split()[0] for line in listing.stdout.splitlines()[1:]] == [
        "debian-12", "work", "personal", "dom0"]
    verify = extract_tool("verify", source, extra=options)
    assert verify.returncode == ExtractExit.OK, verify.stderr
    extracted = extract_tool("extract", source, str(tmp_path / "dest"), extra=options)
    assert extracted.returncode == ExtractExit.OK, extracted.stderr
    for vm in VM_FILES:
        assert_vm_extracted(tmp_path / "dest", built, vm)


def test_missing_backup_over_ssh_is_no_input(carrier: Carrier, extract_tool: Runner) -> None:
    result = extract_tool("list", ssh_url(carrier, "no/such-backup"), extra=ssh_options(carrier))
    assert result.returncode == ExtractExit.NO_INPUT, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def framed(data: bytes) -> bytes:
    return (encode_data_header(len(data)) + data
            + encode_end_frame(len(data), hashlib.sha256(data).digest()))


def read_all(stream: bytes) -> bytes:
    reader = GetStream(io.BytesIO(stream), "ssh://host/b")
    out = b""
    while chunk := reader.read(7):
        out += chunk
    return out


def test_get_stream_gives_back_the_data() -> None:
    data = os.urandom(1000)
    assert read_all(framed(data)) == data


@pytest.mark.parametrize(("stream", "words"), [
    (lambda good: good[:-40], "truncated"),  # threat: the end frame cut off
    (lambda good: good[:500], "truncated"),  # threat: cut inside a data frame
    (lambda good: b"X" + good[1:], "garbled"),
    (lambda good: good[:5] + bytes([good[5] ^ 1]) + good[6:], "does not match its end frame"),
    (lambda good: good + b"more", "data after the end frame"),
], ids=["no-end-frame", "cut-in-data", "bad-frame-type", "flipped-byte", "trailing-data"])
def test_cut_or_garbled_get_stream_is_refused(stream: Callable[[bytes], bytes], words: str) -> None:
    with pytest.raises(ExtractError, match=words):
        read_all(stream(framed(os.urandom(1000))))


@pytest.mark.parametrize("url", [
    "ssh://-oProxyCommand=touch+x/backup",  # threat: a host read as an ssh option
    "ssh://-l@host/backup",
    "ssh://host/../etc/passwd",
    "ssh://host/-backup",
    "ssh://host:99999/backup",
    "ssh://host",
])
def test_malformed_ssh_source_is_a_usage_error(url: str) -> None:
    with pytest.raises(ExtractError) as caught:
        parse_ssh_url(url)
    assert caught.value.status == ExtractExit.USAGE
