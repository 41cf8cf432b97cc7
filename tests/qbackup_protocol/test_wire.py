"""The shared wire protocol: name rules, framing and strict reply parsing.

Both the carrier and the shell import qbackup_protocol.wire, so a rule broken here
is broken on both sides at once: each rule has a table of accepted and refused
inputs, and hypothesis looks for a name that is accepted yet unsafe.
"""

from __future__ import annotations

import hashlib
import posixpath

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qbackup_protocol import wire


@pytest.mark.parametrize(
    "name",
    ["a", "daily-20261122T235959Z", "laptop/qubes-2026", "a/b/c/d/e/f/g/h", "x.y_z-1", "_", "0",
     "a-", "a/b--c", "_-x", "0-1/x-"],  # '-' anywhere but at the start of a segment
)
def test_check_name_accepts_plain_relative_names(name: str) -> None:
    assert wire.check_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",  # empty
        "/etc/passwd",  # absolute
        "../x",  # traversal
        "a/../b",
        "a/./b",
        ".hidden",  # dot-files belong to the shell (temporaries, digest records)
        "a/.b",
        "a//b",  # empty segment
        "a/",
        "a b",  # no spaces: the command line has no quoting
        "a;b",
        "$(id)",
        "`id`",
        "a\nb",
        "a\x00b",
        "a\\b",
        "naïve",  # ASCII only
        "a/b/c/d/e/f/g/h/i",  # deeper than 8
        "x" * 101,  # segment too long
        "/".join(["y" * 30] * 7),  # 216 characters: name too long
        "name\n",  # '$' in a regex would accept this; fullmatch must not
        # Threat: a name read as an option (`qbackup-carrier get --help`),
        # or put on a command line by a glob in its directory: every segment.
        "-",
        "-x",
        "--help",
        "-h",
        "a/-b",
        "a/b/--version",
        "laptop/-20261122T235959Z",
    ],
)
def test_check_name_refuses_unsafe_names(name: str) -> None:
    with pytest.raises(wire.InvalidName):
        wire.check_name(name)


@given(st.text(max_size=300))
def test_accepted_names_never_leave_the_storage_root(name: str) -> None:
    # The threat: a name that passes the check yet resolves outside the root
    # or onto a shell-owned dot-file. Residual risk: none at the name level;
    # symlinks inside the storage are the shell's job (O_NOFOLLOW).
    try:
        wire.check_name(name)
    except wire.InvalidName:
        return
    normal = posixpath.normpath(posixpath.join("/root-of-storage", name))
    assert normal.startswith("/root-of-storage/")
    assert normal == posixpath.join("/root-of-storage", name)
    assert not any(part.startswith((".", "-")) for part in name.split("/"))
    assert all(32 < ord(ch) < 127 for ch in name)


@pytest.mark.parametrize("prefix", ["", "lap", "laptop/", "laptop/qubes-2026-"])
def test_check_prefix_accepts_starts_of_names(prefix: str) -> None:
    assert wire.check_prefix(prefix) == prefix


@pytest.mark.parametrize("prefix", ["/", "//", "../", ".x", "a//", "a b", "a\n", "-", "--help",
                                    "a/-", "a/-x/"])
def test_check_prefix_refuses_unsafe_prefixes(prefix: str) -> None:
    with pytest.raises(wire.InvalidName):
        wire.check_prefix(prefix)


def test_frames_round_trip() -> None:
    digest = hashlib.sha256(b"abc").digest()
    header = wire.encode_data_header(3)
    assert wire.decode_frame_header(header) == wire.FrameHeader(wire.FRAME_DATA, 3)
    end = wire.encode_end_frame(3, digest)
    assert wire.decode_frame_header(end[: wire.FRAME_HEADER_SIZE]) == wire.FrameHeader(
        wire.FRAME_END, wire.END_PAYLOAD.size)
    assert wire.decode_end_payload(end[wire.FRAME_HEADER_SIZE :]) == wire.StreamEnd(3, digest)


@pytest.mark.parametrize(
    "header",
    [
        b"D\x00\x00\x00\x00",  # empty data frame: would let a sender stall forever for free
        wire.FRAME_HEADER.pack(b"D", wire.MAX_DATA_FRAME + 1),  # bounded memory on the reader
        b"E\x00\x00\x00\x00",  # end frame of the wrong size
        b"X\x00\x00\x00\x01",  # unknown type
        b"D\x00\x00",  # short
    ],
)
def test_decode_frame_header_refuses_malformed_headers(header: bytes) -> None:
    with pytest.raises(wire.ProtocolError):
        wire.decode_frame_header(header)


def test_protocol_version_3_has_the_resume_verb() -> None:
    # Version 2 is the two-phase upload (commit), version 3 the resumable one
    # (acks, resume, get OFFSET): a carrier speaking 3 to an older shell would
    # read its put's receipt where it expects {"offset": 0}.
    assert wire.PROTOCOL_VERSION == 3
    assert {wire.VERB_COMMIT, wire.VERB_RESUME} <= wire.VERBS_WITH_NAME
    assert wire.ALL_VERBS == {"put", "resume", "commit", "get", "list", "check", "info"}
