"""Text from across a boundary, made safe to show: the ONE sanitiser.

dom0 shows what the carrier says and the carrier what the server says, on
terminals, in the journal and in notifications. A hostile peer must not move
the cursor or recolour the screen (escape sequences), forge a line (line
breaks of any kind), reorder what a reader sees (bidi controls) or flood the
screen. The policy is one: printable ASCII passes, every other character
(line breaks, tabs, escapes, invalid UTF-8, anything beyond ASCII) becomes
'?', and at most LIMIT characters are shown, a cut marked with '...'.
qbackup's own names and messages are ASCII, so nothing honest is lost.

The carrier VM and dom0 import this module; the server never does.
"""

from __future__ import annotations

DEFAULT_LIMIT = 300


def clean_text(data: bytes | str, limit: int = DEFAULT_LIMIT) -> str:
    """Given untrusted bytes (UTF-8 or not) or text, return at most LIMIT
    characters of it on one line, as the module says."""
    # Look only at what can be shown: never feed megabytes to the decoder.
    head = data[: limit * 4]
    text = head.decode("utf-8", "replace") if isinstance(head, bytes) else head
    cleaned = "".join(char if " " <= char <= "~" else "?" for char in text[:limit])
    return cleaned + ("..." if len(text) > limit else "")
