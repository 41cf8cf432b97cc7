"""The server's text as the carrier passes it on (carrier_vm/ssh.py): one line
of detail, printable ASCII only, nothing a terminal would obey."""

from __future__ import annotations

import pytest

from carrier_vm.ssh import one_line


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
def test_one_line_leaves_nothing_a_terminal_would_obey(raw: bytes | str, shown: str) -> None:
    assert one_line(raw) == shown
