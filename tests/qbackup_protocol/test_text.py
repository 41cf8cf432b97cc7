"""The one sanitiser (qbackup_protocol/text.py): what the carrier says in dom0,
and what the server says in the carrier, reaches a terminal, the journal or a
notification as printable ASCII only, bounded.

Threat: a hostile peer rewriting a terminal (escapes), forging journal lines
(line breaks), reordering what a reader sees (bidi controls) or flooding."""

from __future__ import annotations

import pytest

from qbackup_protocol.text import clean_text


@pytest.mark.parametrize(("text", "expected"), [
    (b"plain", "plain"),
    (b"\x1b[31mred\x1b[0m", "?[31mred?[0m"),
    (b"a\r\nforged line", "a??forged line"),
    (b"\xff\xfe", "??"),
    ("bidi\u202eevil", "bidi?evil"),
    (b"nul\x00", "nul?"),
    ("caf\u00e9", "caf?"),  # beyond ASCII: one '?' per character, not per byte
    ("caf\u00e9".encode(), "caf?"),
])
def test_clean_text_keeps_only_printable_ascii(text: bytes | str, expected: str) -> None:
    assert clean_text(text) == expected


def test_clean_text_bounds_length() -> None:
    assert len(clean_text(b"x" * 10_000_000, 100)) == 103
