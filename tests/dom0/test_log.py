"""Text that leaves qbackup (dom0/log.py): controls and invalid UTF-8
replaced, length bounded, absurd times shown as '?'.

Threat: text from the carrier VM rewriting a terminal or forging journal lines."""

from __future__ import annotations

import pytest

from dom0.log import clean_text, show_time


@pytest.mark.parametrize(("text", "expected"), [
    (b"plain", "plain"),
    (b"\x1b[31mred\x1b[0m", "?[31mred?[0m"),
    (b"a\r\nforged line", "a??forged line"),
    (b"\xff\xfe", "??"),
    ("bidi\u202eevil", "bidi?evil"),
    (b"nul\x00", "nul?"),
])
def test_clean_text_removes_controls_and_invalid_utf8(text: bytes | str, expected: str) -> None:
    assert clean_text(text) == expected


def test_clean_text_bounds_length() -> None:
    assert len(clean_text(b"x" * 10_000_000, 100)) == 103


@pytest.mark.parametrize(("epoch", "shown"), [
    (None, "-"), (0, "1970-01-01 00:00:00Z"), (2**63 - 1, "?"), (-1e30, "?")])
def test_show_time_survives_absurd_mtimes(epoch: float | None, shown: str) -> None:
    assert show_time(epoch) == shown
